"""Transport-free pieces of the rollout engine: ids, tool-call parsing, freshness, replica choice,
configuration."""

from __future__ import annotations

import pytest
from rollmesh.config import load_config
from rollmesh.errors import InvalidArgumentError, UnavailableError
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import group_id, trajectory_id
from rollmesh.orchestrator.freshness import judge, off_policy_steps, sample_weight
from rollmesh.orchestrator.routing import Replica, ReplicaPool
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
