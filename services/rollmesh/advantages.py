"""Group-relative advantages (GRPO family): each rollout's reward against the other rollouts of the
same task, so the trainer needs no value model."""

from __future__ import annotations

import math
from collections.abc import Sequence

# RewardResult metrics (hence Trajectory.metrics) of a member scored only in part, or not at all:
# group_advantages leaves it out (reward None), so its advantage is 0.
PARTIAL_METRIC = "rubric/partial"
SKIPPED_METRIC = "rubric/skipped"


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


# Every (normalize_std, leave_one_out) group_advantages knows; producers pick one per rubric or run.
SETTINGS = ((False, False), (True, False), (False, True), (True, True))


def advantage_mismatch(
    rewards: Sequence[float | None], advantages: Sequence[float], *, complete: bool, rel_tol: float = 1e-6
) -> str | None:
    """Why `advantages` cannot be what group_advantages gave for `rewards` (None: they can be).

    `complete`: these are all the group's members, so the advantages must equal group_advantages of
    the rewards under one of SETTINGS. Otherwise (members missing) only what holds for any part of a
    group is checked: a member left out (reward None) has advantage 0, and the others' advantages
    are one increasing affine function of their rewards, (reward - baseline) x scale with scale > 0
    (every setting has that form: leave-one-out and std only change the scale).
    """
    if len(rewards) != len(advantages):
        raise ValueError(f"{len(rewards)} rewards for {len(advantages)} advantages")
    if not all(math.isfinite(a) for a in advantages) or not all(r is None or math.isfinite(r) for r in rewards):
        return "a reward or advantage is not a finite number"
    left_out = [a for r, a in zip(rewards, advantages, strict=True) if r is None and a != 0.0]
    if left_out:
        return f"a member left out of the baseline (errored or scored in part) has advantage {left_out[0]:g}, not 0"
    tol = rel_tol * max(1.0, *(abs(a) for a in advantages)) if advantages else rel_tol
    if complete:
        for normalize_std, leave_one_out in SETTINGS:
            expected = group_advantages(rewards, normalize_std=normalize_std, leave_one_out=leave_one_out)
            if all(abs(e - a) <= tol for e, a in zip(expected, advantages, strict=True)):
                return None
        return "the advantages are not the group's rewards against their baseline (group_advantages, any settings)"
    scored = sorted((r, a) for r, a in zip(rewards, advantages, strict=True) if r is not None)
    if len(scored) < 2:
        return None
    (r_lo, a_lo), (r_hi, a_hi) = scored[0], scored[-1]
    if r_hi == r_lo:
        if a_hi - a_lo > tol:
            return "members with the same reward have different advantages"
        return None
    scale = (a_hi - a_lo) / (r_hi - r_lo)
    if not scale > 0:
        return "a higher reward has a lower or equal advantage"
    tol = max(tol, rel_tol * scale * max(abs(r_lo), abs(r_hi)))  # rounding of (reward - mean) x scale
    for r, a in scored:
        if abs(a_lo + scale * (r - r_lo) - a) > tol:
            return "the advantages are not one affine function of the rewards (reward - baseline) x scale"
    return None
