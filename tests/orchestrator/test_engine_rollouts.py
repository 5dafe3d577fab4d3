"""The rollout engine against real servers on loopback: environment servers, inference servers
(the tiny model on the hf backend, and the scripted backend), NATS JetStream and its registry."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from rollmesh import bus
from rollmesh.orchestrator.config import RolloutConfig, SamplingConfig
from rollmesh.orchestrator.engine import RolloutEngine, trajectory_id
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

from .local_servers import env, env_server, scripted_inference

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rollmesh.inference.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("orchestrator-tiny"))


@pytest.fixture(scope="module")
async def tiny_server(tiny_dir: Path):
    from rollmesh.inference.backends.hf import HFBackend
    from rollmesh.inference.server import InferenceServer

    backend = await HFBackend.create(str(tiny_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
async def envs():
    """Two replicas hosting arithmetic, guess-number (4 turns at most) and wiki-search."""
    hosted = [env("arithmetic"), env("guess-number", max_turns=4), env("wiki-search")]
    async with env_server(*hosted) as a, env_server(*hosted) as b:
        yield a, b


def _check_tokens(t: traj_pb.Trajectory) -> None:
    assert t.turns, t
    for turn in t.turns:
        n = len(turn.completion_ids)
        assert n >= 1
        assert len(turn.completion_logprobs) == n and len(turn.completion_mask) == n
        assert all(m == 1 for m in turn.completion_mask)
        assert all(lp <= 0.0 for lp in turn.completion_logprobs)
        assert turn.finish_reason in ("stop", "length")
    for prev, nxt in zip(t.turns, t.turns[1:], strict=False):
        head = list(prev.prompt_ids) + list(prev.completion_ids)
        assert list(nxt.prompt_ids[: len(head)]) == head, "turn k+1 must extend turn k's prompt + completion"


async def test_single_turn_tokens_come_straight_from_inference(envs, tiny_server, tokenizer) -> None:
    cfg = RolloutConfig(
        run_id=_run_id(),
        env="arithmetic",
        rollouts_per_task=3,
        sampling=SamplingConfig(max_tokens=8, seed=7),
    )
    addresses = [envs[0].address]
    async with RolloutEngine(cfg, env_addresses=addresses, inference_addresses=[tiny_server.address]) as engine:
        tasks = await engine.list_tasks(limit=2)
        groups = [g async for g in engine.run(tasks)]
        again = [g async for g in engine.run(tasks[:1])]  # the same task recurs: a new group id
    assert len(groups) == 2 and all(len(g) == 3 for g in groups)
    for group in groups:
        assert len({t.group_id for t in group}) == 1
        assert sum(t.advantage for t in group) == pytest.approx(0.0, abs=1e-9)
        for t in group:
            assert t.stop_reason == traj_pb.STOP_REASON_DONE and not t.HasField("error")
            assert len(t.turns) == 1
            _check_tokens(t)
            turn = t.turns[0]
            prompt = [{"role": m.role, "content": m.content} for m in t.task.prompt]
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            assert list(turn.prompt_ids) == tokenizer(text, add_special_tokens=False)["input_ids"]
            assert t.messages[-1].role == "assistant"
            decoded = tokenizer.decode(turn.completion_ids, skip_special_tokens=True)
            assert t.messages[-1].content in (decoded, " ")  # " ": an empty completion
            assert set(t.rewards) == {"correct", "format"}
            assert 0 <= _index(t) < 3
            p = t.provenance
            assert (p.env_name, p.model, p.env_address, p.inference_address) == (
                "arithmetic",
                "tiny",
                envs[0].address,
                tiny_server.address,
            )
            assert p.env_digest and p.env_version and p.trace_id and p.rollmesh_version
            assert p.sampling.max_tokens == 8 and p.sampling.HasField("seed")
            assert t.timing.total_s >= t.timing.generation_s > 0 and t.timing.environment_s > 0
            assert t.attempts == 1
    assert again[0][0].group_id == f"{cfg.run_id}/arithmetic/test/{tasks[0].task_id}@1"
    s = engine.stats
    assert (s.started, s.finished, s.errored, s.groups) == (9, 9, 0, 3)
    assert s.completion_tokens == sum(len(t.turns[0].completion_ids) for g in groups + again for t in g)


def _index(t: traj_pb.Trajectory) -> int:
    for i in range(64):
        if trajectory_id(t.run_id, t.group_id, i) == t.trajectory_id:
            return i
    raise AssertionError("trajectory id is not derived from its group")


async def test_seeded_runs_reproduce_their_tokens(envs, tiny_server) -> None:
    run_id = _run_id()
    cfg = RolloutConfig(
        run_id=run_id, env="arithmetic", rollouts_per_task=2, sampling=SamplingConfig(max_tokens=6, seed=3)
    )

    async def once() -> dict[str, list[int]]:
        async with RolloutEngine(cfg, env_addresses=[envs[1].address], inference_addresses=[tiny_server.address]) as e:
            tasks = await e.list_tasks(limit=1)
            return {t.trajectory_id: list(t.turns[0].completion_ids) async for g in e.run(tasks) for t in g}

    first, second = await once(), await once()
    assert first == second and len(first) == 2
    assert len({tuple(v) for v in first.values()}) == 2, "rollouts of a group sample with different seeds"


async def test_multi_turn_prompts_extend_exactly(envs, tiny_server, tokenizer) -> None:
    """guess-number with the tiny model: every turn's prompt is the previous prompt + completion +
    the environment's reply rendered by the chat template, token for token."""
    cfg = RolloutConfig(
        run_id=_run_id(), env="guess-number", rollouts_per_task=2, sampling=SamplingConfig(max_tokens=5, seed=1)
    )
    async with RolloutEngine(
        cfg, env_addresses=[e.address for e in envs], inference_addresses=[tiny_server.address]
    ) as engine:
        groups = [g async for g in engine.run(await engine.list_tasks(limit=2))]
    trajectories = [t for g in groups for t in g]
    assert len(trajectories) == 4
    multi = [t for t in trajectories if len(t.turns) > 1]
    assert multi, "the tiny model never solves guess-number in one turn"
    for t in trajectories:
        _check_tokens(t)
        assert t.stop_reason in (traj_pb.STOP_REASON_DONE, traj_pb.STOP_REASON_MAX_TURNS)
        # The text of the last prompt is the chat template's rendering of the conversation before
        # the last model call, each assistant message being exactly what the model wrote (its
        # completion tokens decoded, special tokens included, without the EOS the template adds).
        last_assistant = max(i for i, m in enumerate(t.messages) if m.role == "assistant")
        conversation, k = [], 0
        for m in t.messages[:last_assistant]:
            content = m.content
            if m.role == "assistant":
                ids = list(t.turns[k].completion_ids)
                content = tokenizer.decode(ids[:-1] if ids[-1] == tokenizer.eos_token_id else ids)
                k += 1
            conversation.append({"role": m.role, "content": content})
        expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(t.turns[-1].prompt_ids) == expected


