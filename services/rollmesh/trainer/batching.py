"""Trajectory protos -> token sequences -> micro-batches packed by tokens, per rank (pure: no model,
no transport).

A trajectory's turns form one sequence while each turn's prompt starts with the previous turn's
prompt + completion (the orchestrator keeps that prefix property: tokens come straight from
inference, never re-tokenised); the tokens in between (environment responses) are context, not
trained. Where the property breaks, a new sequence starts, so nothing is trained on tokens the
model never saw.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from ..proto.v1 import trajectory_pb2 as traj_pb

SAMPLE_WEIGHT_METRIC = "sample_weight"
# Sampler logprobs the loss may divide by: log-softmax is <= 0 (a rounding error above it is let
# through), and a sampled token is never e^-80 unlikely. The floor keeps the importance ratio
# exp(logprob - old) <= e^80 finite in float32, so one forged value cannot make the step's
# gradients NaN.
LOGPROB_CEIL = 1e-5
LOGPROB_FLOOR = -80.0


class InvalidTrajectory(ValueError):
    """A trajectory that cannot be trained on; `reason` is a stable code for metrics and dead letters."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Sample:
    """One token sequence to train on. Per-token lists are aligned with `tokens`; position 0 is
    never trained (nothing predicts it)."""

    trajectory_id: str
    tokens: list[int]
    mask: list[int]
    old_logprobs: list[float]
    advantage: float
    weight: float = 1.0
    temperature: float = 1.0
    policy_version: int = 0
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(self.mask[1:])

    def __len__(self) -> int:
        return len(self.tokens)


def sampling_temperature(traj: traj_pb.Trajectory) -> float:
    """The temperature the inference logprobs were computed at (greedy and unset: 1.0)."""
    sampling = traj.provenance.sampling
    if sampling.HasField("temperature") and sampling.temperature > 0:
        return float(sampling.temperature)
    return 1.0


def _check_turn(traj_id: str, i: int, turn: traj_pb.Turn, need_logprobs: bool, vocab_size: int | None) -> list[int]:
    n = len(turn.completion_ids)
    mask = list(turn.completion_mask) or [1] * n
    if len(mask) != n:
        raise InvalidTrajectory(
            f"trajectory {traj_id} turn {i}: completion_mask has {len(mask)} entries for {n} completion tokens",
            "MASK_LENGTH_MISMATCH",
        )
    if need_logprobs and len(turn.completion_logprobs) != n:
        raise InvalidTrajectory(
            f"trajectory {traj_id} turn {i}: {len(turn.completion_logprobs)} completion_logprobs for {n} "
            "completion tokens; RL needs the sampler's logprob of every token (sample with logprobs=true)",
            "LOGPROBS_MISSING" if not turn.completion_logprobs else "LOGPROBS_LENGTH_MISMATCH",
        )
    if any(m not in (0, 1) for m in mask):
        raise InvalidTrajectory(
            f"trajectory {traj_id} turn {i}: completion_mask holds values other than 0/1", "BAD_MASK"
        )
    for ids in (turn.prompt_ids, turn.completion_ids):
        if ids and min(ids) < 0:
            raise InvalidTrajectory(f"trajectory {traj_id} turn {i}: negative token id", "BAD_TOKEN_ID")
        # an id past the embedding would index out of range: a crash of the step (on a GPU, of the process)
        if ids and vocab_size is not None and max(ids) >= vocab_size:
            raise InvalidTrajectory(
                f"trajectory {traj_id} turn {i}: token id {max(ids)} is outside the model's vocabulary of "
                f"{vocab_size} (were the rollouts sampled from another model?)",
                "BAD_TOKEN_ID",
            )
    if need_logprobs:
        bad = next((lp for lp in turn.completion_logprobs if not LOGPROB_FLOOR <= lp <= LOGPROB_CEIL), None)
        if bad is not None:  # NaN fails both comparisons
            raise InvalidTrajectory(
                f"trajectory {traj_id} turn {i}: completion logprob {bad:g} is not a log-probability of a sampled "
                f"token (finite, in [{LOGPROB_FLOOR:g}, 0])",
                "BAD_LOGPROB",
            )
    return mask


