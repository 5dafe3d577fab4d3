"""The eval summary and reports, from trajectories alone (no sockets): pass@k against brute-force
enumeration, errors kept out of rewards, per-function means, tokens, timings, the reports."""

from __future__ import annotations

import itertools
import math
import random
import xml.etree.ElementTree as ET

import pytest
from google.rpc import code_pb2
from rollmesh.apps.report import histogram_svg, render_html, render_markdown
from rollmesh.apps.summary import histogram, ks_for, pass_at_k, percentiles, summarize
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb


def traj(
    task: str,
    index: int,
    reward: float = 0.0,
    *,
    error: tuple[str, int, str] | tuple[str, int, str, str] | None = None,
    rewards: dict[str, float] | None = None,
    completion_tokens: int = 3,
    total_s: float = 1.0,
    attempts: int = 1,
) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=f"{task}-{index}", group_id=f"run/env/test/{task}", run_id="run")
    t.task.task_id = task
    t.task.env = "env"
    t.attempts = attempts
    t.timing.total_s = total_s
    t.timing.generation_s = total_s / 2
    t.turns.add(prompt_ids=[1, 2, 3, 4], completion_ids=list(range(completion_tokens)))
    if error:
        source, code, message, *reason = error
        t.stop_reason = traj_pb.STOP_REASON_ERROR
        t.error.source, t.error.code, t.error.message = source, code, message
        t.error.reason = reason[0] if reason else ""
        return t
    t.stop_reason = traj_pb.STOP_REASON_DONE
    t.reward = reward
    t.rewards.update(rewards or {"correct": reward})
    return t


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (c correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 8])
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_bad_input() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 7, 100) == pytest.approx(1 - math.comb(193, 100) / math.comb(200, 100))
    for n, c, k in ((3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_ks_percentiles_histogram() -> None:
    assert ks_for(0) == []
    assert ks_for(1) == [1]
    assert ks_for(4) == [1, 2, 4]
    assert ks_for(6) == [1, 2, 4, 6]
    p = percentiles([float(v) for v in range(1, 101)])
    assert (p["mean"], p["p50"], p["p90"], p["p99"], p["max"]) == (50.5, 50.0, 90.0, 99.0, 100.0)
    assert percentiles([]) == {}
    h = histogram([0.0, 0.0, 0.5, 1.0], bins=4)
    assert h["counts"] == [2, 0, 1, 1] and h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    assert histogram([0.3, 0.3]) == {"edges": [0.3, 0.3], "counts": [2]}


def test_summary_keeps_errors_out_of_rewards() -> None:
    unavailable = ("environment", code_pb2.UNAVAILABLE, "replica gone", "REPLICA_GONE")
    trajs = [
        # task a: 2 of 3 finished rollouts pass, one rollout errored (not a zero)
        traj("a", 0, 1.0, rewards={"correct": 1.0, "format": 0.5}),
        traj("a", 1, 1.0, rewards={"correct": 1.0, "format": 1.0}, attempts=2),
        traj("a", 2, 0.0, rewards={"correct": 0.0, "format": 0.0}),
        traj("a", 3, error=unavailable),
        # task b: none pass
        traj("b", 0, 0.25),
        traj("b", 1, 0.5),
        traj("b", 2, 0.0),
        traj("b", 3, 0.0),
        # task c: every rollout errored
        traj("c", 0, error=unavailable),
        traj("c", 1, error=("rubric", code_pb2.NOT_FOUND, "no rubric 'x'")),
    ]
    s = summarize(trajs, expected=12, run={"run_id": "run", "env": "env"})
    assert s["counts"]["trajectories"] == 10 and s["counts"]["missing"] == 2
    assert s["counts"]["finished"] == 7 and s["counts"]["errored"] == 3 and s["counts"]["tasks"] == 3
    assert s["counts"]["stop_reasons"] == {"done": 7, "error": 3}
    assert s["counts"]["retried"] == 1 and s["counts"]["extra_attempts"] == 1
    assert s["reward"]["mean"] == pytest.approx((1 + 1 + 0 + 0.25 + 0.5 + 0 + 0) / 7)
    assert s["reward"]["min"] == 0.0 and s["reward"]["max"] == 1.0
    assert s["rewards"]["correct"] == pytest.approx((1 + 1 + 0 + 0.25 + 0.5) / 7)
    assert s["rewards"]["format"] == pytest.approx(0.5)
    # pass@k over tasks with finished rollouts: a (n=3, c=2), b (n=4, c=0); c has none
    assert s["pass_at_k"]["1"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["pass_at_k"]["2"] == pytest.approx((1.0 + 0) / 2)
    assert s["pass_at_k"]["4"] == pytest.approx(0.0) and s["pass_at_k_tasks"]["4"] == 1  # only b has 4
    assert s["errors"]["by_source"] == {"environment": 2, "rubric": 1}
    assert s["errors"]["by_code"] == {"UNAVAILABLE": 2, "NOT_FOUND": 1}
    assert s["errors"]["by_reason"] == {"REPLICA_GONE": 2, "NOT_FOUND": 1}  # the code when no reason is set
    assert s["errors"]["examples"][0] == {
        "source": "environment",
        "code": "UNAVAILABLE",
        "reason": "REPLICA_GONE",
        "message": "replica gone",
        "count": 2,
    }
    assert s["tokens"]["completion"] == 30 and s["tokens"]["prompt"] == 40 and s["tokens"]["model_calls"] == 10
    assert s["timing_s"]["total"]["p50"] == 1.0 and s["timing_s"]["generation"]["max"] == 0.5
    rows = {r["task_id"]: r for r in s["tasks"]}
    assert rows["a"] == {
        "task_id": "a",
        "rollouts": 4,
        "errored": 1,
        "mean_reward": pytest.approx(2 / 3),
        "max_reward": 1.0,
        "passed": 2,
        "pass_rate": pytest.approx(2 / 3),
    }
    assert rows["c"]["mean_reward"] is None and rows["c"]["errored"] == 2
    assert sum(s["histogram"]["counts"]) == 7


def test_pass_threshold_is_configurable() -> None:
    trajs = [traj("a", 0, 0.5), traj("a", 1, 0.2)]
    assert summarize(trajs)["pass_at_k"]["1"] == 0.0
    assert summarize(trajs, pass_threshold=0.5)["pass_at_k"]["1"] == pytest.approx(0.5)


def test_summary_of_nothing() -> None:
    s = summarize([])
    assert s["counts"]["trajectories"] == 0 and s["reward"]["mean"] is None and s["pass_at_k"] == {}
    assert "<svg" in render_html(s) and "# Evaluation" in render_markdown(s)


def test_reports_render_every_section() -> None:
    rng = random.Random(0)
    trajs = [traj(f"t{i}", j, rng.choice([0.0, 0.5, 1.0])) for i in range(5) for j in range(4)]
    trajs.append(traj("t9", 0, error=("inference", code_pb2.DEADLINE_EXCEEDED, "a | pipe\nand a newline")))
    s = summarize(trajs, run={"run_id": "r1", "env": "guess-number", "model": "tiny"})
    md = render_markdown(s, "reward_histogram.svg")
    assert md.startswith("# Evaluation r1: guess-number with tiny")
    for heading in ("## Overview", "## Reward histogram", "## Errors (1)", "## Tokens", "## Timings", "## Tasks (6)"):
        assert heading in md
    assert "a \\| pipe and a newline" in md  # table cells stay on one row
    assert "| pass@4 |" in md
    page = render_html(s)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1 and "DEADLINE_EXCEEDED" in page
    svg = histogram_svg(s["histogram"]["edges"], s["histogram"]["counts"])
    bars = [e for e in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}rect") if e.find("{*}title") is not None]
    assert len(bars) == len(s["histogram"]["counts"])
    tallest = max(bars, key=lambda e: float(e.get("height", 0)))
    assert tallest.find("{*}title").text.endswith(f": {max(s['histogram']['counts'])}")  # type: ignore[union-attr]
