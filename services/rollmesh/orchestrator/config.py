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
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int = Field(0, ge=0)
    """0 = off."""
    max_tokens: int = Field(256, ge=1)
    """Most tokens generated per model call."""
    seed: int | None = None
    """Base seed of a run: each rollout samples with its own seed derived from it and the trajectory id (identical
    seeds would make a group's samples identical). None = unseeded.
    """
    stop: list[str] = Field(default_factory=list)
    """Stop strings."""

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
    run_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-=]+$")
    """Names the run's bus subjects (rollmesh.rollouts.<run_id>.<env>): letters, digits, `-_=`."""
    env: str = Field(min_length=1)
    """Environment name (a run file defaults it to the mesh's first environment)."""
    split: str = "test"
    """Task split (a run file defaults it to "train")."""
    model: str = ""
    """Inference model name ("" = whatever the given or registered inference servers serve)."""
    rollouts_per_task: int = Field(1, ge=1, le=1024)
    """Group size: rollouts of each task, the advantage baseline."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_concurrency: int = Field(64, ge=1)
    """Episodes in flight."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Runs of one episode: after an environment replica fails mid-episode the whole episode is rerun on another
    replica, at most this many times in all.
    """
    step_timeout_s: float = Field(120.0, gt=0)
    """One environment exchange (start or step)."""
    episode_timeout_s: float = Field(1800.0, gt=0)
    """A whole episode, model calls included."""
    inference_timeout_s: float = Field(600.0, gt=0)
    """One model call."""
    replica_wait_s: float = Field(60.0, ge=0)
    """How long a rollout waits for a healthy replica while every one it may use is failing or gone (a restart, a
    rolling update) before it becomes an error: without it an outage turns every rollout started meanwhile into an
    error at once.
    """
    rubric: str = ""
    """Who scores: "" = the environment's own rewards (inline, else its Score RPC); else a rubric name on
    the rubric service, which also returns the group's advantages."""
    normalize_advantages: bool = False
    """When the environment scores: divide advantages by the group's reward std (a rubric has its own
    setting)."""
    leave_one_out: bool = False
    """When the environment scores: baseline = the mean of the group's other rollouts (RLOO)."""
    max_off_policy_steps: int = Field(8, ge=0)
    """Largest policy lag of a trajectory's oldest model call; scheduling also waits while the inference
    servers lag more."""
    stale_policy: Literal["drop", "downweight"] = "drop"
    """Stale trajectories: "drop" them (counted), or "downweight" them (metrics.sample_weight)."""
    publish: bool = True
    """Publish trajectories to JetStream (ROLLOUTS)."""
    discovery_interval_s: float = Field(5.0, gt=0)
    """Seconds between registry refreshes of the replica pools (new servers join, dead ones leave)."""
    env_options: dict[str, Any] = Field(default_factory=dict)
    """Per-episode options passed to the environment's StartEpisode."""


__all__ = ["RolloutConfig", "SamplingConfig"]
