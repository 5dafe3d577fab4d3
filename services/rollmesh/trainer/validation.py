"""What the trainer checks of a rollout before it enters a batch, beyond its shape (batching.py):
advantages that are finite and bounded, and groups whose advantages can come from their rewards.

Anyone who can publish on the run's rollouts subjects can put a trajectory there. The trainer
cannot re-score a rollout, but the advantages must be the group's rewards against their baseline
(rollmesh.advantages.group_advantages), which leaves a forger little: a bounded advantage, and
members that agree with the rest of their group. The group check works on what has arrived:
- always, any part of a group: members left out of the baseline (the rubric's rubric/partial or
  rubric/skipped) have advantage 0, the others (reward - baseline) x scale with one baseline and
  one scale > 0, whatever the settings were (the producer's, not known here);
- once a group is complete (batch.group_size members, none errored or refused): exactly
  group_advantages of its rewards under one of its settings (they sum to 0 over scored members).
A check rather than a recomputation: recomputing needs the producer's settings and the whole
group in one step, and would silently train on advantages that nobody computed.

Groups are remembered across steps (a bounded number, in memory), so a member that arrives a step
after the rest is checked against them, and once a group is refused, so are its later members.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..advantages import PARTIAL_METRIC, SKIPPED_METRIC, advantage_mismatch
from ..errors import quoted
from ..proto.v1 import trajectory_pb2 as traj_pb
from .batching import InvalidTrajectory

MAX_GROUPS = 20_000


def check_advantage(traj: traj_pb.Trajectory, max_abs: float) -> None:
    """InvalidTrajectory for an advantage out of [-max_abs, max_abs]."""
    if not abs(traj.advantage) <= max_abs:
        raise InvalidTrajectory(
            f"trajectory {traj.trajectory_id}: advantage {traj.advantage:g} is outside [-{max_abs:g}, {max_abs:g}] "
            "(batch.max_abs_advantage)",
            "ADVANTAGE_OUT_OF_RANGE",
        )


def baseline_reward(traj: traj_pb.Trajectory) -> float | None:
    """The reward the group's baseline used; None for a member it left out (scored in part)."""
    metrics = traj.metrics
    if metrics.get(PARTIAL_METRIC, 0.0) > 0 or metrics.get(SKIPPED_METRIC, 0.0) > 0:
        return None
    return traj.reward


@dataclass
class Group:
    scored: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # id -> (reward, advantage)
    unusable: set[str] = field(default_factory=set)  # errored or refused members: their numbers mean nothing
    refused: str = ""  # why, once the group is refused


class GroupLedger:
    """The members seen of the most recent groups, by group id."""

    def __init__(self, group_size: int = 0, max_groups: int = MAX_GROUPS) -> None:
        self.group_size = group_size
        self.max_groups = max_groups
        self._groups: OrderedDict[str, Group] = OrderedDict()

    def _group(self, group_id: str) -> Group:
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = Group()
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        self._groups.move_to_end(group_id)
        return group

    def refused(self, group_id: str) -> str:
        group = self._groups.get(group_id)
        return group.refused if group is not None else ""

    def seen(self, group_id: str, trajectory_id: str) -> bool:
        group = self._groups.get(group_id)
        return group is not None and (trajectory_id in group.scored or trajectory_id in group.unusable)

    def problem(self, group_id: str, members: Mapping[str, tuple[float | None, float]], unusable: int = 0) -> str:
        """Why the group, with `members` added (and `unusable` more errored or refused ones), cannot be
        right ("" = it can). Records nothing."""
        known = self._groups.get(group_id) or Group()
        if known.refused:
            return known.refused
        scored = {**known.scored, **members}
        total = len(scored) + len(known.unusable) + unusable
        if self.group_size and total > self.group_size:
            return f"{total} members, more than batch.group_size = {self.group_size}"
        complete = bool(self.group_size) and len(scored) == self.group_size
        rewards = [r for r, _ in scored.values()]
        why = advantage_mismatch(rewards, [a for _, a in scored.values()], complete=complete)
        return why or ""

    def record(self, group_id: str, members: Mapping[str, tuple[float | None, float]], unusable: set[str]) -> None:
        group = self._group(group_id)
        group.scored.update(members)
        group.unusable |= unusable

    def refuse(self, group_id: str, why: str) -> None:
        self._group(group_id).refused = why


def describe(group_id: str, why: str) -> str:
    return f"group {quoted(group_id)}: {why}"


def finite(traj: traj_pb.Trajectory) -> bool:
    return math.isfinite(traj.advantage) and math.isfinite(traj.reward)