def trajectory_samples(
    traj: traj_pb.Trajectory,
    *,
    need_logprobs: bool = True,
    max_seq_len: int = 4096,
    temperature: float | None = None,
    vocab_size: int | None = None,
) -> list[Sample]:
    """The sequences of one trajectory (one per run of prefix-consistent turns). Raises
    InvalidTrajectory for a malformed one (lengths, mask, token ids outside [0, vocab_size),
    logprobs that are no sampler's). Errored trajectories are the caller's to skip."""
    tid = traj.trajectory_id
    if traj.provenance.text_only:
        raise InvalidTrajectory(
            f"trajectory {tid} is text only: its model ({traj.provenance.model or 'unnamed'}) gave no token ids "
            "(an OpenAI-compatible endpoint), so there is nothing the policy sampled to train on; evaluate such "
            "models, train a model served by the hf or vllm backend",
            "TEXT_ONLY",
        )
    if not traj.turns:
        raise InvalidTrajectory(f"trajectory {tid} has no turns", "NO_TURNS")
    weight = traj.metrics.get(SAMPLE_WEIGHT_METRIC, 1.0)
    if not weight >= 0.0:  # also catches NaN
        raise InvalidTrajectory(f"trajectory {tid}: sample_weight {weight} must be >= 0", "BAD_SAMPLE_WEIGHT")
    temp = temperature if temperature is not None else sampling_temperature(traj)
    samples: list[Sample] = []
    current: Sample | None = None
    for i, turn in enumerate(traj.turns):
        mask = _check_turn(tid, i, turn, need_logprobs, vocab_size)
        logprobs = list(turn.completion_logprobs) if need_logprobs else [0.0] * len(mask)
        prompt = list(turn.prompt_ids)
        if current is not None and prompt[: len(current.tokens)] == current.tokens:
            gap = prompt[len(current.tokens) :]  # the environment's answer, in the sampler's tokens
            current.tokens += gap
            current.mask += [0] * len(gap)
            current.old_logprobs += [0.0] * len(gap)
            current.policy_version = min(current.policy_version, turn.policy_version)
        else:
            if not prompt:
                raise InvalidTrajectory(f"trajectory {tid} turn {i}: empty prompt_ids", "EMPTY_PROMPT")
            current = Sample(
                trajectory_id=tid,
                tokens=prompt,
                mask=[0] * len(prompt),
                old_logprobs=[0.0] * len(prompt),
                advantage=float(traj.advantage),
                weight=float(weight),
                temperature=temp,
                policy_version=int(turn.policy_version),
            )
            samples.append(current)
        current.tokens += list(turn.completion_ids)
        current.mask += mask
        current.old_logprobs += logprobs
    for s in samples:
        if len(s.tokens) > max_seq_len:
            del s.tokens[max_seq_len:], s.mask[max_seq_len:], s.old_logprobs[max_seq_len:]
            s.truncated = True
    kept = [s for s in samples if s.trained_tokens > 0]
    if not kept:
        raise InvalidTrajectory(f"trajectory {tid} has no trainable completion tokens", "NOTHING_TO_TRAIN")
    return kept


# ---- packing ---------------------------------------------------------------------------------


