"""Counters and timings of a rollout engine: what was started, finished, failed, retried, dropped
and published, with token counts and time split by component, and the main counts and the mean
reward per environment (a run over several). Plain data, cheap to update on the hot path;
`snapshot()` gives a dict for logs, reports and benchmarks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EnvStats:
    """One environment's share of a run's rollouts."""

    started: int = 0
    finished: int = 0
    errored: int = 0
    stale_dropped: int = 0
    reward_sum: float = 0.0  # over finished rollouts

    @property
    def reward_mean(self) -> float | None:
        return self.reward_sum / self.finished if self.finished else None


@dataclass
class RolloutStats:
    started: int = 0  # episodes begun (first attempt)
    finished: int = 0  # episodes that ended normally (any stop reason but ERROR)
    errored: int = 0  # trajectories that ended as errors (after retries), publishing failures included
    retried: int = 0  # episode reruns on another environment replica
    rerouted: int = 0  # model calls sent again to another inference replica
    stale_dropped: int = 0
    downweighted: int = 0
    published: int = 0
    duplicates: int = 0  # publishes JetStream dropped as already stored (same trajectory id)
    publish_failed: int = 0
    skipped: int = 0  # rollouts not run because their id was in `skip` (resume)
    groups: int = 0  # groups yielded
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    generation_s: float = 0.0
    environment_s: float = 0.0
    scoring_s: float = 0.0
    publish_s: float = 0.0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    by_env: dict[str, EnvStats] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    def env(self, name: str) -> EnvStats:
        stats = self.by_env.get(name)
        if stats is None:
            stats = self.by_env[name] = EnvStats()
        return stats

    def error(self, reason: str) -> None:
        self.errored += 1
        self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        elapsed = time.monotonic() - out.pop("started_at")
        out["elapsed_s"] = elapsed
        done = self.finished + self.errored
        out["episodes_per_s"] = done / elapsed if elapsed > 0 else 0.0
        out["by_env"] = {name: {**asdict(e), "reward_mean": e.reward_mean} for name, e in sorted(self.by_env.items())}
        return out
