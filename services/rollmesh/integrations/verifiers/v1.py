"""`VerifiersV1Env`: a verifiers 0.4 environment (`verifiers.v1`: a Taskset played by a Harness)
as a rollmesh `Environment` that runs its own episodes (RunEpisode).

A v1 harness is a program that calls the model itself, through verifiers' interception server
(`endpoint` + `secret`), which records the trace the taskset scores. Each RunEpisode runs that
machinery as verifiers does, with the model client pointed at the caller's endpoint and session
key: the harness's calls go program → verifiers' loopback interception → rollmesh's endpoint
(recorded there token by token), and the rewards are the taskset's `@reward`s over verifiers'
trace. Only harnesses in the local `subprocess` runtime are hosted: prime, modal and docker
runtimes reach the interception server through tunnels or containers this server does not run."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import secrets
from functools import cached_property
from typing import Any

from verifiers.v1 import Env
from verifiers.v1.clients import ModelContext
from verifiers.v1.configs.client import EvalClientConfig
from verifiers.v1.dialects.chat import message_to_wire
from verifiers.v1.runtimes import SubprocessConfig

from ...env.agent import AgentContext, EpisodeResult
from ...env.environment import Environment
from ...errors import InternalError, UnimplementedError
from ...types import Message, State, Task
from .messages import from_verifiers

MODEL = "policy"  # the model name the harness sees when the caller names none
# The model calls one episode may make when the agent's `max_turns` is None (no limit in verifiers):
# rollmesh's interception endpoint needs a bound, and 64 is its own default.
DEFAULT_MAX_TURNS = 64
_ERROR_CHARS = 2000  # how much of a harness's error (its stderr tail) reaches the caller


def unsupported(env: Env) -> str | None:
    """Why this v1 environment cannot be hosted, or None when it can."""
    specs = getattr(env, "_agent_specs", {})
    if len(specs) != 1:
        return f"{len(specs)} agents ({', '.join(specs)}): a rollmesh episode is one agent's conversation"
    (role, spec), *_ = specs.items()
    if not isinstance(spec.runtime, SubprocessConfig):
        return (
            f"agent {role!r} runs its harness in the {spec.runtime.type!r} runtime (a container or remote "
            "sandbox, reached through a tunnel or container network this server does not set up); "
            "set AgentConfig(runtime=SubprocessConfig()) to run it as a local subprocess"
        )
    if env.taskset.INFINITE:
        return "an infinite taskset: bound it with taskset.head(n)"
    return None


class VerifiersV1Env(Environment):
    kind = "multi_turn"

    def __init__(self, env: Env, *, name: str) -> None:
        if (why := unsupported(env)) is not None:
            raise UnimplementedError(
                f"verifiers v1 environment {type(env).__name__} is not supported: {why}", reason="NOT_SUPPORTED"
            )
        self.vf = env
        self._tasks = {_task_id(t, i): t for i, t in enumerate(env.taskset)}
        (agent,) = env._agent_specs.values()
        super().__init__(
            name=name,
            description=(inspect.getdoc(type(env.taskset)) or "").split("\n\n")[0],
            tasks=[_task(task_id, t) for task_id, t in self._tasks.items()],
            max_turns=agent.max_turns or DEFAULT_MAX_TURNS,
        )

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        # verifiers reads the upstream key from a named variable; a random name per episode keeps
        # concurrent episodes apart, and "API_KEY" in it keeps it out of harness subprocesses.
        key_var = f"ROLLMESH_API_KEY_{secrets.token_hex(8)}"
        os.environ[key_var] = agent.api_key
        client = EvalClientConfig(base_url=agent.openai_base_url, api_key_var=key_var)
        try:
            async with self.vf.serving():
                episode = await self.vf.run_episode(
                    self._tasks[task.task_id], ModelContext(model=agent.model or MODEL, client=client)
                )
        finally:
            del os.environ[key_var]
        errors = [*episode.errors, *(e for t in episode.traces for e in t.errors)]
        if errors or not episode.ok:
            first = f"{errors[0].type}: {errors[0].message}"[-_ERROR_CHARS:] if errors else "no trace succeeded"
            raise InternalError(f"verifiers v1 episode failed: {first}", reason="ENVIRONMENT_FAILED")
        trace = episode.traces[-1]
        messages = from_verifiers(message_to_wire(m) for m in trace.branches[-1].messages)
        # Each named reward is weighted (score x weight), so their sum is verifiers' trace.reward.
        rewards = {k: r.value for k, r in trace.rewards.items() if r is not None}
        metrics = {k: float(v) for k, v in trace.metrics.items() if isinstance(v, int | float)}
        for k, v in [*rewards.items(), *metrics.items()]:
            if not math.isfinite(v):
                raise InternalError(f"verifiers v1 reward {k!r} is {v}", reason="ENVIRONMENT_FAILED")
        return EpisodeResult(messages=messages, rewards=rewards, metrics=metrics, stop_reason=_stop_reason(trace))

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        raise UnimplementedError(
            f"environment {self.name!r} is a verifiers v1 harness that plays whole episodes: run it with "
            "RunEpisode (has_run_episode), not step by step",
            reason="NOT_SUPPORTED",
        )

    @cached_property
    def digest(self) -> str:
        """sha256 of the taskset's, its task's and the harness's code, and the tasks."""
        h = hashlib.sha256()
        code = [type(self.vf), type(self.vf.taskset), type(self.vf.taskset).task_type(), *self._harness_classes()]
        for cls in code:
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):
                h.update(cls.__qualname__.encode())
        for task_id, t in self._tasks.items():
            h.update(json.dumps([task_id, t.data.model_dump(mode="json")], sort_keys=True).encode())
        return h.hexdigest()

    def _harness_classes(self) -> list[type]:
        return [type(h) for h in getattr(self.vf, "_harnesses", {}).values()]


def _stop_reason(trace: Any) -> str:
    """verifiers' framework limits as rollmesh's stop reasons (its `@stop`s end an episode: done)."""
    if trace.stop_condition == "max_turns":
        return "max_turns"
    return "length" if trace.is_truncated else "done"


def _task_id(task: Any, index: int) -> str:
    return str(task.data.idx if task.data.idx is not None else index)


def _task(task_id: str, task: Any) -> Task:
    data = task.data.model_dump(mode="json", exclude_none=True)
    prompt = data.pop("prompt", None)
    system = data.pop("system_prompt", None)
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    elif prompt:
        messages += from_verifiers(prompt)
    answer = data.pop("answer", "")
    return Task(task_id=task_id, prompt=messages, answer="" if answer is None else str(answer), info=data)
