"""Callers that try to get into each gRPC service: with no certificate, a certificate from another
CA, an expired one, and a valid identity without the method's role. Each is refused with the right
status (the handshake fails for the first three; PERMISSION_DENIED with ErrorInfo MISSING_ROLE for
the last), nothing is applied (weights, pause state, episodes, scores), and role refusals leave an
audit line naming the identity and the reason. The same calls with the right role succeed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from rollmesh.env.client import EnvClient
from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer
from rollmesh.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from rollmesh.inference.backends.hf import HFBackend
from rollmesh.inference.client import InferenceClient
from rollmesh.inference.server import InferenceServer
from rollmesh.rubric.client import RubricClient
from rollmesh.rubric.config import RewardFunctionConfig, RubricConfig, RubricServiceConfig, ServerConfig
from rollmesh.rubric.server import RubricServer
from rollmesh.security.tls import TlsConfig
from rubric.conftest import trajectory

from .conftest import callers, member, using

CHAT = [{"role": "user", "content": "2+2?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 4}
MATH = RubricConfig(name="math", functions=[RewardFunctionConfig(name="correct", function="math_equivalence")])


@pytest.fixture(scope="module")
async def mesh(certs: Path, tiny_model_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """An environment, an inference and a rubric server, each with its own certificate and mTLS."""
    with using(member(certs, "env")):
        env = await EnvironmentServer(load_environments("arithmetic", {})).start()
    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32")
    with using(member(certs, "inference")):
        inference = await InferenceServer(backend).start()
    with using(member(certs, "rubric")):
        rubric = await RubricServer.from_config(RubricServiceConfig(server=ServerConfig(port=0), rubric=[MATH])).start()
    yield {"env": env, "inference": inference, "rubric": rubric, "backend": backend}
    for server in (env, inference, rubric):
        await server.stop(0)


async def _as(config: TlsConfig, client_class: type, address: str) -> Any:
    with using(config):
        return client_class.open(address, timeout_s=10)


async def _greedy(client: InferenceClient) -> list[int]:
    out = await client.generate(CHAT, **GREEDY)
    return list(out.samples[0].completion_ids)


# ---- the right role gets in ------------------------------------------------------------------------


async def test_each_identity_does_its_job(mesh: dict[str, Any], certs: Path) -> None:
    async with await _as(member(certs, "orchestrator"), EnvClient, mesh["env"].address) as env:
        assert [e.name for e in (await env.describe()).environments] == ["arithmetic"]
    async with await _as(member(certs, "orchestrator"), InferenceClient, mesh["inference"].address) as inf:
        assert (await inf.generate(CHAT, **GREEDY)).samples
    async with await _as(member(certs, "orchestrator"), RubricClient, mesh["rubric"].address) as rub:
        assert (await rub.score("math", trajectory("\\boxed{4}", "4"))).reward == 1.0
    async with await _as(member(certs, "reader"), EnvClient, mesh["env"].address) as env:
        assert (await env.describe()).environments  # readers may look
    async with await _as(member(certs, "operator"), InferenceClient, mesh["inference"].address) as inf:
        assert (await inf.model_info()).model


# ---- no, foreign or expired credentials: refused at the handshake -----------------------------------


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
@pytest.mark.parametrize("service", ["env", "inference", "rubric"])
async def test_unknown_callers_are_refused_at_the_handshake(
    mesh: dict[str, Any], certs: Path, foreign: Path, expired: TlsConfig, who: str, service: str
) -> None:
    config = callers(certs, foreign, expired)[who]
    client_class = {"env": EnvClient, "inference": InferenceClient, "rubric": RubricClient}[service]
    async with await _as(config, client_class, mesh[service].address) as client:
        call = {
            "env": lambda: client.describe(),
            "inference": lambda: client.model_info(),
            "rubric": lambda: client.score("math", trajectory("x", "4")),
        }[service]
        with pytest.raises(UnavailableError):
            await call()


async def test_a_server_without_a_ca_refuses_nobody_but_knows_nobody(certs: Path) -> None:
    """TLS without a CA and without tokens: encrypted, but every caller is anonymous, so the server
    is treated as unauthenticated (a non-loopback bind refuses it; see test_bind)."""
    config = TlsConfig(cert=str(certs / "env.pem"), key=str(certs / "env-key.pem"))
    assert config.enabled and not config.authenticates


# ---- a valid identity without the role: PERMISSION_DENIED, nothing applied ---------------------------


def _audited(caplog: pytest.LogCaptureFixture, identity: str, target: str) -> bool:
    return any(
        r.name == "rollmesh.audit" and getattr(r, "identity", "") == identity and target in r.getMessage()
        and getattr(r, "reason", "") == "MISSING_ROLE"
        for r in caplog.records
    )  # fmt: skip


async def test_weights_change_only_for_the_trainer(
    mesh: dict[str, Any], certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = mesh["backend"]
    name = "lm_head.weight"
    zeroed = {name: torch.zeros_like(dict(backend.hf_model.named_parameters())[name])}
    async with await _as(member(certs, "orchestrator"), InferenceClient, mesh["inference"].address) as orch:
        before, version = await _greedy(orch), backend.policy_version
        caplog.set_level(logging.INFO, "rollmesh.audit")
        for who in ("orchestrator", "reader", "publisher", "rubric", "env"):
            async with await _as(member(certs, who), InferenceClient, mesh["inference"].address) as intruder:
                with pytest.raises(PermissionDeniedError) as e:
                    await intruder.update_weights(zeroed, policy_version=2**62)
                assert e.value.reason == "MISSING_ROLE" and e.value.metadata["required"] == "trainer"
                assert e.value.metadata["identity"] == who
                with pytest.raises(PermissionDeniedError):
                    await intruder.load_weights("/etc/passwd")
                with pytest.raises(PermissionDeniedError):
                    await intruder.pause()
            assert _audited(caplog, who, "UpdateWeights") and _audited(caplog, who, "Pause")
        # Nothing applied: same version, same greedy output, and generation is not paused.
        assert backend.policy_version == version
        assert await asyncio.wait_for(_greedy(orch), 30) == before
        # The trainer may, and the change is audited as granted.
        async with await _as(member(certs, "trainer"), InferenceClient, mesh["inference"].address) as trainer:
            original = {name: dict(backend.hf_model.named_parameters())[name].detach().clone()}
            perturbed = {name: original[name] + 1.0}
            assert (await trainer.update_weights(perturbed)).policy_version == version + 1
            await trainer.update_weights(original)
        assert any(getattr(r, "audit", "") == "granted" and r.identity == "trainer" for r in caplog.records)


async def test_episodes_only_for_orchestrators(
    mesh: dict[str, Any], certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = mesh["env"].address
    for who in ("reader", "trainer", "publisher", "inference"):
        async with await _as(member(certs, who), EnvClient, address) as intruder:
            with pytest.raises(PermissionDeniedError) as e:
                async with intruder.episode("arithmetic"):
                    pass
            assert e.value.reason == "MISSING_ROLE"
        assert _audited(caplog, who, "Episode")
    async with await _as(member(certs, "trainer"), EnvClient, address) as intruder:
        with pytest.raises(PermissionDeniedError):
            await intruder.describe()  # trainers have no business with environments
    async with await _as(member(certs, "orchestrator"), EnvClient, address) as orch:
        assert (await orch.describe()).active_episodes == 0  # nothing was started


async def test_scores_only_for_orchestrators(mesh: dict[str, Any], certs: Path) -> None:
    for who in ("reader", "trainer", "publisher", "env"):
        async with await _as(member(certs, who), RubricClient, mesh["rubric"].address) as intruder:
            with pytest.raises(PermissionDeniedError) as e:
                await intruder.score("math", trajectory("\\boxed{4}", "4"))
            assert e.value.reason == "MISSING_ROLE"


async def test_health_is_open_and_reflection_is_not(mesh: dict[str, Any], certs: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from rollmesh.rpc import create_channel

    with using(member(certs, "publisher")):
        channel = create_channel(mesh["env"].address, kind="env")
    async with channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


# ---- bearer tokens (TLS without client certificates) --------------------------------------------------


async def test_bearer_tokens(certs: Path) -> None:
    server_tls = TlsConfig(
        cert=str(certs / "env.pem"), key=str(certs / "env-key.pem"), tokens_file=str(certs / "tokens.toml")
    )
    with using(server_tls):
        server = await EnvironmentServer(load_environments("arithmetic", {})).start()
    ca = str(certs / "ca.pem")
    try:
        async with await _as(TlsConfig(ca=ca), EnvClient, server.address) as anonymous:
            with pytest.raises(UnauthenticatedError) as e:
                await anonymous.describe()
            assert e.value.reason == "NO_CREDENTIALS"
        async with await _as(TlsConfig(ca=ca, token="not-a-token"), EnvClient, server.address) as forger:
            with pytest.raises(UnauthenticatedError) as e:
                await forger.describe()
            assert e.value.reason == "BAD_TOKEN"
        reader = TlsConfig(ca=ca, token=(certs / "reader.token").read_text())
        async with await _as(reader, EnvClient, server.address) as client:
            assert (await client.describe()).environments
            with pytest.raises(PermissionDeniedError):
                async with client.episode("arithmetic"):
                    pass
        operator = TlsConfig(ca=ca, token=(certs / "operator.token").read_text())
        async with await _as(operator, EnvClient, server.address) as client:
            task = (await client.tasks("arithmetic", limit=1))[0]
            async with client.episode("arithmetic", task.task_id) as episode:
                assert episode.messages
    finally:
        await server.stop(0)


def test_every_method_of_every_service_has_a_policy() -> None:
    from rollmesh.proto.v1 import environment_pb2, inference_pb2, rubric_pb2
    from rollmesh.security.roles import METHOD_ROLES

    for module in (environment_pb2, inference_pb2, rubric_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in METHOD_ROLES, method.full_name
