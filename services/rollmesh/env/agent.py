"""What an environment that runs its own agent loop (RunEpisode) is given, and what it gives back.

An environment overrides `Environment.run_episode(task, agent)`; `agent` is an AgentContext: the
model endpoint of this episode (an OpenAI-compatible base URL, a session key as the API key, the
model name), the episode's seed, options and state, and `run_program` to start an external agent
with that endpoint in its environment. Every model call the agent makes through the endpoint is
recorded by the caller, token by token, as the trajectory's turns: the environment only returns
the conversation and, if it wants, its rewards (EpisodeResult)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..types import Message, State, Task
from .program import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S, ProgramResult, run_program


@dataclass
class EpisodeResult:
    """The outcome of one RunEpisode. `rewards` None = the environment's rubric scores `messages`."""

    messages: list[Message]
    rewards: dict[str, float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stop_reason: str = "done"  # "done" | "max_turns" | "length"


@dataclass
class AgentContext:
    task: Task
    openai_base_url: str  # ends in /v1: POST {openai_base_url}/chat/completions
    api_key: str = field(repr=False)  # the session key: valid for this episode only, never log it
    model: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)  # the run's sampling (applied by the caller)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    state: State = field(default_factory=dict)  # the episode's state, after setup_state
    episode_id: str = ""

    def openai_env(self) -> dict[str, str]:
        """Environment variables that point an OpenAI client (the `openai` package, most CLI agents)
        at this episode's endpoint."""
        return {
            "OPENAI_BASE_URL": self.openai_base_url,
            "OPENAI_API_KEY": self.api_key,
            "OPENAI_MODEL": self.model,
        }

    async def run_program(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        check: bool = True,
    ) -> ProgramResult:
        """Runs an agent program with this episode's endpoint in its environment (see
        program.run_program: timeout, bounded output, killed when the episode is cancelled)."""
        return await run_program(
            argv,
            env={**self.openai_env(), **(env or {})},
            input=input,
            cwd=cwd,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            check=check,
        )
