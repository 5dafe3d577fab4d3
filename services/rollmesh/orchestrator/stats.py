"""Counters and timings of a rollout engine: what was started, finished, failed, retried, dropped
and published, with token counts and time split by component. Plain data, cheap to update on the
hot path; `snapshot()` gives a dict for logs, reports and benchmarks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


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
    started_at: float = field(default_factory=time.monotonic)

    def error(self, reason: str) -> None:
        self.errored += 1
        self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        elapsed = time.monotonic() - out.pop("started_at")
        out["elapsed_s"] = elapsed
        done = self.finished + self.errored
        out["episodes_per_s"] = done / elapsed if elapsed > 0 else 0.0
        return out
