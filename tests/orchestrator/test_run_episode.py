"""RunEpisode rollouts end to end on loopback: a real environment server whose agent is an external
program (chain-arithmetic's agent.py), the orchestrator's interception endpoint, and a real
inference server (scripted backend: instant, deterministic replies)."""

from __future__ import annotations

import uuid

import pytest
from rollmesh.env.loader import load_environments
from rollmesh.errors import UnimplementedError
from rollmesh.orchestrator.config import RolloutConfig, SamplingConfig
from rollmesh.orchestrator.engine import RolloutEngine
from rollmesh.orchestrator.run_episode import plays_run_episode
from rollmesh.proto.v1 import environment_pb2 as env_pb
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from rollmesh.rpc import create_channel

from .local_servers import env_server, scripted_inference


def chain_env(**kwargs):
    return load_environments("rollmesh.examples.chain_arithmetic", {"num_train": 4, "num_test": 4, **kwargs})[0]


def _config(**kw) -> RolloutConfig:
    return RolloutConfig(
        run_id=f"t{uuid.uuid4().hex[:10]}",
        env="chain-arithmetic",
        sampling=SamplingConfig(max_tokens=8, seed=5),
        **kw,
    )


async def _prompt_ids(stub, messages) -> list[int]:
    request = inf_pb.TokenizeRequest()
    request.chat.messages.extend(messages)
    request.chat.add_generation_prompt = True
    return list((await stub.Tokenize(request, timeout=10)).token_ids)


async def test_an_agent_program_episode_is_recorded_token_for_token() -> None:
    async with (
        env_server(chain_env()) as env,
        scripted_inference(["12", "36", "30"]) as inference,
        RolloutEngine(
            _config(rollouts_per_task=2), env_addresses=[env.address], inference_addresses=[inference.address]
        ) as engine,
    ):
        tasks = await engine.list_tasks(limit=2)
        groups = [g async for g in engine.run(tasks)]
        endpoint_sessions = dict(engine.intercept.sessions)
        channel = create_channel(inference.address)
        stub = inf_grpc.InferenceServiceStub(channel)
        checked = 0
        for group in groups:
            for t in group:
                assert t.stop_reason == traj_pb.STOP_REASON_DONE and not t.HasField("error"), t.error
                assert len(t.turns) == 3 and t.metrics["model_calls"] == 3.0
                assistant = [i for i, m in enumerate(t.messages) if m.role == "assistant"]
                assert [t.messages[i].content for i in assistant] == ["12", "36", "30"]
                for turn, at in zip(t.turns, assistant, strict=True):
                    # the call's prompt is the conversation before that answer, rendered by the server
                    assert list(turn.prompt_ids) == await _prompt_ids(stub, t.messages[:at])
                    assert len(turn.completion_logprobs) == len(turn.completion_ids) > 0
                    assert turn.finish_reason == "stop"
                    checked += 1
                assert set(t.rewards) == {"correct", "steps"}
                assert t.provenance.model == "scripted" and t.provenance.inference_address == inference.address
                assert t.timing.generation_s > 0 and t.timing.environment_s > 0
        await channel.close()
    assert checked == 12
    assert endpoint_sessions == {}, "a session key outlived its episode"
    s = engine.stats
    assert (s.finished, s.errored, s.model_calls) == (4, 0, 12)


async def test_episode_mode_stream_plays_the_same_environment_over_the_stream() -> None:
    async with (
        env_server(chain_env()) as env,
        scripted_inference(["12", "36", "30"]) as inference,
        RolloutEngine(
            _config(episode_mode="stream"), env_addresses=[env.address], inference_addresses=[inference.address]
        ) as engine,
    ):
        tasks = await engine.list_tasks(limit=1)
        [group] = [g async for g in engine.run(tasks)]
    [t] = group
    assert [m.content for m in t.messages if m.role == "assistant"] == ["12", "36", "30"]
    assert len(t.turns) == 3 and "model_calls" not in t.metrics
    assert not engine.intercept.started  # no RunEpisode episode: the port was never opened


async def test_an_endpoint_the_environment_cannot_reach_is_an_error_that_says_so() -> None:
    async with env_server(chain_env()) as env, scripted_inference(["12"]) as inference:
        # environments are told a URL where nothing listens (a wrong rollout.intercept.url)
        cfg = _config(intercept={"url": "http://127.0.0.1:9/v1"}, max_attempts=1)
        async with RolloutEngine(cfg, env_addresses=[env.address], inference_addresses=[inference.address]) as eng:
            tasks = await eng.list_tasks(limit=1)
            [[t]] = [g async for g in eng.run(tasks)]
    assert t.stop_reason == traj_pb.STOP_REASON_ERROR
    assert t.error.source == "environment" and t.error.reason == "INFERENCE_UNREACHABLE", t.error


def test_episode_mode_decides_who_plays() -> None:
    offers = env_pb.EnvironmentInfo(name="agentic", has_run_episode=True)
    streams = env_pb.EnvironmentInfo(name="plain")
    assert [plays_run_episode(m, offers) for m in ("auto", "stream", "run_episode")] == [True, False, True]
    assert [plays_run_episode(m, streams) for m in ("auto", "stream")] == [False, False]
    with pytest.raises(UnimplementedError, match="does not offer RunEpisode"):
        plays_run_episode("run_episode", streams)
