"""Transport-free pieces of the rollout engine: ids, token bridging, tool-call parsing, freshness,
replica choice, configuration."""

from __future__ import annotations

import pytest
from rollmesh.config import load_config
from rollmesh.errors import InvalidArgumentError, UnavailableError
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import group_id, trajectory_id
from rollmesh.orchestrator.freshness import judge, off_policy_steps, sample_weight
from rollmesh.orchestrator.routing import Replica, ReplicaPool
from rollmesh.orchestrator.tokens import TurnTemplate, bridge
from rollmesh.orchestrator.toolcalls import assistant_message
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb


def test_ids_are_deterministic_and_distinct() -> None:
    g = group_id("run1", "arithmetic", "test", "a001")
    assert g == "run1/arithmetic/test/a001"
    assert group_id("run1", "arithmetic", "test", "a001", occurrence=2) == "run1/arithmetic/test/a001@2"
    ids = {trajectory_id("run1", g, i) for i in range(8)}
    assert len(ids) == 8
    assert trajectory_id("run1", g, 3) == trajectory_id("run1", g, 3)
    assert trajectory_id("run2", g, 3) != trajectory_id("run1", g, 3)
    assert all(len(i) == 32 for i in ids)


@pytest.mark.parametrize(
    ("completion", "turn_end", "expected"),
    [
        ([10, 11, 2], [2], []),  # stopped by EOS: nothing to add
        ([10, 11], [2], [2]),  # cut by max_tokens: close the turn
        ([10, 99], [99, 13], [13]),  # Qwen-style <|im_end|> "\n": the newline is still missing
        ([10, 11], [99, 13], [99, 13]),
        ([], [2], [2]),
        ([10], [], []),
    ],
)
def test_bridge_adds_only_what_the_completion_lacks(completion, turn_end, expected) -> None:
    assert bridge(completion, turn_end) == expected


def test_next_prompt_extends_the_previous_prompt_and_completion() -> None:
    template = TurnTemplate(stub_ids=(1, 5, 9, 2, 6, 9, 2), turn_end=(2,))
    assert template.next_prompt([1, 5, 7], [8, 8], [7, 30, 2, 6]) == [1, 5, 7, 8, 8, 2, 7, 30, 2, 6]
    assert template.rendered_from_stub([1, 5, 9, 2, 6, 9, 2, 7, 30, 2, 6]) == [7, 30, 2, 6]
    assert template.rendered_from_stub([1, 5, 9, 2, 6, 9, 3, 7]) is None


