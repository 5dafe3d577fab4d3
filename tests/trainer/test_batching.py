"""Trajectory protos -> sequences -> micro-batches: multi-turn merging, bad input, packing by tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.batching import InvalidTrajectory, plan_step, trajectory_samples  # noqa: E402


def turn(prompt, completion, logprobs=None, mask=None, version=0):
    return traj_pb.Turn(
        prompt_ids=prompt,
        completion_ids=completion,
        completion_logprobs=logprobs if logprobs is not None else [-0.5] * len(completion),
        completion_mask=mask or [],
        policy_version=version,
    )


def traj(*turns, tid="t1", advantage=1.0, **kw):
    return traj_pb.Trajectory(trajectory_id=tid, turns=list(turns), advantage=advantage, **kw)


def test_multi_turn_with_prefix_property_is_one_sequence() -> None:
    t = traj(
        turn([1, 2], [3, 4], [-0.1, -0.2], version=3),
        # prompt = previous prompt + completion + the environment's answer [9, 9]
        turn([1, 2, 3, 4, 9, 9], [5], [-0.3], version=2),
    )
    (s,) = trajectory_samples(t)
    assert s.tokens == [1, 2, 3, 4, 9, 9, 5]
    assert s.mask == [0, 0, 1, 1, 0, 0, 1]
    assert s.old_logprobs == pytest.approx([0, 0, -0.1, -0.2, 0, 0, -0.3])
    assert s.policy_version == 2  # the oldest policy that sampled any of it
    assert s.trained_tokens == 3


def test_broken_prefix_starts_a_new_sequence() -> None:
    t = traj(turn([1, 2], [3]), turn([1, 7, 3], [5, 6], mask=[1, 0]))
    a, b = trajectory_samples(t)
    assert (a.tokens, a.mask) == ([1, 2, 3], [0, 0, 1])
    assert (b.tokens, b.mask) == ([1, 7, 3, 5, 6], [0, 0, 0, 1, 0])


def test_temperature_and_sample_weight_come_from_the_trajectory() -> None:
    t = traj(turn([1], [2]))
    t.provenance.sampling.temperature = 0.7
    t.metrics["sample_weight"] = 0.25
    (s,) = trajectory_samples(t)
    assert s.temperature == pytest.approx(0.7) and s.weight == 0.25
    t.provenance.sampling.temperature = 0.0  # greedy: logprobs of the untempered distribution
    assert trajectory_samples(t)[0].temperature == 1.0
    assert trajectory_samples(t, temperature=2.0)[0].temperature == 2.0


@pytest.mark.parametrize(
    ("t", "reason"),
    [
        (traj(), "NO_TURNS"),
        (traj(turn([1], [2, 3], logprobs=[])), "LOGPROBS_MISSING"),
        (traj(turn([1], [2, 3], logprobs=[-1.0])), "LOGPROBS_LENGTH_MISMATCH"),
        (traj(turn([1], [2, 3], mask=[1])), "MASK_LENGTH_MISMATCH"),
        (traj(turn([1], [2], mask=[2])), "BAD_MASK"),
        (traj(turn([], [2])), "EMPTY_PROMPT"),
        (traj(turn([1], [2], mask=[0])), "NOTHING_TO_TRAIN"),
        (traj(turn([1], [])), "NOTHING_TO_TRAIN"),
        (traj(turn([1], [-2])), "BAD_TOKEN_ID"),
    ],
)
def test_malformed_trajectories_are_refused_with_a_reason(t, reason) -> None:
    with pytest.raises(InvalidTrajectory) as e:
        trajectory_samples(t)
    assert e.value.reason == reason


def test_sft_needs_no_logprobs_and_long_sequences_are_cut() -> None:
    (s,) = trajectory_samples(traj(turn([1, 2], [3, 4, 5], logprobs=[])), need_logprobs=False, max_seq_len=4)
    assert s.tokens == [1, 2, 3, 4] and s.truncated and s.trained_tokens == 2


def test_micro_batch_alignment_targets_and_weights() -> None:
    (s,) = trajectory_samples(traj(turn([1, 2], [3, 4], [-0.1, -0.2]), advantage=-1.5))
    plan = plan_step([s], pad_id=0)
    (mb,) = plan.ranks[0]
    assert mb.input_ids.tolist() == [[1, 2, 3, 4]]
    assert mb.targets.tolist() == [[2, 3, 4]]
    assert mb.mask.tolist() == [[0, 1, 1]]  # position i predicts token i + 1
    assert mb.old_logprobs[0].tolist() == pytest.approx([0, -0.1, -0.2])
    assert mb.weights[0].tolist() == pytest.approx([0, 0.5, 0.5])  # token normalisation over 2 tokens
    assert mb.advantages.tolist() == [-1.5]
    assert plan.trained_tokens == 2 and plan.total_tokens == 4


def test_packing_respects_the_token_budget_and_balances_ranks() -> None:
    lengths = [30, 5, 12, 12, 7, 3, 20, 9]
    samples = []
    for i, n in enumerate(lengths):
        samples += trajectory_samples(traj(turn([1] * (n - 1), [2]), tid=f"t{i}"))
    plan = plan_step(samples, world_size=2, max_tokens_per_micro_batch=32, pad_id=0)
    assert len(plan.ranks) == 2
    assert len(plan.ranks[0]) == len(plan.ranks[1])  # same depth: collectives line up
    seen = []
    for rank in plan.ranks:
        for mb in rank:
            if mb is None:
                continue
            assert mb.input_ids.numel() <= 32
            seen += mb.trajectory_ids
    assert sorted(seen) == sorted(f"t{i}" for i in range(len(lengths)))
    per_rank = [sum(mb.tokens for mb in r if mb is not None) for r in plan.ranks]
    assert abs(per_rank[0] - per_rank[1]) <= 30  # longest-first to the lighter rank
    total_weight = sum(float(mb.weights.sum()) for r in plan.ranks for mb in r if mb is not None)
    assert total_weight == pytest.approx(1.0)  # token normalisation over the whole step
    with pytest.raises(ValueError, match="exceeds"):
        plan_step(samples, max_tokens_per_micro_batch=16)


def test_more_ranks_than_sequences_get_empty_micro_batches() -> None:
    (s,) = trajectory_samples(traj(turn([1, 2], [3])))
    plan = plan_step([s], world_size=2)
    assert plan.ranks[0][0] is not None and plan.ranks[1] == [None]
