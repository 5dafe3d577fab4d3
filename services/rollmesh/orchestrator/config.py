"""Configuration of a rollout run: what to roll out (environment, split, group size), how to sample,
and the engine's limits (concurrency, retries, timeouts, staleness). TOML section models, loaded
with rollmesh.config.load_config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config import Section
from ..proto.v1 import messages_pb2 as msg_pb


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 = off
    max_tokens: int = Field(256, ge=1)
    # Base seed of a run: each rollout samples with its own seed derived from it and the
    # trajectory id (identical seeds would make a group's samples identical). None = unseeded.
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)

    def to_pb(self, seed: int | None = None) -> msg_pb.SamplingParams:
        pb = msg_pb.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stop=self.stop,
            n=1,
            logprobs=True,
        )
        if seed is not None:
            pb.seed = seed
        return pb


class RolloutConfig(Section):
    run_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-=]+$")  # a NATS subject token
    env: str = Field(min_length=1)
    split: str = "test"
    # Inference model name ("" = whatever the given or registered inference servers serve).
    model: str = ""
    rollouts_per_task: int = Field(1, ge=1, le=1024)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_concurrency: int = Field(64, ge=1)  # episodes in flight
    # Runs of one episode: after an environment replica fails mid-episode the whole episode is
    # rerun on another replica, at most this many times in all.
    max_attempts: int = Field(3, ge=1, le=20)
    step_timeout_s: float = Field(120.0, gt=0)  # one environment exchange (start or step)
    episode_timeout_s: float = Field(1800.0, gt=0)  # a whole episode, model calls included
    inference_timeout_s: float = Field(600.0, gt=0)  # one model call
    # How long a rollout waits for a healthy replica while every one it may use is failing or gone
    # (a restart, a rolling update) before it becomes an error: without it an outage turns every
    # rollout started meanwhile into an error at once.
    replica_wait_s: float = Field(60.0, ge=0)
    # "" = the environment's own rewards (inline, else its Score RPC); else a rubric name on the
    # rubric service, which also returns the group's advantages.
    rubric: str = ""
    # Advantages when the environment scores (the rubric service has its own settings).
    normalize_advantages: bool = False  # divide by the group's reward std
    leave_one_out: bool = False  # RLOO baseline
    max_off_policy_steps: int = Field(8, ge=0)
    stale_policy: Literal["drop", "downweight"] = "drop"
    publish: bool = True
    # Seconds between registry refreshes of the replica pools (new servers join, dead ones leave).
    discovery_interval_s: float = Field(5.0, gt=0)
    # Per-episode options passed to the environment's StartEpisode.
    env_options: dict[str, Any] = Field(default_factory=dict)


__all__ = ["RolloutConfig", "SamplingConfig"]