@dataclass
class MicroBatch:
    """Right-padded rows; the per-token tensors cover positions 1..L-1 (the predicted tokens)."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    mask: torch.Tensor  # [B, L-1] float: 1 = trained token
    old_logprobs: torch.Tensor  # [B, L-1] float
    advantages: torch.Tensor  # [B] float
    weights: torch.Tensor  # [B, L-1] float: normalisation x sample weight
    temperature: torch.Tensor  # [B] float
    trajectory_ids: list[str] = field(default_factory=list)
    # [B] float: 1 = sampled by the weights being trained (no policy lag), so its logprob gap to the
    # trainer is the sampler's alone; None = unknown
    on_policy: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]


@dataclass
class StepPlan:
    """Every rank's micro-batches for one optimizer step. Ranks hold the same number of
    micro-batches (None = an empty one, run as a zero-loss pass) so that ZeRO's per-backward
    collectives line up."""

    ranks: list[list[MicroBatch | None]]
    trained_tokens: int
    total_tokens: int
    sequences: int

    @property
    def micro_batches(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0


def token_weights(samples: Seq[Sample], normalization: str, norm_len: int) -> list[float]:
    """Per-sample weight of each trained token, so that sum(weight x token loss) over the step is
    the normalised loss: "token" 1/T (T = trained tokens of the step), "sequence" 1/(n_i N),
    "constant" 1/(norm_len N); times the sample weight."""
    counts = [s.trained_tokens for s in samples]
    n_seq = sum(1 for c in counts if c > 0)
    total = sum(counts)
    out = []
    for s, c in zip(samples, counts, strict=True):
        if not c:
            out.append(0.0)
        elif normalization == "token":
            out.append(s.weight / total)
        elif normalization == "sequence":
            out.append(s.weight / (c * n_seq))
        elif normalization == "constant":
            out.append(s.weight / (norm_len * n_seq))
        else:
            raise ValueError(f"unknown loss normalization {normalization!r}")
    return out


def _collate(items: Seq[tuple[Sample, float]], pad_id: int, version: int | None = None) -> MicroBatch:
    width = max(len(s) for s, _ in items)
    b = len(items)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width - 1), dtype=torch.float32)
    old = torch.zeros((b, width - 1), dtype=torch.float32)
    weights = torch.zeros((b, width - 1), dtype=torch.float32)
    for r, (s, w) in enumerate(items):
        n = len(s)
        input_ids[r, :n] = torch.tensor(s.tokens, dtype=torch.long)
        attention[r, :n] = 1
        mask[r, : n - 1] = torch.tensor(s.mask[1:], dtype=torch.float32)
        old[r, : n - 1] = torch.tensor(s.old_logprobs[1:], dtype=torch.float32)
        weights[r, : n - 1] = w
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention,
        mask=mask,
        old_logprobs=old,
        advantages=torch.tensor([s.advantage for s, _ in items], dtype=torch.float32),
        weights=weights * mask,
        temperature=torch.tensor([s.temperature for s, _ in items], dtype=torch.float32),
        trajectory_ids=[s.trajectory_id for s, _ in items],
        on_policy=None if version is None else torch.tensor([float(s.policy_version == version) for s, _ in items]),
    )


def plan_step(
    samples: Seq[Sample],
    *,
    world_size: int = 1,
    max_tokens_per_micro_batch: int = 8192,
    normalization: str = "token",
    norm_len: int = 4096,
    pad_id: int = 0,
    version: int | None = None,
) -> StepPlan:
    """Spread the step's sequences over ranks (longest first, to the rank with the fewest tokens)
    and pack each rank's into micro-batches of at most `max_tokens_per_micro_batch` padded tokens
    (rows x longest row). Sequences must already fit the budget. `version`: the policy version of
    the weights the step trains (marks each row's `on_policy`)."""
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    too_long = [len(s) for s in samples if len(s) > max_tokens_per_micro_batch]
    if too_long:
        raise ValueError(f"sequence of {too_long[0]} tokens exceeds max_tokens_per_micro_batch")
    weights = token_weights(samples, normalization, norm_len)
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
    per_rank: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        per_rank[r].append(i)
        load[r] += len(samples[i])
    ranks: list[list[MicroBatch | None]] = []
    for idxs in per_rank:  # already longest first
        groups: list[list[int]] = []
        for i in idxs:
            g = groups[-1] if groups else None
            if g is not None and (len(g) + 1) * len(samples[g[0]]) <= max_tokens_per_micro_batch:
                g.append(i)
            else:
                groups.append([i])
        ranks.append([_collate([(samples[i], weights[i]) for i in g], pad_id, version) for g in groups])
    depth = max(len(r) for r in ranks)
    for r in ranks:
        r.extend([None] * (depth - len(r)))
    return StepPlan(
        ranks=ranks,
        trained_tokens=sum(s.trained_tokens for s in samples),
        total_tokens=sum(len(s) for s in samples),
        sequences=len(samples),
    )
