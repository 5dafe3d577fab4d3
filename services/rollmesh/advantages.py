"""Group-relative advantages (GRPO family): each rollout's reward against the other rollouts of the
same task, so the trainer needs no value model."""

from __future__ import annotations

import math
from collections.abc import Sequence


def group_advantages(
    rewards: Sequence[float | None],
    *,
    normalize_std: bool = False,
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> list[float]:
    """Advantage of each member of a group.

    - baseline: the group mean, or with `leave_one_out` the mean of the *other* members
      (RLOO; equals n/(n-1) times the mean-baseline advantage);
    - `normalize_std`: divided by (population std of the group's rewards + eps);
    - a member whose reward is None (errored, or a partial score) gets 0.0 and is left out of the
      baseline and the std: an infrastructure failure must not pull the others' advantages;
    - a group with fewer than two scored members has nothing to compare with: all 0.0.
    """
    scored = [r for r in rewards if r is not None]
    for r in scored:
        if not math.isfinite(r):
            raise ValueError(f"group rewards must be finite, got {r}")
    n = len(scored)
    if n < 2 or min(scored) == max(scored):  # exact zeros, not rounding noise scaled by 1/eps
        return [0.0] * len(rewards)
    mean = math.fsum(scored) / n
    scale = 1.0
    if normalize_std:
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in scored) / n)
        scale = 1.0 / (std + eps)
    if leave_one_out:
        scale *= n / (n - 1)
    return [0.0 if r is None else (r - mean) * scale for r in rewards]
