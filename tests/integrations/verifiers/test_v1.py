"""A verifiers 0.4 (`verifiers.v1`) Taskset with a local harness, hosted by `rollmesh env serve`
from .venv-verifiers: RunEpisode runs the harness program, whose model call goes through verifiers'
interception to a real rollmesh interception endpoint in front of a scripted model, and the
trajectory carries the conversation and the taskset's reward. A crashing harness is the
environment's error, and the Episode stream is refused: a harness plays whole episodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .conftest import ENVS, serve, stop

pytest.importorskip("transformers")  # the scripted backend tokenizes with the tiny tokenizer

ENV = "vf-v1-sum"


@pytest.fixture(scope="module")
async def addresses(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    """{"env": the env server, "12": a scripted model answering "12", "oops": one answering "oops"}."""
    from rollmesh.inference.backends.scripted import ScriptedBackend
    from rollmesh.inference.server import InferenceServer

    models = {reply: InferenceServer(ScriptedBackend([reply])) for reply in ("12", "oops")}
    for model in models.values():
        await model.start()
    log = tmp_path_factory.mktemp("vf-v1") / "server.log"
    proc, address = await asyncio.to_thread(serve, [str(ENVS / "vf_v1_sum.py")], log)
    yield {"env": address, **{reply: model.address for reply, model in models.items()}}
    await asyncio.to_thread(stop, proc)
    for model in models.values():
        await model.stop(0)


async def test_run_episode_plays_the_harness_and_scores_with_the_taskset(addresses: dict[str, str]) -> None:
    from rollmesh.apps.conformance.intercepted import play
    from rollmesh.proto.v1 import environment_pb2 as env_pb
    from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
    from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
    from rollmesh.rpc import create_channel

    model = addresses["12"]
    async with create_channel(addresses["env"], kind="env") as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)
        (info,) = (await stub.Describe(env_pb.DescribeRequest(), timeout=10)).environments
        assert info.name == ENV and info.has_run_episode and not info.has_score
        assert dict(info.splits) == {"train": 2} and info.max_turns == 64  # no max_turns in verifiers: the default
        # Task 0 asks 7 + 5 (the scripted "12" is right), task 1 asks 3 + 4 (wrong).
        runs = [await play(stub, env_pb.StartEpisode(env=ENV, task_id=t), model, 60) for t in ("0", "1")]
    for played, question, reward in zip(runs, ["What is 7 + 5?", "What is 3 + 4?"], [1.0, 0.0], strict=True):
        traj = played.trajectory
        assert [(m.role, m.content) for m in traj.messages] == [("user", question), ("assistant", "12")]
        assert len(played.calls) == played.asked == 1 and played.calls[0].samples[0].text == "12"
        assert dict(traj.rewards) == {"correct": reward} and traj.reward == reward
        assert traj.stop_reason == traj_pb.STOP_REASON_DONE


async def test_a_crashing_harness_is_the_environments_error(addresses: dict[str, str]) -> None:
    from rollmesh.apps.conformance.intercepted import play
    from rollmesh.errors import RollmeshError
    from rollmesh.proto.v1 import environment_pb2 as env_pb
    from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
    from rollmesh.rpc import create_channel
    from rollmesh.rpc_errors import error_from_rpc

    async with create_channel(addresses["env"], kind="env") as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)
        with pytest.raises(Exception) as raised:
            await play(stub, env_pb.StartEpisode(env=ENV, task_id="0"), addresses["oops"], 60)
    error = error_from_rpc(raised.value)
    assert isinstance(error, RollmeshError) and error.reason == "ENVIRONMENT_FAILED", error
    assert "exited 1" in str(error) and "invalid literal for int()" in str(error)


async def test_the_episode_stream_is_refused(addresses: dict[str, str]) -> None:
    from rollmesh.env.client import EnvClient
    from rollmesh.errors import RollmeshError

    client = await EnvClient.connect(addresses["env"])
    try:
        async with client.episode(ENV, "0") as episode:
            with pytest.raises(RollmeshError) as raised:
                await episode.step("12")
    finally:
        await client.close()
    assert raised.value.reason == "NOT_SUPPORTED" and "RunEpisode" in str(raised.value)
