"""Configuration of a rollout run: what to roll out (one environment, or a weighted mixture of
several, each with its split and group size), how to sample, and the engine's limits (concurrency,
retries, timeouts, staleness). TOML section models, loaded with rollmesh.config.load_config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

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


class SamplingOverrides(Section):
    """An environment's own sampling settings in a mixture: what is set replaces the run's [rollout.sampling]."""

    temperature: float | None = Field(None, ge=0.0, le=100.0)
    """Sampling temperature (0 = greedy)."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int | None = Field(None, ge=0)
    """0 = off."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens generated per model call."""
    stop: list[str] | None = None
    """Stop strings."""

    def apply(self, base: SamplingConfig) -> SamplingConfig:
        return SamplingConfig.model_validate({**base.model_dump(), **self.model_dump(exclude_none=True)})


class EnvEntry(Section):
    """One environment of a mixture (`[[rollout.envs]]`); settings left out are the run's."""

    name: str = Field(min_length=1)
    """Environment name."""
    weight: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    """Share of the run's tasks drawn from this environment, relative to the other entries' weights."""
    split: str | None = None
    """Task split (default: the run's `split`)."""
    rubric: str | None = None
    """Who scores this environment's rollouts (default: the run's `rubric`; "" = the environment itself)."""
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)
    """Sampling settings that replace the run's for this environment, e.g. { temperature = 0.7 }."""
    rollouts_per_task: int | None = Field(None, ge=1, le=1024)
    """Group size for this environment's tasks (default: the run's)."""
    env_options: dict[str, Any] | None = None
    """Per-episode options for this environment's StartEpisode (default: the run's `env_options`)."""


@dataclass(frozen=True)
class EnvShare:
    """One environment of a run as the engine rolls it out: its weight and its own settings (a
    RolloutConfig with `env` set and the entry's overrides applied)."""

    name: str
    weight: float
    config: RolloutConfig


class InterceptConfig(Section):
    """The interception endpoint: the OpenAI-compatible URL that RunEpisode environments' agents call
    (each call is recorded as a turn). It starts only when a run plays RunEpisode episodes."""

    host: str = "127.0.0.1"
    """Address it binds. Loopback by default; another address needs `tls` (or `insecure`)."""
    port: int = Field(0, ge=0, le=65535)
    """Port (0 = a free one)."""
    url: str = ""
    """Base URL environments are told to call, ending in /v1 ("" = http(s)://host:port/v1): set it when environment
    servers reach this process under another address (another host, a proxy)."""
    tls: bool = False
    """Serve HTTPS with this process's TLS certificate (a server certificate whose names cover the URL's host)."""
    insecure: bool = False
    """Allow a non-loopback `host` without TLS: session keys then travel in clear."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest request body (413 beyond)."""
    max_calls: int = Field(0, ge=0)
    """Model calls per episode (429 beyond); 0 = the environment's max_turns."""


class RolloutConfig(Section):
    run_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-=]+$")
    """Names the run's bus subjects (rollmesh.rollouts.<run_id>.<env>): letters, digits, `-_=`."""
    env: str = ""
    """Environment name (a run file defaults it to the mesh's first environment). For several environments in one
    run, list them as `[[rollout.envs]]` instead."""
    envs: list[EnvEntry] = Field(default_factory=list)
    """A mixture: several environments in one run, tasks drawn in proportion to their weights, each with optional
    settings of its own (split, rubric, sampling, rollouts_per_task, env_options). Give either this or `env`."""
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
    episode_mode: Literal["auto", "stream", "run_episode"] = "auto"
    """How episodes are played: "stream" drives the Episode stream; "run_episode" has the environment play them
    with its own agent loop (RunEpisode), its model calls intercepted and recorded; "auto" = RunEpisode when the
    environment offers it (has_run_episode), else the stream."""
    intercept: InterceptConfig = Field(default_factory=InterceptConfig)
    """The interception endpoint of RunEpisode episodes."""

    @model_validator(mode="after")
    def _one_form(self) -> RolloutConfig:
        if self.env and self.envs:
            raise ValueError("give either `env` (one environment) or `[[rollout.envs]]` entries (a mixture), not both")
        if not (self.env or self.envs):
            raise ValueError('name an environment: env = "NAME", or [[rollout.envs]] entries with name = "NAME"')
        names = [e.name for e in self.envs]
        if len(set(names)) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"environment {twice[0]!r} is listed twice in `envs`; give each environment once")
        return self

    @property
    def env_names(self) -> list[str]:
        return [e.name for e in self.envs] if self.envs else [self.env]

    @property
    def is_mixture(self) -> bool:
        return bool(self.envs)

    def shares(self) -> list[EnvShare]:
        """Every environment of the run with its weight and effective settings, in the order given."""
        if not self.envs:
            return [EnvShare(self.env, 1.0, self)]
        out = []
        for e in self.envs:
            update: dict[str, Any] = {
                "env": e.name,
                "envs": [],
                "split": self.split if e.split is None else e.split,
                "rubric": self.rubric if e.rubric is None else e.rubric,
                "sampling": e.sampling.apply(self.sampling),
                "rollouts_per_task": e.rollouts_per_task or self.rollouts_per_task,
                "env_options": self.env_options if e.env_options is None else e.env_options,
            }
            out.append(EnvShare(e.name, e.weight, self.model_copy(update=update)))
        return out


__all__ = ["EnvEntry", "EnvShare", "InterceptConfig", "RolloutConfig", "SamplingConfig", "SamplingOverrides"]
