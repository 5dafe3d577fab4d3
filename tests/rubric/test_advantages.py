"""Group-relative advantages: mean baseline, leave-one-out, std normalisation, excluded members."""

from __future__ import annotations

import math

import pytest
from rollmesh.advantages import group_advantages


def test_mean_baseline() -> None:
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]


def test_leave_one_out_is_the_mean_of_the_others() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0]
    adv = group_advantages(rewards, leave_one_out=True)
    for i, r in enumerate(rewards):
        others = [x for j, x in enumerate(rewards) if j != i]
        assert adv[i] == pytest.approx(r - sum(others) / len(others))
    assert adv == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])


def test_std_normalisation() -> None:
    adv = group_advantages([3.0, 1.0], normalize_std=True)
    # mean 2, population std 1
    assert adv == pytest.approx([1.0, -1.0], rel=1e-5)
    # a constant group stays at 0 instead of dividing by zero
    assert group_advantages([0.7, 0.7, 0.7], normalize_std=True) == [0.0, 0.0, 0.0]
    loo = group_advantages([3.0, 1.0, 2.0], normalize_std=True, leave_one_out=True)
    std = math.sqrt(2 / 3)
    assert loo == pytest.approx([1.5 / std, -1.5 / std, 0.0], rel=1e-5)


def test_small_groups_are_zero() -> None:
    assert group_advantages([5.0]) == [0.0]
    assert group_advantages([]) == []
    assert group_advantages([5.0, None], leave_one_out=True) == [0.0, 0.0]


def test_excluded_members_get_zero_and_leave_the_baseline() -> None:
    assert group_advantages([1.0, None, 0.0]) == [0.5, 0.0, -0.5]
    assert group_advantages([1.0, None, 0.0, None], normalize_std=True) == pytest.approx(
        [1.0, 0.0, -1.0, 0.0], rel=1e-5
    )


def test_non_finite_rewards_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        group_advantages([1.0, float("nan")])