async def test_turn_template_is_learned_from_the_tiny_chat_template() -> None:
    pytest.importorskip("transformers")
    from rollmesh.inference.tiny import build_tokenizer
    from rollmesh.orchestrator.tokens import STUB_USER

    tok = build_tokenizer()

    async def tokenize(req):
        if req.WhichOneof("input") == "text":
            return tok(req.text, add_special_tokens=False)["input_ids"]
        msgs = [{"role": m.role, "content": m.content} for m in req.chat.messages]
        text = tok.apply_chat_template(msgs, add_generation_prompt=req.chat.add_generation_prompt, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    template = await TurnTemplate.learn(tokenize)
    assert template.turn_end == (tok.eos_token_id,)
    from rollmesh.proto.v1 import messages_pb2 as msg_pb

    reply = msg_pb.Message(role="user", content="Higher.")
    rendered = await template.render(tokenize, msg_pb.Message(role="assistant", content="50"), [reply])
    assert tok.decode(rendered) == "<|user|>Higher.</s><|assistant|>"
    assert STUB_USER.content == "."


def test_tool_calls_are_parsed_from_hermes_blocks() -> None:
    text = 'Let me look.<tool_call>{"name": "search_pages", "arguments": {"query": "Nile"}}</tool_call>'
    m = assistant_message(text, call_prefix="call_1")
    assert m.role == "assistant" and m.content == "Let me look."
    assert [(c.id, c.name, c.arguments_json) for c in m.tool_calls] == [
        ("call_1_0", "search_pages", '{"query": "Nile"}')
    ]
    # not JSON, or no name: stays text, the environment judges it
    bad = "<tool_call>{oops}</tool_call>"
    assert assistant_message(bad).content == bad and not assistant_message(bad).tool_calls
    assert assistant_message("").content == " "  # an empty answer is still an answer
    assert assistant_message("42").content == "42"


def _traj(*versions: int) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory()
    for v in versions:
        t.turns.add(policy_version=v)
    return t


def test_freshness_is_judged_by_the_oldest_turn() -> None:
    assert off_policy_steps(_traj(5, 9), 12) == 7
    assert off_policy_steps(_traj(), 12) == 0
    assert sample_weight(3, 8) == 1.0
    assert sample_weight(17, 8) == pytest.approx(0.5)
    t = _traj(2, 10)
    assert judge(t, 12, 8, "drop") == "drop"
    assert t.metrics["off_policy_steps"] == 10
    assert judge(_traj(2), 12, 8, "downweight") == "downweight"
    fresh = _traj(4)
    assert judge(fresh, 12, 8, "drop") == "keep"
    assert fresh.metrics["sample_weight"] == 1.0


def _replica(address: str, inflight: int = 0, capacity: int = 10) -> Replica:
    return Replica(address=address, channel=None, capacity=capacity, inflight=inflight)  # type: ignore[arg-type]


def test_pool_picks_least_loaded_and_benches_failures() -> None:
    pool: ReplicaPool[Replica] = ReplicaPool("test", None)  # type: ignore[arg-type]
    a, b = _replica("a", inflight=5), _replica("b", inflight=1)
    pool.replicas = {"a": a, "b": b}
    assert pool.pick() is b
    pool.failed(b, RuntimeError("boom"))
    assert pool.pick() is a  # b is benched
    assert pool.pick(exclude=[a]) is b  # benched beats nothing
    pool.succeeded(b)
    assert pool.pick() is b
    with pytest.raises(UnavailableError, match="no test replica available"):
        pool.pick(exclude=[a, b])


def test_config_from_toml_with_overrides(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('run_id = "r1"\nenv = "arithmetic"\nrollouts_per_task = 4\n[sampling]\ntemperature = 0.7\n')
    cfg = load_config(RolloutConfig, path, ["sampling.max_tokens=32", "stale_policy=downweight"])
    assert (cfg.rollouts_per_task, cfg.sampling.temperature, cfg.sampling.max_tokens) == (4, 0.7, 32)
    assert cfg.stale_policy == "downweight"
    with pytest.raises(InvalidArgumentError, match="rollouts_per_tsk"):
        load_config(RolloutConfig, path, ["rollouts_per_tsk=2"])
    with pytest.raises(InvalidArgumentError, match="run_id"):
        load_config(RolloutConfig, None, ["run_id=a.b", "env=x"])


async def test_render_falls_back_to_the_real_assistant_message_then_fails_clearly() -> None:
    from rollmesh.errors import FailedPreconditionError
    from rollmesh.proto.v1 import messages_pb2 as msg_pb

    # A toy "template": one token per message (100 + content length) and a closing 2, 9 for the
    # generation prompt. Like templates that rewrite earlier assistant turns, an assistant "."
    # renders as 66 once something follows it, so the cached stub is no prefix and the real
    # assistant message is rendered instead; `broken` makes even that inconsistent.
    broken = False

    async def tokenize(req):
        msgs = list(req.chat.messages)
        ids = []
        for i, m in enumerate(msgs):
            rewritten = m.role == "assistant" and m.content == "." and i < len(msgs) - 1
            ids += [66 if rewritten else 100 + len(m.content), 2]
        if broken and len(msgs) > 2:
            ids[0] = 55
        return ids + ([9] if req.chat.add_generation_prompt else [])

    template = TurnTemplate(stub_ids=(101, 2, 101, 2), turn_end=(2,))
    reply = [msg_pb.Message(role="user", content="Higher.")]
    assistant = msg_pb.Message(role="assistant", content="50")
    assert await template.render(tokenize, assistant, reply) == [107, 2, 9]
    broken = True
    with pytest.raises(FailedPreconditionError, match="prefix-stable"):
        await template.render(tokenize, assistant, reply)