async def test_a_conversation_that_outgrows_the_context_is_truncated_not_an_error(envs) -> None:
    async def run(context_length: int) -> list[traj_pb.Trajectory]:
        async with scripted_inference("wiki-search", context_length=context_length) as inference:
            cfg = RolloutConfig(run_id=_run_id(), env="wiki-search", split="train", rollouts_per_task=2)
            async with RolloutEngine(
                cfg, env_addresses=[envs[0].address], inference_addresses=[inference.address]
            ) as engine:
                return [t async for g in engine.run(await engine.list_tasks(limit=1)) for t in g]

    whole = await run(8192)
    assert [len(t.turns) for t in whole] == [3, 3] and "context_exhausted" not in whole[0].metrics
    # a context the second turn's prompt (the first turn's tokens + the tool's reply) does not fit
    cut = await run(len(whole[0].turns[1].prompt_ids))
    for t in cut:
        assert t.stop_reason == traj_pb.STOP_REASON_LENGTH and not t.HasField("error")
        assert len(t.turns) == 1 and t.metrics["context_exhausted"] == 1.0
        assert [m.role for m in t.messages][-2:] == ["assistant", "tool"]


async def test_tool_episode_runs_the_tools_and_scores(envs) -> None:
    async with scripted_inference("wiki-search") as inference:
        cfg = RolloutConfig(run_id=_run_id(), env="wiki-search", split="train", rollouts_per_task=2)
        async with RolloutEngine(
            cfg, env_addresses=[envs[0].address], inference_addresses=[inference.address]
        ) as engine:
            task = next(t for t in await engine.list_tasks() if t.task_id == "q001")  # answer: Khartoum
            groups = [g async for g in engine.run([task])]
    (group,) = groups
    for t in group:
        _check_tokens(t)
        assert len(t.turns) == 3
        roles = [m.role for m in t.messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
        calls = [c.name for m in t.messages for c in m.tool_calls]
        assert calls == ["search_pages", "read_page"]
        tool_results = [m.content for m in t.messages if m.role == "tool"]
        assert "nile" in tool_results[0] and "Khartoum" in tool_results[1]
        assert t.rewards["correct_answer"] == 1.0 and t.reward == 1.0
        assert t.advantage == 0.0  # every rollout of the group earned the same


async def test_groups_spread_over_replicas(envs) -> None:
    async with scripted_inference("guess-number") as inference:
        cfg = RolloutConfig(run_id=_run_id(), env="guess-number", rollouts_per_task=4, max_concurrency=8)
        async with RolloutEngine(
            cfg, env_addresses=[e.address for e in envs], inference_addresses=[inference.address]
        ) as engine:
            groups = [g async for g in engine.run(await engine.list_tasks(limit=4))]
    assert len(groups) == 4 and all(len(g) == 4 for g in groups)
    ids = [t.trajectory_id for g in groups for t in g]
    assert len(set(ids)) == 16
    assert {t.provenance.env_address for g in groups for t in g} == {e.address for e in envs}
    assert engine.stats.finished == 16


async def test_a_slow_consumer_holds_back_scheduling(envs) -> None:
    async with scripted_inference("arithmetic") as inference:
        cfg = RolloutConfig(run_id=_run_id(), env="arithmetic", rollouts_per_task=1, max_concurrency=2)
        async with RolloutEngine(
            cfg, env_addresses=[envs[0].address], inference_addresses=[inference.address]
        ) as engine:
            tasks = await engine.list_tasks(limit=30)
            seen = 0
            async for _ in engine.run(tasks):
                seen += 1
                if seen == 1:
                    await asyncio.sleep(0.5)
                    # 2 * ceil(max_concurrency / r) groups may be started and not yet consumed
                    assert engine.stats.started <= 2 * 2 + 1
    assert seen == 30 and engine.stats.finished == 30


async def _rollout_count(js, run_id: str) -> int:
    info = await js.stream_info("ROLLOUTS", subjects_filter=bus.rollouts_subject(run_id))
    return sum((info.state.subjects or {}).values())


async def test_published_before_yield_deduplicated_and_resumable(envs, nats_url) -> None:
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    publisher = bus.Publisher(nc, js)
    run_id = _run_id()
    try:
        async with scripted_inference("arithmetic") as inference:
            cfg = RolloutConfig(run_id=run_id, env="arithmetic", rollouts_per_task=2)
            kwargs = {"env_addresses": [envs[0].address], "inference_addresses": [inference.address]}
            async with RolloutEngine(cfg, publisher=publisher, **kwargs) as engine:
                tasks = await engine.list_tasks(limit=3)
                ids = []
                async for group in engine.run(tasks):
                    ids += [t.trajectory_id for t in group]
                    # published before it was yielded
                    assert await _rollout_count(js, run_id) >= len(ids)
            assert engine.stats.published == 6 and engine.stats.duplicates == 0
            async with RolloutEngine(cfg, publisher=publisher, **kwargs) as again:
                rerun = [t.trajectory_id async for g in again.run(tasks) for t in g]
            assert sorted(rerun) == sorted(ids)
            assert again.stats.duplicates == 6 and again.stats.published == 0
            assert await _rollout_count(js, run_id) == 6
            async with RolloutEngine(cfg, publisher=publisher, **kwargs) as resumed:
                assert [g async for g in resumed.run(tasks, skip=set(ids[:5]))] != []
                # a later pass of training names its epoch: new ids, nothing taken for a duplicate
                epoch = [t async for g in resumed.run(tasks[:1], epoch=2) for t in g]
            assert resumed.stats.skipped == 5 and resumed.stats.started == 3
            assert {t.group_id for t in epoch} == {f"{run_id}/arithmetic/test/{tasks[0].task_id}@2"}
            assert resumed.stats.published == 2 and not set(ids) & {t.trajectory_id for t in epoch}
            ids += [t.trajectory_id for t in epoch]
            sub = await js.pull_subscribe(bus.rollouts_subject(run_id, "arithmetic"), durable=None)
            msgs = await sub.fetch(20, timeout=2)
            stored = {traj_pb.Trajectory.FromString(m.data).trajectory_id for m in msgs}
            assert stored == set(ids)
    finally:
        await nc.close()


async def test_a_named_rubric_scores_groups_on_the_rubric_service(envs, tiny_server) -> None:
    from rollmesh.rubric.config import RewardFunctionConfig, RubricConfig, RubricServiceConfig, ServerConfig
    from rollmesh.rubric.server import RubricServer

    brevity = RubricConfig(
        name="brevity",
        functions=[
            RewardFunctionConfig(
                name="short", function="length_penalty", params={"unit": "chars", "target": 0, "scale": 1000}
            )
        ],
    )
    rubric = RubricServer.from_config(RubricServiceConfig(server=ServerConfig(port=0), rubric=[brevity]))
    await rubric.start()
    try:
        cfg = RolloutConfig(
            run_id=_run_id(),
            env="arithmetic",
            rollouts_per_task=4,
            rubric="brevity",
            sampling=SamplingConfig(max_tokens=12, seed=5),
        )
        async with RolloutEngine(
            cfg,
            env_addresses=[envs[0].address],
            inference_addresses=[tiny_server.address],
            rubric_address=rubric.address,
        ) as engine:
            (group,) = [g async for g in engine.run(await engine.list_tasks(limit=1))]
    finally:
        await rubric.stop(0)
    rewards = [t.reward for t in group]
    for t in group:
        n = len(t.messages[-1].content)
        assert dict(t.rewards) == {"short": pytest.approx(-min(1.0, n / 1000))}
    assert len(set(rewards)) > 1, "seeded samples of different lengths"
    mean = sum(rewards) / len(rewards)
    assert [t.advantage for t in group] == pytest.approx([r - mean for r in rewards])
