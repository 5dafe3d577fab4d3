"""Configuration of the trainer: a TOML file (see deploy/trainer.example.toml)
validated by these section models. Every field has a default that works on one CPU or GPU, so a
run normally only names the run id and the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import NatsUrl, Section, TlsSection, load_config, read_toml
from ..errors import InvalidArgumentError

RUN_ID_PATTERN = r"^[A-Za-z0-9_\-=]+$"  # a NATS subject token


class LossConfig(Section):
    kind: Literal["grpo", "sft"] = "grpo"
    """The objective. "grpo": token-level clipped importance ratio against the inference logprobs
    (GRPO/DAPO family); "sft": negative log-likelihood of the completion tokens (exported trajectories, distillation).
    """
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    """The ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's asymmetric "clip higher")."""
    clip_high: float = Field(0.28, ge=0.0)
    """Upper clip of the ratio, see clip_low."""
    dual_clip: float | None = Field(None, gt=1.0)
    """Dual clip: for negative advantages the loss is capped at -advantage * dual_clip (None = off)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """KL to the reference model (k3 estimator); 0 = no reference model is loaded."""
    normalization: Literal["token", "sequence", "constant"] = "token"
    """How token losses are averaged: "token" = over every trained token of the step (DAPO), "sequence" = per sequence,
    then over sequences (GRPO), "constant" = sum per sequence divided by batch.max_seq_len, then over sequences (Dr.
    GRPO).
    """
    temperature: float | None = Field(None, gt=0.0)
    """Logprobs are recomputed at the sampling temperature (the inference logprobs are temperature scaled). None = each
    trajectory's provenance.sampling.temperature (1.0 when unset or greedy).
    """
    mask_log_ratio: float = Field(2.0, ge=0.0)
    """Mismatch guard: a token whose trainer logprob and inference logprob differ by more than this (a ratio outside
    [e^-2, e^2] = [0.14, 7.4] at 2.0) is left out of the loss, counted in metrics.jsonl (mismatch_masked_tokens,
    mismatch_masked_fraction). Such a gap is a sampler the trainer cannot reproduce or a stale policy, and one token
    with a huge ratio and a negative advantage would dominate the step. 0 = off.
    """
    tis_cap: float = Field(0.0, ge=0.0)
    """Truncated importance sampling: the clipped ratio is taken against the trainer's own logprobs and each token's
    policy-gradient term is weighted by min(exp(trainer logprob - inference logprob), tis_cap), e.g. 2.0. 0 = off:
    the clipped ratio is taken against the inference logprobs, which already corrects for the sampler (one optimizer
    step per batch).
    """


class BatchConfig(Section):
    rollouts_per_step: int = Field(16, ge=1)
    """Trainable trajectories per optimizer step (errored and invalid ones are skipped and counted)."""
    max_tokens_per_micro_batch: int = Field(8192, ge=16)
    """Token budget of one micro-batch (rows x padded length), per rank."""
    max_seq_len: int = Field(4096, ge=2)
    """Longer sequences are cut to this many tokens (counted in the metrics)."""
    skip_zero_advantage: bool = False
    """Skip trajectories whose advantage is exactly 0 (a group with equal rewards teaches nothing)."""
    max_policy_lag: int = Field(0, ge=0)
    """Skip samples more than this many policy versions behind the trainer (0 = keep all; the orchestrator's
    max_off_policy_steps already bounds staleness at sampling time).
    """
    max_abs_advantage: float = Field(100.0, gt=0)
    """GRPO: rollouts whose advantage is larger in absolute value are refused (dead-lettered, counted as invalid).
    Group-relative advantages never exceed the group's reward range (with std normalisation, about the square root of
    the group size), so only a reward scale far beyond the usual reaches it; raise it for such rewards.
    """
    group_size: int = Field(0, ge=0)
    """Rollouts per group (the orchestrator's rollouts_per_task), for the group check (check_group_advantages): once
    every member of a group has arrived, their advantages must be exactly group_advantages of their rewards, and a
    group with more members is refused. 0 = unknown: only what holds for part of a group is checked.
    """
    check_group_advantages: bool = True
    """GRPO: refuse a group (every member with its group_id: dead-lettered, never trained) whose advantages cannot come
    from its rewards: members the rubric left out (metrics rubric/partial or rubric/skipped) must have advantage 0,
    the others' advantages must be (reward - baseline) x scale for one baseline and one scale > 0, and with
    group_size, a whole group must match rollmesh.advantages.group_advantages under one of its settings. Groups are
    remembered across steps. Off for advantages of one's own making (max_abs_advantage still holds).
    """


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 (plain data parallel) to 3 (parameters sharded too)."""
    offload_optimizer: bool = False
    """Optimizer states in CPU memory (ZeRO 1-3)."""
    offload_params: bool = False
    """Parameters in CPU memory (ZeRO-3 only)."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Training dtype; "auto" = bf16 on a GPU that supports it, else fp32."""
    grad_clip: float = Field(1.0, ge=0.0)
    """0 = no clipping."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Raw DeepSpeed config merged over the generated one (last word: any DeepSpeed key). Gradient
    accumulation is automatic: a step's rollouts are packed into micro-batches of at most
    batch.max_tokens_per_micro_batch tokens whose gradients add up to one optimizer step."""


class CheckpointConfig(Section):
    dir: str = "checkpoints"
    """Checkpoint directory, shared by every rank."""
    every_n_steps: int = Field(10, ge=1)
    """Steps between checkpoints (the bus acknowledgements happen there)."""
    keep: int = Field(3, ge=1)
    """Complete checkpoints kept; older ones are deleted."""
    export_hf: bool = True
    """A Hugging Face directory (model + tokenizer) inside each checkpoint, loadable by any server."""
    resume: bool = True
    """Resume from the newest complete checkpoint in `dir` when there is one."""


class PushConfig(Section):
    enabled: bool = True
    """Push new weights to inference servers."""
    discover: bool = True
    """Discover inference servers in the NATS registry (kind inference) before each push."""
    model: str = ""
    """Only servers registered under this model name ("" = every inference server)."""
    addresses: list[str] = Field(default_factory=list)
    """Static addresses pushed to in addition to the discovered ones."""
    mode: Literal["stream", "path"] = "stream"
    """How weights travel. "stream": UpdateWeights over gRPC; "path": LoadWeights of the checkpoint's HF
    export (servers must see the same file system; pushes only at checkpoints then)."""
    same_host: Literal["auto", "always", "never"] = "auto"
    """With mode = "stream": hand the weights over in shared memory (a memfd, Linux; read in place by the server,
    freed even if the trainer dies) instead of streaming them. "auto": to servers at a loopback address, falling
    back to the stream where the server cannot read it (another user or container); "always": to every server
    (a failure is a failed push); "never": always stream."""
    every_n_steps: int = Field(1, ge=1)
    """Steps between pushes."""
    timeout_s: float = Field(600.0, gt=0)
    """Bound of one push to one server."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Tensor dtype on the wire ("auto" = the trained parameters' dtype)."""


class TrainerConfig(Section):
    run_id: str = Field(min_length=1, pattern=RUN_ID_PATTERN)
    """The run whose rollouts are trained (rollmesh.rollouts.<run_id>.>)."""
    model: str = Field(min_length=1)
    """A local Hugging Face directory (the tiny model: `rollmesh model tiny --out DIR`)."""
    tokenizer: str = ""
    """Tokenizer directory ("" = the model directory)."""
    ref_model: str = ""
    """Reference model for the KL term ("" = the initial policy, `model`)."""
    nats_url: NatsUrl = ""
    """NATS URL of the bus, or the URLs of a cluster's servers (comma-separated, or a list); "" = ROLLMESH_NATS_URL,
    else nats://127.0.0.1:4222."""
    source: Literal["bus", "files"] = "bus"
    """Where rollouts come from: "bus" = the run's JetStream subjects; "files" = JSONL files of Trajectory protos in
    JSON (exported trajectories, one per line), read once.
    """
    files: list[str] = Field(default_factory=list)
    """With source = "files": the JSONL files to read."""
    durable: str = ""
    """Durable consumer name ("" = trainer-<run_id>)."""
    ack_wait_s: float = Field(3600.0, gt=0)
    """Seconds a delivered rollout may stay un-acknowledged before JetStream redelivers it; the trainer acknowledges at
    checkpoints, so this must exceed the time between checkpoints.
    """

    lr: float = Field(1e-6, gt=0)
    """Learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warm-up, in steps."""
    max_steps: int = Field(0, ge=0)
    """0 = until stopped."""
    seed: int = 0
    """Seed of torch and of the batching order."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""
    distributed_timeout_s: float = Field(1800.0, gt=0)
    """Several ranks: how long a collective waits for a rank that neither answers nor closes its connection
    (a host cut off the network) before this rank stops with an error. A rank that dies is noticed at once.
    Ranks > 0 wait in a collective while rank 0 waits for rollouts, so keep it above the longest wait for a batch.
    """

    loss: LossConfig = Field(default_factory=LossConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    tls: TlsSection = Field(default_factory=TlsSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    metrics_path: str = ""
    """One JSON object per step ("" = <checkpoint.dir>/metrics.jsonl)."""

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.source == "files" and not self.files:
            raise ValueError("source = 'files' needs files = [...] (JSONL of Trajectory JSON)")
        if self.deepspeed.offload_params and self.deepspeed.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage = 3")
        if self.batch.max_seq_len > self.batch.max_tokens_per_micro_batch:
            raise ValueError("batch.max_seq_len must not exceed batch.max_tokens_per_micro_batch")
        return self

    @property
    def durable_name(self) -> str:
        return self.durable or f"trainer-{self.run_id}"

    @property
    def metrics_file(self) -> Path:
        return Path(self.metrics_path) if self.metrics_path else Path(self.checkpoint.dir) / "metrics.jsonl"

    @property
    def bus_url(self) -> str:
        return self.nats_url or os.environ.get("ROLLMESH_NATS_URL", "") or "nats://127.0.0.1:4222"


def load_trainer_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainerConfig:
    """The TOML file (top-level keys, or a [trainer] table of a whole-run file) with `key.path=value`
    overrides (a leading "trainer." is optional)."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path)
        data = raw["trainer"] if isinstance(raw.get("trainer"), dict) else raw
    try:
        return load_config(TrainerConfig, None, [o.removeprefix("trainer.") for o in overrides], defaults=data)
    except InvalidArgumentError as e:
        where = f"{path}: " if path is not None else ""
        raise InvalidArgumentError(f"{where}{e}", reason="BAD_CONFIG") from e


__all__ = [
    "BatchConfig",
    "CheckpointConfig",
    "DeepSpeedSection",
    "LossConfig",
    "PushConfig",
    "TrainerConfig",
    "load_trainer_config",
]
