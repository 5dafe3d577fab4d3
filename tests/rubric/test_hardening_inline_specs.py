"""Trust boundary of the rubric service, over real gRPC on loopback with a real nats-server: inline
specs may only make the service call allowed addresses (no request forgery), failures of judges and
environment servers reach clients as fixed texts (the full story goes to the service's log), and
judge prompt templates from clients cannot ask for unbounded padding or attribute access."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from rollmesh.env import SingleTurnEnv
from rollmesh.env.server import EnvironmentServer
from rollmesh.errors import InvalidArgumentError
from rollmesh.inference.server import InferenceServer
from rollmesh.natsd import free_port
from rollmesh.proto.v1 import rubric_pb2 as rubric_pb
from rollmesh.proto.v1 import rubric_pb2_grpc as rubric_grpc
from rollmesh.rpc_errors import error_info
from rollmesh.rubric.client import RubricClient
from rollmesh.rubric.config import RewardFunctionConfig as Fn
from rollmesh.rubric.config import RubricConfig, RubricServiceConfig, ServerConfig, to_spec
from rollmesh.rubric.judge import MAX_FORMAT_WIDTH, check_template
from rollmesh.rubric.scoring import RubricBook
from rollmesh.rubric.server import RubricServer

from .conftest import trajectory

SECRET_REPLY = "SECRET hunter2"
SECRET_FAILURE = "db password is swordfish"


def has_answer(answer: str) -> float:
    return float(bool(answer))


class LeakyEnv(SingleTurnEnv):
    """An environment whose Score fails with a message that must stay in the house."""

    async def score(self, task: Any, messages: Any, state: Any) -> float:
        raise RuntimeError(SECRET_FAILURE)


@dataclass
class Listener:
    """A plain TCP service on loopback that no rubric may reach (it counts who connects)."""

    address: str = ""
    connections: int = 0
    server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> Listener:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.write(b"SSH-2.0-OpenSSH_internal\r\n")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self


@dataclass
class Mesh:
    rubric: RubricServer
    client: RubricClient
    registered_env: EnvironmentServer  # in the registry
    configured_env: EnvironmentServer  # not registered; a configured rubric uses its address
    judge: InferenceServer | None  # in the registry, replies SECRET_REPLY (needs transformers' tokenizer)
    listed: str  # on server.allowed_addresses; nothing listens there
    listener: Listener


@pytest.fixture(scope="module")
async def mesh(nats_url: str) -> AsyncIterator[Mesh]:
    tasks = [{"id": "t1", "question": "What is 2 + 2?", "answer": "4"}]
    envs = [SingleTurnEnv(name="hardening", tasks=tasks, reward=has_answer), LeakyEnv(name="leaky", tasks=tasks)]
    registered = await EnvironmentServer(envs, nats_url=nats_url).start()
    configured = await EnvironmentServer([SingleTurnEnv(name="hardening", tasks=tasks, reward=has_answer)]).start()
    judge = None
    if importlib.util.find_spec("transformers") is not None:
        from rollmesh.inference.backends.scripted import ScriptedBackend

        backend = ScriptedBackend([SECRET_REPLY], model="hardening-judge")
        judge = await InferenceServer(backend, nats_url=nats_url).start()
    listener = await Listener().start()
    listed = f"127.0.0.1:{free_port()}"
    cfg = RubricServiceConfig(
        server=ServerConfig(port=0, allowed_addresses=[listed]),
        rubric=[
            RubricConfig(
                name="configured-env",
                functions=[Fn(name="env", function="env_score", params={"address": configured.address})],
            ),
            RubricConfig(
                name="leaky-configured",
                functions=[Fn(name="env", function="env_score", params={"address": registered.address})],
            ),
        ],
    )
    rubric = await RubricServer.from_config(cfg, nats_url=nats_url).start()
    client = await RubricClient.connect(rubric.address, timeout_s=30)
    yield Mesh(rubric, client, registered, configured, judge, listed, listener)
    await client.close()
    await rubric.stop(0)
    for server in (judge, configured, registered):
        if server is not None:
            await server.stop(0)
    assert listener.server is not None
    listener.server.close()


def inline(function: str, **params: Any) -> rubric_pb.RubricSpec:
    return to_spec(RubricConfig(name="inline", functions=[Fn(name="f", function=function, params=params)]))


async def rpc_error(address: str, request: Any) -> grpc.aio.AioRpcError:
    method = "ScoreGroup" if isinstance(request, rubric_pb.ScoreGroupRequest) else "ScoreTrajectory"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await getattr(rubric_grpc.RubricServiceStub(channel), method)(request, timeout=30)
    return e.value


# ---- the address allow-list -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        lambda target: inline("judge", address=target, retries=0),
        lambda target: inline("env_score", address=target),
        lambda target: inline("tool_call_validity", address=target),
    ],
    ids=["judge", "env_score", "tool_call_validity"],
)
async def test_inline_addresses_off_the_allow_list_are_refused_before_any_connection(mesh: Mesh, spec) -> None:
    before = mesh.listener.connections
    t = trajectory("4", "4", env="hardening")
    for request in (
        rubric_pb.ScoreTrajectoryRequest(spec=spec(mesh.listener.address), trajectory=t),
        rubric_pb.ScoreGroupRequest(spec=spec(mesh.listener.address), trajectories=[t, t]),
    ):
        e = await rpc_error(mesh.rubric.address, request)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
        assert error_info(e).reason == "ADDRESS_NOT_ALLOWED"
        assert f"params.address = '{mesh.listener.address}' is not an address" in e.details()
    await asyncio.sleep(0.2)  # a connection attempt would have landed by now
    assert mesh.listener.connections == before


async def test_a_long_address_is_not_echoed_whole(mesh: Mesh) -> None:
    address = "10.0.0.1:" + "9" * 100_000
    e = await rpc_error(
        mesh.rubric.address,
        rubric_pb.ScoreTrajectoryRequest(spec=inline("env_score", address=address), trajectory=trajectory("4", "4")),
    )
    assert error_info(e).reason == "ADDRESS_NOT_ALLOWED" and len(e.details()) < 1000


async def test_registered_configured_and_listed_addresses_are_allowed(mesh: Mesh) -> None:
    t = trajectory("4", "4", env="hardening")
    for address in (mesh.registered_env.address, mesh.configured_env.address):
        result = await mesh.client.score("", t, spec=inline("env_score", address=address))
        assert dict(result.rewards) == {"f": 1.0} and not result.errors
    # on server.allowed_addresses: called (nothing listens there, so it fails, as a result error)
    result = await mesh.client.score("", t, spec=inline("env_score", address=mesh.listed))
    assert "f" in result.errors and not result.rewards
    if mesh.judge is not None:  # a judge by registry name needs no address
        result = await mesh.client.score("", t, spec=inline("judge", model="hardening-judge", max_tokens=32))
        assert "f" in result.errors  # the scripted judge never says yes or no


async def test_a_server_registered_after_the_last_listing_is_found(mesh: Mesh, nats_url: str) -> None:
    t = trajectory("4", "4", env="hardening")
    await mesh.client.score("", t, spec=inline("env_score", address=mesh.registered_env.address))  # lists
    tasks = [{"id": "t1", "question": "q", "answer": "4"}]
    async with EnvironmentServer(
        [SingleTurnEnv(name="hardening", tasks=tasks, reward=has_answer)], nats_url=nats_url
    ) as late:
        result = await mesh.client.score("", t, spec=inline("env_score", address=late.address))
    assert result.rewards["f"] == 1.0


# ---- upstream failures: fixed texts for clients, the full story in the log --------------------------


async def test_judge_replies_are_not_echoed_to_clients(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    if mesh.judge is None:
        pytest.skip("the scripted judge needs transformers (its tokenizer)")
    spec = inline("judge", address=mesh.judge.address, max_tokens=32, parse="yes_no")
    with caplog.at_level(logging.WARNING, logger="rollmesh.rubric"):
        result = await mesh.client.score("", trajectory("4", "4"), spec=spec)
    message = result.errors["f"]
    assert "hunter2" not in message and "unparseable judge output" in message and "log" in message
    assert "hunter2" in caplog.text  # the operator sees the reply
    # in-process callers (not over gRPC) still get the whole story
    book = RubricBook()
    try:
        direct = await book.compile(spec).score(trajectory("4", "4"))
    finally:
        await book.close()
    assert "hunter2" in direct.errors["f"]


async def test_environment_failures_reach_clients_as_a_reason_only(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = trajectory("4", "4", env="leaky")
    with caplog.at_level(logging.WARNING, logger="rollmesh.rubric"):
        inline_result = await mesh.client.score(
            "", leaky, spec=inline("env_score", address=mesh.registered_env.address)
        )
        configured_result = await mesh.client.score("leaky-configured", leaky)
        results, _ = await mesh.client.score_group("leaky-configured", [leaky, leaky])
    for result in (inline_result, configured_result, *results):
        (message,) = result.errors.values()
        assert SECRET_FAILURE not in message and "RuntimeError" not in message
        assert message.startswith("the environment server failed (ENVIRONMENT_FAILED)")
    assert SECRET_FAILURE in caplog.text


async def test_connection_failures_do_not_tell_what_answers_at_an_address(mesh: Mesh) -> None:
    t = trajectory("4", "4", env="hardening")
    result = await mesh.client.score("", t, spec=inline("env_score", address=mesh.listed))
    message = result.errors["f"]
    assert message.startswith("the environment server failed (") and "log" in message
    assert mesh.listed not in message and "connect" not in message.lower()


async def test_a_missing_reward_key_names_only_the_clients_key(mesh: Mesh) -> None:
    spec = inline("env_score", address=mesh.registered_env.address, key="nope")
    message = (await mesh.client.score("", trajectory("4", "4", env="hardening"), spec=spec)).errors["f"]
    assert "'nope'" in message and "BAD_PARAMS" in message and "has_answer" not in message


# ---- judge prompt templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("{question:>100000000}", "has a format spec"),
        ("{completion:.5}", "has a format spec"),
        ("{completion!r}", "has a conversion"),
        ("{question:{answer}}", "has a format spec"),
        ("{question.__class__}", "uses attribute or index access"),
        ("{answer[0]}", "uses attribute or index access"),
        ("{x.__class__.__init__.__globals__}", "uses attribute or index access"),
    ],
)
async def test_inline_judge_prompts_use_plain_fields(mesh: Mesh, prompt: str, expected: str) -> None:
    spec = inline("judge", address=mesh.listed, prompt=prompt)
    for request in (
        rubric_pb.ScoreTrajectoryRequest(spec=spec, trajectory=trajectory("4", "4")),
        rubric_pb.ScoreGroupRequest(spec=spec, trajectories=[trajectory("4", "4")]),
    ):
        e = await rpc_error(mesh.rubric.address, request)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in e.details(), e.details()
        assert error_info(e).reason == "BAD_RUBRIC"


def test_configured_judge_prompts_have_bounded_widths() -> None:
    check_template(f"{{question:>{MAX_FORMAT_WIDTH}}} {{completion:.2000}} {{answer!r}}", "judge")
    for prompt, expected in [
        ("{question:>100000000}", f"over the limit of {MAX_FORMAT_WIDTH}"),
        (f"{{question:{MAX_FORMAT_WIDTH + 1}}}", f"over the limit of {MAX_FORMAT_WIDTH}"),
        ("{question:{answer}}", "is not [[fill]align][width][.precision]"),
        ("{question:,}", "is not [[fill]align][width][.precision]"),
        ("{question.__class__}", "attribute or index access"),
    ]:
        with pytest.raises(InvalidArgumentError, match=expected.replace("[", r"\[").replace(".", r"\.")) as e:
            check_template(prompt, "judge")
        assert e.value.reason == "BAD_RUBRIC"
    cfg = RubricServiceConfig(
        rubric=[
            RubricConfig(
                name="wide",
                functions=[Fn(name="j", function="judge", params={"address": "x:1", "prompt": "{question:>99999}"})],
            )
        ]
    )
    with pytest.raises(InvalidArgumentError, match="over the limit"):
        RubricBook.from_config(cfg)


def test_allowed_addresses_in_the_service_file(tmp_path) -> None:
    from rollmesh.config import load_config

    path = tmp_path / "rubrics.toml"
    path.write_text('[server]\nallowed_addresses = [" judge.internal:50051 "]\n')
    assert load_config(RubricServiceConfig, path).server.allowed_addresses == ["judge.internal:50051"]
    path.write_text('[server]\nallowed_addresses = ["judge internal:1"]\n')
    with pytest.raises(InvalidArgumentError, match="without spaces"):
        load_config(RubricServiceConfig, path)
