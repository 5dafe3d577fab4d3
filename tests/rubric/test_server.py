"""The rubric service over real gRPC on loopback: RubricClient, status codes and messages for bad
input, limits, deadlines, the NATS registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from rollmesh.errors import DeadlineExceededError, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from rollmesh.proto.v1 import bus_pb2
from rollmesh.proto.v1 import rubric_pb2 as rubric_pb
from rollmesh.proto.v1 import rubric_pb2_grpc as rubric_grpc
from rollmesh.registry import Registry
from rollmesh.rpc import RpcLimits, wait_for_ready
from rollmesh.rpc_errors import error_info
from rollmesh.rubric.client import RubricClient
from rollmesh.rubric.config import RewardFunctionConfig as Fn
from rollmesh.rubric.config import RubricConfig, RubricServiceConfig, ServerConfig, to_spec
from rollmesh.rubric.scoring import RubricBook
from rollmesh.rubric.server import SERVICE_NAME, RubricLimits, RubricServer

from . import reward_functions
from .conftest import trajectory

MOD = "rubric.reward_functions"
MATH = RubricConfig(
    name="math",
    functions=[
        Fn(name="correct", function="math_equivalence"),
        Fn(name="boxed", function="answer_format", weight=0.0),
    ],
)
BLOCKING = RubricConfig(
    name="blocking",  # waits until the test joins the meeting (see reward_functions.meet)
    functions=[Fn(name="wait", function=f"{MOD}:meet", params={"key": "server", "parties": 2, "timeout_s": 60})],
)


@pytest.fixture(scope="module")
async def served(nats_url: str) -> AsyncIterator[tuple[RubricServer, RubricClient]]:
    cfg = RubricServiceConfig(server=ServerConfig(port=0, max_group_size=8), rubric=[MATH, BLOCKING])
    server = RubricServer.from_config(cfg, nats_url=nats_url)
    await server.start()
    client = await RubricClient.connect(server.address, timeout_s=30)
    yield server, client
    await client.close()
    await server.stop(0)


async def test_score_list_and_group(served) -> None:
    server, client = served
    result = await client.score("math", trajectory("so \\boxed{\\frac{1}{2}}", "0.5"))
    assert dict(result.rewards) == {"correct": 1.0} and result.metrics["boxed"] == 1.0 and result.reward == 1.0
    results, adv = await client.score_group(
        "math",
        [trajectory("\\boxed{0.5}", "1/2"), trajectory("\\boxed{2}", "1/2"), trajectory("", "1/2", error="boom")],
    )
    assert [r.reward for r in results] == [1.0, 0.0, 0.0] and adv == [0.5, -0.5, 0.0]
    assert results[2].metrics["rubric/skipped"] == 1.0
    assert [s.name for s in await client.list_rubrics()] == ["blocking", "math"]
    await wait_for_ready(server.address, 5, service=SERVICE_NAME)  # health speaks for the service


async def test_inline_spec(served) -> None:
    _, client = served
    spec = RubricConfig(name="inline", functions=[Fn(name="em", function="exact_match")])
    assert (await client.score("", trajectory("4", "4"), spec=spec)).rewards["em"] == 1.0
    results, adv = await client.score_group("", [trajectory("4", "4"), trajectory("5", "4")], spec=to_spec(spec))
    assert [r.rewards["em"] for r in results] == [1.0, 0.0] and adv == [0.5, -0.5]


async def _status(address: str, method: str, request) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rubric_grpc.RubricServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await getattr(stub, method)(request, timeout=10)
    return e.value


async def test_unknown_rubric_is_not_found_with_the_known_names(served) -> None:
    server, client = served
    with pytest.raises(NotFoundError, match=r"no rubric 'nope'; this service has \['blocking', 'math'\]") as e:
        await client.score("nope", trajectory("1", "1"))
    assert e.value.reason == "UNKNOWN_RUBRIC" and e.value.metadata["rubrics"] == "blocking,math"
    raw = await _status(
        server.address, "ScoreTrajectory", rubric_pb.ScoreTrajectoryRequest(rubric="nope", trajectory=trajectory("1"))
    )
    assert raw.code() == grpc.StatusCode.NOT_FOUND and "math" in raw.details()
    info = error_info(raw)
    assert info is not None and info.reason == "UNKNOWN_RUBRIC" and info.domain == "rollmesh.dev"


@pytest.mark.parametrize(
    ("request_", "code", "reason", "message"),
    [
        (
            rubric_pb.ScoreTrajectoryRequest(
                spec=rubric_pb.RubricSpec(functions=[rubric_pb.RewardFunctionSpec(name="x", function="bogus")]),
                trajectory=trajectory("1"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FUNCTION",
            "unknown function 'bogus'; built-ins are [",
        ),
        (
            rubric_pb.ScoreTrajectoryRequest(
                spec=rubric_pb.RubricSpec(
                    functions=[rubric_pb.RewardFunctionSpec(name="x", function=f"{MOD}:contains_answer")]
                ),
                trajectory=trajectory("1"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMPORTS_NOT_ALLOWED",
            "allow_inline_imports",
        ),
        (
            rubric_pb.ScoreTrajectoryRequest(trajectory=trajectory("1")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NO_RUBRIC",
            "name a rubric (['blocking', 'math']) or send an inline spec",
        ),
        (
            rubric_pb.ScoreTrajectoryRequest(rubric="math"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NO_TRAJECTORY",
            "needs a trajectory",
        ),
        (
            rubric_pb.ScoreTrajectoryRequest(spec=rubric_pb.RubricSpec(name="empty"), trajectory=trajectory("1")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_RUBRIC",
            "no functions",
        ),
        (
            rubric_pb.ScoreTrajectoryRequest(
                spec=rubric_pb.RubricSpec(
                    functions=[rubric_pb.RewardFunctionSpec(name=f"f{i}", function="exact_match") for i in range(65)]
                ),
                trajectory=trajectory("1"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TOO_MANY_FUNCTIONS",
            "inline spec has 65 functions; the limit is 64",
        ),
        (
            rubric_pb.ScoreGroupRequest(rubric="math"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MISSING_FIELD",
            "empty group",
        ),
        (
            rubric_pb.ScoreGroupRequest(rubric="math", trajectories=[trajectory("1")] * 9),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "GROUP_TOO_LARGE",
            "group of 9 trajectories is over the limit of 8",
        ),
        (
            rubric_pb.ScoreGroupRequest(rubric="nope", trajectories=[trajectory("1")]),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_RUBRIC",
            "no rubric 'nope'",
        ),
    ],
)
async def test_bad_requests(served, request_, code: grpc.StatusCode, reason: str, message: str) -> None:
    server, _ = served
    method = "ScoreGroup" if isinstance(request_, rubric_pb.ScoreGroupRequest) else "ScoreTrajectory"
    raw = await _status(server.address, method, request_)
    assert raw.code() == code and message in raw.details(), raw.details()
    info = error_info(raw)
    assert info.reason == reason and info.domain == "rollmesh.dev"
    expected_metadata = {
        "MISSING_FIELD": {"field": "trajectories"},
        "GROUP_TOO_LARGE": {"limit": "8"},
        "TOO_MANY_FUNCTIONS": {"limit": "64"},
    }
    if reason in expected_metadata:
        assert dict(info.metadata) == expected_metadata[reason]


async def test_client_maps_errors_to_domain_errors(served) -> None:
    _, client = served
    bad = RubricConfig(name="b", functions=[Fn(name="x", function="regex", params={"pattern": "("})])
    with pytest.raises(InvalidArgumentError, match="invalid regular expression") as e:
        await client.score("", trajectory("1"), spec=bad)
    assert e.value.reason == "BAD_PARAMS"
    with pytest.raises(InvalidArgumentError, match="empty group"):
        await client.score_group("math", [])


async def test_client_deadline_and_the_server_survives(served) -> None:
    server, _ = served
    async with await RubricClient.connect(server.address, timeout_s=0.3) as impatient:
        with pytest.raises(DeadlineExceededError):
            await impatient.score("blocking", trajectory("x"))
    await _meet()  # let nothing linger
    _, client = served
    assert (await client.score("math", trajectory("\\boxed{1}", "1"))).reward == 1.0


async def _meet() -> None:
    # if the server's call was cancelled, this call waits alone: bound it
    try:
        await asyncio.wait_for(reward_functions.meet([], key="server", parties=2), 0.1)
    except TimeoutError:
        pass
    reward_functions._waiting.pop("server", None)


async def test_default_deadline_when_the_client_sets_none() -> None:
    book = RubricBook([BLOCKING])
    async with RubricServer(book, limits=RubricLimits(default_deadline_s=0.2)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = rubric_grpc.RubricServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ScoreTrajectory(
                    rubric_pb.ScoreTrajectoryRequest(rubric="blocking", trajectory=trajectory("x"))
                )
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline of 0.2 s" in e.value.details()
    info = error_info(e.value)
    assert info is not None and info.reason == "TIMEOUT" and dict(info.metadata) == {"timeout_s": "0.2"}
    reward_functions._waiting.pop("server", None)


async def test_concurrent_rpc_limit() -> None:
    book = RubricBook([BLOCKING])
    async with (
        RubricServer(book, limits=RubricLimits(max_concurrent_rpcs=1)) as server,
        await RubricClient.connect(server.address, timeout_s=10) as client,
    ):
        first = asyncio.create_task(client.score("blocking", trajectory("x")))
        for _ in range(1000):
            if server.servicer.active:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhaustedError, match="limit of 1 concurrent requests") as e:
            await client.score("blocking", trajectory("x"))
        assert e.value.reason == "RPC_LIMIT"
        await reward_functions.meet([], key="server", parties=2)  # releases the first call
        assert (await first).rewards["wait"] == 1.0
    reward_functions._waiting.pop("server", None)


async def test_oversized_request_is_refused() -> None:
    book = RubricBook([MATH])
    async with (
        RubricServer(book, rpc_limits=RpcLimits(max_message_bytes=4096)) as server,
        await RubricClient.connect(server.address, timeout_s=10) as client,
    ):
        with pytest.raises(ResourceExhaustedError):
            await client.score("math", trajectory("x" * 10_000, "1"))
        assert (await client.score("math", trajectory("\\boxed{1}", "1"))).reward == 1.0


async def test_registry_discovery(served, nats_url: str) -> None:
    server, _ = served
    async with await Registry.connect(nats_url) as registry:
        records = await registry.list(bus_pb2.SERVICE_KIND_RUBRIC, "rubric")
    mine = [r for r in records if r.instance_id == server.servicer.instance_id]
    assert mine and mine[0].address == server.address and mine[0].labels["rubrics"] == "blocking,math"
    async with await RubricClient.connect(nats_url=nats_url, timeout_s=10) as found:
        assert found.address in {r.address for r in records}
        assert [s.name for s in await found.list_rubrics()]


async def test_connect_needs_an_address_or_a_registry() -> None:
    with pytest.raises(InvalidArgumentError, match="address or a NATS URL"):
        await RubricClient.connect()


async def test_graceful_stop_deregisters_and_lets_in_flight_calls_finish(nats_url: str) -> None:
    server = await RubricServer(RubricBook([BLOCKING]), nats_url=nats_url).start()
    client = await RubricClient.connect(server.address, timeout_s=10)
    try:
        in_flight = asyncio.create_task(client.score("blocking", trajectory("x")))
        for _ in range(1000):
            if server.servicer.active:
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.stop(grace_s=10))
        async with await Registry.connect(nats_url) as registry:
            for _ in range(500):  # deregistration comes first in a stop
                live = await registry.list(bus_pb2.SERVICE_KIND_RUBRIC, "rubric")
                if server.servicer.instance_id not in {r.instance_id for r in live}:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the stopping server stayed in the registry")
        assert server.servicer.draining and not in_flight.done()
        await reward_functions.meet([], key="server", parties=2)
        assert (await in_flight).rewards["wait"] == 1.0
        await stopping
    finally:
        reward_functions._waiting.pop("server", None)
        await client.close()
