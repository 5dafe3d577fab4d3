"""The trainer's checks of what it trains on, as pure functions: token ids within the vocabulary,
logprobs that a sampler can have given, bounded advantages, and group advantages that agree with
the group's rewards (rollmesh.advantages.advantage_mismatch, the GroupLedger across steps)."""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from rollmesh.advantages import SETTINGS, advantage_mismatch, group_advantages  # noqa: E402
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.batching import InvalidTrajectory, trajectory_samples  # noqa: E402
from rollmesh.trainer.validation import GroupLedger, baseline_reward, check_advantage  # noqa: E402


def traj(prompt, completion, logprobs=None, advantage=1.0, **kw) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id="t", advantage=advantage, **kw)
    t.turns.append(
        traj_pb.Turn(
            prompt_ids=prompt,
            completion_ids=completion,
            completion_logprobs=logprobs if logprobs is not None else [-0.5] * len(completion),
        )
    )
    return t


@pytest.mark.parametrize(
    ("t", "reason", "message"),
    [
        (traj([1, 2], [3, 512]), "BAD_TOKEN_ID", "token id 512 is outside the model's vocabulary of 512"),
        (traj([1, 70_000], [3]), "BAD_TOKEN_ID", "token id 70000"),
        (traj([1], [2, 3], [-0.5, 0.5]), "BAD_LOGPROB", "completion logprob 0.5"),
        (traj([1], [2], [math.nan]), "BAD_LOGPROB", "completion logprob nan"),
        (traj([1], [2], [-math.inf]), "BAD_LOGPROB", "completion logprob -inf"),
        (traj([1], [2], [-1e30]), "BAD_LOGPROB", r"completion logprob -1e\+30"),
    ],
)
def test_tokens_and_logprobs_outside_what_a_sampler_gives_are_refused(t, reason: str, message: str) -> None:
    with pytest.raises(InvalidTrajectory, match=message) as e:
        trajectory_samples(t, vocab_size=512)
    assert e.value.reason == reason


def test_valid_edges_pass() -> None:
    (s,) = trajectory_samples(traj([0, 511], [511, 0], [0.0, -79.0]), vocab_size=512)
    assert s.tokens == [0, 511, 511, 0]
    # SFT needs no logprobs: whatever is there is not looked at
    assert trajectory_samples(traj([1], [2], [5.0]), need_logprobs=False, vocab_size=512)


def test_advantages_are_bounded() -> None:
    check_advantage(traj([1], [2], advantage=-100.0), 100.0)
    for bad in (100.5, -1e6, math.nan, math.inf):
        with pytest.raises(InvalidTrajectory) as e:
            check_advantage(traj([1], [2], advantage=bad), 100.0)
        assert e.value.reason == "ADVANTAGE_OUT_OF_RANGE"


def test_members_scored_in_part_are_left_out_of_the_baseline() -> None:
    t = traj([1], [2], reward=3.0)
    assert baseline_reward(t) == 3.0
    t.metrics["rubric/partial"] = 1.0
    assert baseline_reward(t) is None


# ---- advantage_mismatch -------------------------------------------------------------------------

GROUPS = [[1.0, 0.0, 0.0, 1.0], [0.3, 0.9, 0.1, 0.5, 0.5], [2.0, -1.0], [5.0, 5.0, 5.0], [1000.0, 1000.5, 999.0]]


@pytest.mark.parametrize("rewards", GROUPS)
@pytest.mark.parametrize(("normalize_std", "leave_one_out"), SETTINGS)
def test_what_the_estimator_gives_passes_whole_and_in_part(rewards, normalize_std, leave_one_out) -> None:
    adv = group_advantages(rewards, normalize_std=normalize_std, leave_one_out=leave_one_out)
    assert advantage_mismatch(rewards, adv, complete=True) is None
    for k in range(1, len(rewards)):  # any part of the group (a member arrives later, or was dropped)
        for part in itertools.combinations(range(len(rewards)), k):
            assert advantage_mismatch([rewards[i] for i in part], [adv[i] for i in part], complete=False) is None


def test_members_left_out_have_zero_advantage() -> None:
    rewards = [1.0, None, 0.0]
    adv = group_advantages(rewards)
    assert advantage_mismatch(rewards, adv, complete=True) is None
    assert "left out of the baseline" in advantage_mismatch(rewards, [0.5, 0.3, -0.5], complete=False)


@pytest.mark.parametrize(
    ("rewards", "advantages", "complete", "expected"),
    [
        ([1.0, 0.0, 0.0], [0.5, -0.5, 5.0], False, "not one affine function"),  # a forged member
        ([1.0, 0.0], [3.0, 3.0], False, "higher reward has a lower or equal advantage"),
        ([1.0, 0.0], [-0.5, 0.5], False, "higher reward has a lower or equal advantage"),
        ([0.0, 0.0], [0.0, 50.0], False, "same reward have different advantages"),
        ([1.0, 0.0], [3.0, -1.0], True, "not the group's rewards against their baseline"),  # affine, but not zero-sum
        ([7.0], [1e6], True, "not the group's rewards against their baseline"),  # a group of one has nothing to beat
        ([1.0, math.nan], [0.5, -0.5], False, "not a finite number"),
    ],
)
def test_forged_advantages_are_found(rewards, advantages, complete: bool, expected: str) -> None:
    why = advantage_mismatch(rewards, advantages, complete=complete)
    assert why is not None and expected in why


# ---- the ledger: groups across steps ----------------------------------------------------------------


def test_a_late_member_is_checked_against_the_members_seen_before() -> None:
    ledger = GroupLedger(group_size=4)
    rewards = [1.0, 0.0, 0.0, 1.0]
    adv = group_advantages(rewards)
    first = {f"m{i}": (rewards[i], adv[i]) for i in range(2)}
    assert ledger.problem("g", first) == ""
    ledger.record("g", first, set())
    assert ledger.seen("g", "m0") and not ledger.seen("g", "m2")
    assert "not one affine function" in ledger.problem("g", {"forged": (0.0, 5.0)})
    # the rest of the group completes it: an exact match is needed now, and found
    assert ledger.problem("g", {f"m{i}": (rewards[i], adv[i]) for i in (2, 3)}) == ""
    # consistent with the others in part, but the whole group does not sum to its baseline
    assert "against their baseline" in ledger.problem("g", {"m2": (0.0, -0.5), "m3": (1.0, 1.5)})
    assert "more than batch.group_size = 4" in ledger.problem("g", {f"x{i}": (rewards[i], adv[i]) for i in range(3)})


def test_an_errored_member_leaves_only_the_checks_in_part() -> None:
    ledger = GroupLedger(group_size=2)
    assert ledger.problem("g", {"a": (1.0, 3.0)}, unusable=1) == ""  # 1 of 2 scored: not complete
    ledger.record("g", {"a": (1.0, 3.0)}, {"b"})
    assert "more than" in ledger.problem("g", {"c": (1.0, 3.0)})


def test_a_refused_group_stays_refused_and_old_groups_are_forgotten() -> None:
    ledger = GroupLedger(max_groups=2)
    ledger.refuse("bad", "forged")
    assert ledger.refused("bad") == "forged" and ledger.problem("bad", {"x": (0.0, 0.0)}) == "forged"
    ledger.record("g1", {"a": (1.0, 0.5)}, set())
    ledger.record("g2", {"a": (1.0, 0.5)}, set())
    assert ledger.refused("bad") == "" and ledger.seen("g2", "a")
