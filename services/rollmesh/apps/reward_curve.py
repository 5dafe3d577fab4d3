"""The reward curve of a training run, from the trainer's per-step metrics records: the batch mean
reward, and in a run over several environments one curve per environment (reward_mean_by_env)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _rewards(records: Sequence[dict[str, Any]]) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r["reward_mean"]) for r in records if r.get("reward_mean") is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def env_rewards(records: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, mean rewards) of each environment, from the steps that had its rollouts."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for env, value in (r.get("reward_mean_by_env") or {}).items():
            if value is not None:
                steps, values = out.setdefault(env, ([], []))
                steps.append(r["step"])
                values.append(value)
    return dict(sorted(out.items()))


def _first_last(rewards: Sequence[float]) -> dict[str, Any]:
    window = max(1, len(rewards) // 5)
    return {
        "window": window,
        "reward_first": sum(rewards[:window]) / window,
        "reward_last": sum(rewards[-window:]) / window,
        "reward_max": max(rewards),
    }


def reward_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean reward of the first and last windows of steps (a fifth of the run, at least one step);
    with several environments, the same per environment (`by_env`)."""
    _, rewards = _rewards(records)
    if not rewards:
        return {}
    out = _first_last(rewards)
    per_env = env_rewards(records)
    if len(per_env) > 1:
        out["by_env"] = {env: _first_last(values) for env, (_, values) in per_env.items()}
    return out


def moving_average(values: Sequence[float], k: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= k:
            total -= values[i - k]
        out.append(total / min(i + 1, k))
    return out


def plot_reward_curve(records: Sequence[dict[str, Any]], out: Path, *, title: str = "reward") -> Path | None:
    """Draws the curve into `out` (PNG); None, with a log line, where matplotlib is not installed
    (an orchestrator on the base install: the metrics hold the same numbers)."""
    import logging

    try:
        import matplotlib
    except ImportError:
        logging.getLogger(__name__).info("no reward curve drawn: matplotlib is not installed ([trainer] extra)")
        return None

    matplotlib.use("Agg")  # no display
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    steps, rewards = _rewards(records)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, rewards, "o", ms=3, alpha=0.45, label="batch mean reward")
    if rewards:
        ax.plot(steps, moving_average(rewards, max(1, len(rewards) // 10)), lw=2, label="moving average")
    per_env = env_rewards(records)
    if len(per_env) > 1:
        for env, (env_steps, values) in per_env.items():
            ax.plot(env_steps, moving_average(values, max(1, len(values) // 10)), lw=1.5, ls="--", label=env)
    ax.set_xlabel("trainer step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
