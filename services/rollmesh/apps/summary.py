"""The summary of an evaluation, computed from its trajectories alone (no I/O, no transport): mean
reward overall and per reward function, pass@k with the unbiased estimator, errors by source and
code, token counts, timing percentiles, a reward histogram and a per-task table; for a run over
several environments, also per environment (rollouts, mean reward, pass@k, errors).

Errored trajectories (an infrastructure or environment failure) are counted as errors and kept out
of every reward statistic: an error is never a reward-zero sample.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from google.rpc import code_pb2

from ..convert import STOP_REASON_NAMES
from ..proto.v1 import trajectory_pb2 as traj_pb

# A rollout "passes" when its total reward reaches this (the usual reward of a solved task).
DEFAULT_PASS_THRESHOLD = 1.0
_EPS = 1e-9
HISTOGRAM_BINS = 20
MAX_ERROR_EXAMPLES = 10


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n samples, c of
    them correct, is correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), computed as a product
    to stay exact for large n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(max_n: int) -> list[int]:
    """1, 2, 4, ... up to max_n, and max_n itself."""
    ks = {1 << i for i in range(max_n.bit_length()) if 1 << i <= max_n}
    if max_n >= 1:
        ks.add(max_n)
    return sorted(ks)


def percentiles(values: Sequence[float], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """Mean, max and nearest-rank percentiles (keys "p50", "p90", ...); empty input gives {}."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {"mean": statistics.fmean(ordered)}
    for q in qs:
        rank = max(1, math.ceil(q * len(ordered)))
        out[f"p{round(q * 100):d}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Equal-width bins over [min, max] (one bin when all values are equal)."""
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    if hi - lo < _EPS:
        return {"edges": [lo, lo], "counts": [len(values)]}
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return {"edges": [lo + i * width for i in range(bins)] + [hi], "counts": counts}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def code_name(code: int) -> str:
    try:
        return code_pb2.Code.Name(code)
    except ValueError:
        return str(code)


def is_error(t: traj_pb.Trajectory) -> bool:
    return t.stop_reason == traj_pb.STOP_REASON_ERROR


def summarize(
    trajectories: Iterable[traj_pb.Trajectory],
    *,
    pass_threshold: float = DEFAULT_PASS_THRESHOLD,
    expected: int | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary as plain JSON-able data. `expected` is the number of rollouts the run asked for
    (to report what is missing); `run` is copied in as run metadata (id, env, model, ...)."""
    trajs = list(trajectories)
    ok = [t for t in trajs if not is_error(t)]
    errored = [t for t in trajs if is_error(t)]
    rewards = [t.reward for t in ok]

    per_function: dict[str, list[float]] = defaultdict(list)
    metrics: dict[str, list[float]] = defaultdict(list)
    for t in ok:
        for name, value in t.rewards.items():
            per_function[name].append(value)
        for name, value in t.metrics.items():
            metrics[name].append(value)

    envs = sorted({t.task.env for t in trajs})
    by_task: dict[str, list[traj_pb.Trajectory]] = defaultdict(list)
    for t in trajs:
        task_id = t.task.task_id or t.group_id
        # task ids are an environment's own: with several environments, name it too
        by_task[f"{t.task.env}/{task_id}" if len(envs) > 1 else task_id].append(t)

    tasks_table = []
    counts_ok: list[tuple[int, int]] = []  # (n, c) per task with at least one finished rollout
    for task_id in sorted(by_task):
        group = by_task[task_id]
        done = [t for t in group if not is_error(t)]
        passed = sum(1 for t in done if t.reward >= pass_threshold - _EPS)
        if done:
            counts_ok.append((len(done), passed))
        tasks_table.append(
            {
                "task_id": task_id,
                "rollouts": len(group),
                "errored": len(group) - len(done),
                "mean_reward": _mean([t.reward for t in done]),
                "max_reward": max((t.reward for t in done), default=None),
                "passed": passed,
                "pass_rate": passed / len(done) if done else None,
            }
        )

    pass_k, pass_k_tasks = _pass_at_ks(counts_ok)

    sources: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    examples: Counter[tuple[str, str, str, str]] = Counter()
    for t in errored:
        source = t.error.source or "unknown"
        code = code_name(t.error.code)
        reason = t.error.reason or code
        sources[source] += 1
        codes[code] += 1
        reasons[reason] += 1
        examples[(source, code, reason, t.error.message[:300])] += 1

    turns = [len(t.turns) for t in trajs]
    completion = [sum(len(turn.completion_ids) for turn in t.turns) for t in trajs]
    prompt = [sum(len(turn.prompt_ids) for turn in t.turns) for t in trajs]
    stop_reasons = Counter(STOP_REASON_NAMES.get(t.stop_reason, str(t.stop_reason)) or "unspecified" for t in trajs)
    retried = [t.attempts - 1 for t in trajs if t.attempts > 1]

    return {
        "run": dict(run or {}),
        "counts": {
            "trajectories": len(trajs),
            "expected": expected,
            "missing": max(0, expected - len(trajs)) if expected is not None else None,
            "finished": len(ok),
            "errored": len(errored),
            "tasks": len(by_task),
            "stop_reasons": dict(sorted(stop_reasons.items())),
            "retried": len(retried),
            "extra_attempts": sum(retried),
        },
        "reward": {
            "mean": _mean(rewards),
            "std": statistics.pstdev(rewards) if len(rewards) > 1 else (0.0 if rewards else None),
            "min": min(rewards, default=None),
            "max": max(rewards, default=None),
        },
        "rewards": {name: statistics.fmean(v) for name, v in sorted(per_function.items())},
        "metrics": {name: statistics.fmean(v) for name, v in sorted(metrics.items())},
        "pass_threshold": pass_threshold,
        "pass_at_k": pass_k,
        "pass_at_k_tasks": pass_k_tasks,
        "errors": {
            "total": len(errored),
            "by_source": dict(sources.most_common()),
            "by_code": dict(codes.most_common()),
            # The machine-readable cause (Error.reason), else the code.
            "by_reason": dict(reasons.most_common()),
            "examples": [
                {"source": s, "code": c, "reason": r, "message": m, "count": n}
                for (s, c, r, m), n in examples.most_common(MAX_ERROR_EXAMPLES)
            ],
        },
        "tokens": {
            "prompt": sum(prompt),
            "completion": sum(completion),
            "model_calls": sum(turns),
            "mean_completion_per_rollout": _mean(completion),
            "mean_turns": _mean(turns),
        },
        "timing_s": {
            part: percentiles([getattr(t.timing, f"{part}_s") for t in trajs])
            for part in ("total", "generation", "environment", "scoring")
        },
        "histogram": histogram(rewards),
        "tasks": tasks_table,
        "by_env": _by_env(trajs, pass_threshold) if len(envs) > 1 else {},
    }


def _pass_at_ks(counts: Sequence[tuple[int, int]]) -> tuple[dict[str, float], dict[str, int]]:
    """pass@k for k = 1, 2, 4, ... over the tasks with at least k finished rollouts ((n, c) per
    task), and how many tasks each k averages."""
    pass_k: dict[str, float] = {}
    pass_k_tasks: dict[str, int] = {}
    for k in ks_for(max((n for n, _ in counts), default=0)):
        eligible = [(n, c) for n, c in counts if n >= k]
        if eligible:
            pass_k[str(k)] = statistics.fmean(pass_at_k(n, c, k) for n, c in eligible)
            pass_k_tasks[str(k)] = len(eligible)
    return pass_k, pass_k_tasks


def _by_env(trajs: Sequence[traj_pb.Trajectory], pass_threshold: float) -> dict[str, dict[str, Any]]:
    """Each environment's rollouts, tasks, mean reward, reward functions, pass@k and errors."""
    out: dict[str, dict[str, Any]] = {}
    for env in sorted({t.task.env for t in trajs}):
        mine = [t for t in trajs if t.task.env == env]
        ok = [t for t in mine if not is_error(t)]
        groups: dict[str, list[traj_pb.Trajectory]] = defaultdict(list)
        functions: dict[str, list[float]] = defaultdict(list)
        for t in ok:
            groups[t.task.task_id or t.group_id].append(t)
            for name, value in t.rewards.items():
                functions[name].append(value)
        counts = [(len(g), sum(1 for t in g if t.reward >= pass_threshold - _EPS)) for g in groups.values()]
        pass_k, _ = _pass_at_ks(counts)
        out[env] = {
            "trajectories": len(mine),
            "finished": len(ok),
            "errored": len(mine) - len(ok),
            "tasks": len({t.task.task_id or t.group_id for t in mine}),
            "reward_mean": _mean([t.reward for t in ok]),
            "rewards": {name: statistics.fmean(v) for name, v in sorted(functions.items())},
            "pass_at_k": pass_k,
        }
    return out


__all__ = ["DEFAULT_PASS_THRESHOLD", "histogram", "ks_for", "pass_at_k", "percentiles", "summarize"]
