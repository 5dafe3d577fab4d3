"""Configuration of the trainer: a TOML file (see deploy/trainer.example.toml)
validated by these section models. Every field has a default that works on one CPU or GPU, so a
run normally only names the run id and the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import Section, load_config, read_toml
from ..errors import InvalidArgumentError

RUN_ID_PATTERN = r"^[A-Za-z0-9_\-=]+$"  # a NATS subject token


class LossConfig(Section):
    # "grpo": token-level clipped importance ratio against the inference logprobs (GRPO/DAPO family);
    # "sft": negative log-likelihood of the completion tokens (exported trajectories, distillation).
    kind: Literal["grpo", "sft"] = "grpo"
    # The ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's asymmetric "clip higher").
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    clip_high: float = Field(0.28, ge=0.0)
    # Dual clip: for negative advantages the loss is capped at -advantage * dual_clip (None = off).
    dual_clip: float | None = Field(None, gt=1.0)
    # KL to the reference model (k3 estimator); 0 = no reference model is loaded.
    kl_coef: float = Field(0.0, ge=0.0)
    # How token losses are averaged: "token" = over every trained token of the step (DAPO),
    # "sequence" = per sequence, then over sequences (GRPO), "constant" = sum per sequence divided
    # by batch.max_seq_len, then over sequences (Dr. GRPO).
    normalization: Literal["token", "sequence", "constant"] = "token"
    # Logprobs are recomputed at the sampling temperature (the inference logprobs are temperature
    # scaled). None = each trajectory's provenance.sampling.temperature (1.0 when unset or greedy).
    temperature: float | None = Field(None, gt=0.0)


class BatchConfig(Section):
    # Trainable trajectories per optimizer step (errored and invalid ones are skipped and counted).
    rollouts_per_step: int = Field(16, ge=1)
    # Token budget of one micro-batch (rows x padded length), per rank.
    max_tokens_per_micro_batch: int = Field(8192, ge=16)
    # Longer sequences are cut to this many tokens (counted in the metrics).
    max_seq_len: int = Field(4096, ge=2)
    # Skip trajectories whose advantage is exactly 0 (a group with equal rewards teaches nothing).
    skip_zero_advantage: bool = False
    # Skip samples more than this many policy versions behind the trainer (0 = keep all; the
    # orchestrator's max_off_policy_steps already bounds staleness at sampling time).
    max_policy_lag: int = Field(0, ge=0)


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # optimizer states in CPU memory (ZeRO 1-3)
    offload_params: bool = False  # parameters in CPU memory (ZeRO-3 only)
    # "auto": bf16 on a GPU that supports it, else fp32.
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    grad_clip: float = Field(1.0, ge=0.0)  # 0 = no clipping
    # Gradient accumulation is automatic: a step's rollouts are packed into micro-batches of at
    # most batch.max_tokens_per_micro_batch tokens whose gradients add up to one optimizer step.
    # Raw DeepSpeed config merged over the generated one (last word: any DeepSpeed key).
    config: dict[str, Any] = Field(default_factory=dict)


class CheckpointConfig(Section):
    dir: str = "checkpoints"
    every_n_steps: int = Field(10, ge=1)
    keep: int = Field(3, ge=1)
    # A Hugging Face directory (model + tokenizer) inside each checkpoint, loadable by any server.
    export_hf: bool = True
    # Resume from the newest complete checkpoint in `dir` when there is one.
    resume: bool = True


class PushConfig(Section):
    enabled: bool = True
    # Discover inference servers in the NATS registry (kind inference) before each push.
    discover: bool = True
    # Only servers registered under this model name ("" = every inference server).
    model: str = ""
    # Static addresses pushed to in addition to the discovered ones.
    addresses: list[str] = Field(default_factory=list)
    # "stream": UpdateWeights over gRPC; "path": LoadWeights of the checkpoint's HF export
    # (servers must see the same file system; pushes only at checkpoints then).
    mode: Literal["stream", "path"] = "stream"
    every_n_steps: int = Field(1, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    # Tensor dtype on the wire ("auto" = the trained parameters' dtype).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class TrainerConfig(Section):
    run_id: str = Field(min_length=1, pattern=RUN_ID_PATTERN)
    # A local Hugging Face directory (the tiny model: `rollmesh model tiny --out DIR`).
    model: str = Field(min_length=1)
    tokenizer: str = ""  # "" = the model directory
    # Reference model for the KL term ("" = the initial policy, `model`).
    ref_model: str = ""
    # NATS URL of the bus; "" = ROLLMESH_NATS_URL, else nats://127.0.0.1:4222.
    nats_url: str = ""
    # Where rollouts come from: "bus" = the run's JetStream subjects; "files" = JSONL files of
    # Trajectory protos in JSON (exported trajectories, one per line), read once.
    source: Literal["bus", "files"] = "bus"
    files: list[str] = Field(default_factory=list)
    # Durable consumer name ("" = trainer-<run_id>).
    durable: str = ""
    # Seconds a delivered rollout may stay un-acknowledged before JetStream redelivers it; the
    # trainer acknowledges at checkpoints, so this must exceed the time between checkpoints.
    ack_wait_s: float = Field(3600.0, gt=0)

    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(0, ge=0)  # 0 = until stopped
    seed: int = 0
    gradient_checkpointing: bool = False

    loss: LossConfig = Field(default_factory=LossConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    # One JSON object per step ("" = <checkpoint.dir>/metrics.jsonl).
    metrics_path: str = ""

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
