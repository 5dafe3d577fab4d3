"""Who may do what: the roles, the role each gRPC method requires, and the NATS subjects each role
may publish and subscribe to. The one table of the trust model (docs/protocol.md section 14)."""

from __future__ import annotations

from collections.abc import Mapping

SERVER = "server"  # hosts a service and may register it in the registry
ORCHESTRATOR = "orchestrator"  # runs episodes, generates, scores, publishes rollouts
TRAINER = "trainer"  # changes the served weights and the policy version
PUBLISHER = "publisher"  # publishes production traces
READER = "reader"  # reads scores, the dashboard and metrics
OPERATOR = "operator"  # may do everything (administration, conformance of a whole mesh)
ROLES = (SERVER, ORCHESTRATOR, TRAINER, PUBLISHER, READER, OPERATOR)

OPEN: frozenset[str] = frozenset()  # no identity needed (health checks)

_ENV = "/rollmesh.v1.EnvironmentService/"
_INF = "/rollmesh.v1.InferenceService/"
_RUB = "/rollmesh.v1.RubricService/"

# gRPC method -> the roles that may call it (any one of them will do; OPERATOR always may).
# A method missing here is refused to everyone but OPERATOR: new RPCs are closed until listed.
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": frozenset({ORCHESTRATOR, READER, TRAINER}),
    _ENV + "Describe": frozenset({ORCHESTRATOR, READER}),
    _ENV + "ListTasks": frozenset({ORCHESTRATOR, READER}),
    _ENV + "Episode": frozenset({ORCHESTRATOR}),
    _ENV + "Score": frozenset({ORCHESTRATOR}),
    _ENV + "RunEpisode": frozenset({ORCHESTRATOR}),
    _INF + "Generate": frozenset({ORCHESTRATOR}),
    _INF + "GenerateStream": frozenset({ORCHESTRATOR}),
    _INF + "Tokenize": frozenset({ORCHESTRATOR}),
    _INF + "GetModelInfo": frozenset({ORCHESTRATOR, TRAINER, READER}),
    _INF + "UpdateWeights": frozenset({TRAINER}),
    _INF + "LoadWeights": frozenset({TRAINER}),
    _INF + "Pause": frozenset({TRAINER}),
    _INF + "Resume": frozenset({TRAINER}),
    _RUB + "ScoreTrajectory": frozenset({ORCHESTRATOR}),
    _RUB + "ScoreGroup": frozenset({ORCHESTRATOR}),
    _RUB + "ListRubrics": frozenset({ORCHESTRATOR, READER}),
}

# HTTP endpoints (the OpenAI facade, the dashboard, /metrics) -> roles, by path prefix.
HTTP_ROLES: Mapping[str, frozenset[str]] = {
    "/health": OPEN,
    "/healthz": OPEN,
    "/v1/": frozenset({ORCHESTRATOR}),
    "/metrics": frozenset({READER}),
    "/": frozenset({READER}),  # the dashboard and its API
}


def required_roles(method: str) -> frozenset[str] | None:
    """The roles that may call `method`; None when no role may (only OPERATOR)."""
    return METHOD_ROLES.get(method)


def http_required_roles(path: str) -> frozenset[str]:
    best = max((p for p in HTTP_ROLES if path == p or path.startswith(p if p.endswith("/") else p + "/")), key=len)
    return HTTP_ROLES[best]


def allows(roles: frozenset[str], required: frozenset[str] | None) -> bool:
    if OPERATOR in roles:
        return True
    if required is None:
        return False
    return not required or bool(roles & required)


# ---- NATS ------------------------------------------------------------------------------------------
# Subjects per role. JetStream's API ($JS.API.>) is shared by the mesh's own services (they create
# streams, consumers and KV watchers); data subjects, KV writes and acknowledgements ($JS.ACK.<stream>)
# are per role, which is what keeps forged rollouts, rogue registrations and policy writes out.
# Publishers and readers get only what publishing with acknowledgements and reading scores need.

_INBOX = "_INBOX.>"
_JS_API = "$JS.API.>"
_REGISTRY_KV = "$KV.rollmesh-registry.>"
_POLICY_KV = "$KV.rollmesh-policy.>"
_JS_READ = ["$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES", "$JS.API.DIRECT.GET.>"]


def nats_permissions(role: str, *, apps: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{"publish": [...], "subscribe": [...]} for a NATS user with `role`. `apps` limits a publisher
    to rollmesh.monitor.<app> for those apps (empty = every app)."""
    if role == OPERATOR:
        return {"publish": [">"], "subscribe": [">"]}
    if role == SERVER:  # registers itself; the rubric service also consumes traces and writes scores
        return {
            "publish": [_JS_API, _REGISTRY_KV, "rollmesh.scores.>", "rollmesh.deadletter.>", "$JS.ACK.MONITOR.>"],
            "subscribe": [_INBOX, "rollmesh.monitor.>", "$KV.rollmesh-policy.>", "$KV.rollmesh-registry.>"],
        }
    if role == ORCHESTRATOR:
        return {
            "publish": [_JS_API, "rollmesh.rollouts.>", "rollmesh.deadletter.>"],
            "subscribe": [_INBOX, "$KV.rollmesh-registry.>", "$KV.rollmesh-policy.>", "rollmesh.>"],
        }
    if role == TRAINER:
        return {
            "publish": [_JS_API, _POLICY_KV, "rollmesh.deadletter.>", "rollmesh.trainer.>", "$JS.ACK.ROLLOUTS.>"],
            "subscribe": [_INBOX, "rollmesh.rollouts.>", "$KV.rollmesh-registry.>", "$KV.rollmesh-policy.>"],
        }
    if role == PUBLISHER:
        subjects = [f"rollmesh.monitor.{a}" for a in apps] or ["rollmesh.monitor.>"]
        return {"publish": [*subjects, *_JS_READ], "subscribe": [_INBOX]}
    if role == READER:
        return {
            "publish": [
                *_JS_READ,
                "$JS.API.CONSUMER.CREATE.SCORES.>",
                "$JS.API.CONSUMER.CREATE.SCORES",
                "$JS.API.CONSUMER.INFO.SCORES.>",
                "$JS.API.CONSUMER.MSG.NEXT.SCORES.>",
                "$JS.API.CONSUMER.DELETE.SCORES.>",
                "$JS.ACK.SCORES.>",
            ],
            "subscribe": [_INBOX, "rollmesh.scores.>"],
        }
    raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
