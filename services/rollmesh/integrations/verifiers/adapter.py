"""`VerifiersEnv`: a verifiers classic environment as a rollmesh `Environment`.

Each episode runs verifiers' own `rollout()` with an `EpisodeTurns` client: the environment's
`env_response`, stop conditions, tools and `update_tool_args` run as written, and every model call
becomes one Episode-stream step answered by the orchestrator. Its `Rubric` scores the finished
rollout; each reward function's value is a named reward and the weighted sum is the reward."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import verifiers as vf

from ...env.environment import Environment
from ...env.episode import Episode
from ...env.rubric import Rubric
from ...errors import FailedPreconditionError, InternalError, UnimplementedError
from ...types import Message, State, Task
from .messages import from_verifiers, to_verifiers
from .turns import Ask, EpisodeTurns

MODEL = "policy"  # what verifiers sees as the model name: the orchestrator picks the real one
UNLIMITED_TURNS = 1_000_000  # verifiers' max_turns <= 0 means no limit; rollmesh needs a number
_ROW_FIELDS = {"prompt", "answer", "info", "example_id", "task"}
_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens")


def _unsupported(env: Any) -> str | None:
    """Why this environment cannot be hosted step by step, or None when it can."""
    names = {cls.__name__ for cls in type(env).__mro__}
    if "EnvGroup" in names:
        return "EnvGroup: serve each environment on its own and mix them with [[rollout.envs]]"
    if names & {"SandboxEnv", "PythonEnv", "CliAgentEnv"}:
        return f"{type(env).__name__} runs code in a hosted sandbox, which this server does not provide"
    if getattr(env, "message_type", "chat") != "chat":
        return "completion-format (raw text) environments: rollmesh episodes are chat messages"
    if env.rubric.has_group_rewards:
        return "group-level reward functions: an episode is scored on its own; score groups in the rubric service"
    return None


class VerifiersRubric(Rubric):
    """The verifiers rubric, scoring a finished verifiers rollout state (RubricGroups included)."""

    def __init__(self, env: VerifiersEnv) -> None:
        # Not Rubric.__init__: verifiers functions take parameters (parser, judge, ...) that only
        # verifiers' own rubric fills.
        self.env = env
        rubric = env.vf.rubric
        self.funcs = list(rubric._get_reward_funcs())
        self.weights = [float(w) for w in rubric._get_reward_weights()]
        self.names = list(dict.fromkeys(rubric._get_reward_func_names()))
        self._signatures = []

    async def score(self, context: dict[str, Any]) -> tuple[dict[str, float], float]:
        rollout: _Rollout | None = context["state"].get("_vf")
        state = rollout.state if rollout is not None else await self.env.scoring_state(context)
        rubric = self.env.vf.rubric
        await rubric.score_rollout(state)
        try:
            rewards = {k: float(v) for k, v in (state.get("metrics") or {}).items()}
            reward = float(state["reward"])
        finally:
            await rubric.cleanup(state)
        for name, value in [*rewards.items(), ("reward", reward)]:
            if not math.isfinite(value):
                raise ValueError(f"reward function {name!r} returned {value}")
        return rewards, reward


class VerifiersEpisode(Episode):
    """Starts with the prompt verifiers' rollout asks the model first (its `setup_state` may
    rewrite the dataset's)."""

    async def start(self) -> list[Message]:
        await super().start()
        self.messages = list(self.state["_vf"].first_prompt or self.messages)
        return list(self.messages)


class _Rollout:
    """The server's handle on one running verifiers rollout."""

    def __init__(self, turns: EpisodeTurns) -> None:
        self.turns = turns
        self.first_prompt: list[Message] | None = None
        self.state: Any = None  # verifiers' State, once the rollout has finished


class VerifiersEnv(Environment):
    def __init__(self, env: Any, *, name: str) -> None:
        if (why := _unsupported(env)) is not None:
            raise UnimplementedError(f"verifiers environment {type(env).__name__} is not supported: {why}")
        self.vf = env
        splits = {"train": env.build_dataset(), "test": env.build_eval_dataset()}
        self._rows: dict[str, dict[str, dict[str, Any]]] = {
            split: {str(row["example_id"]): dict(row) for row in rows} for split, rows in splits.items() if rows
        }
        vf_turns = int(getattr(env, "max_turns", 1))
        sampling = dict(getattr(env, "sampling_args", None) or {})
        super().__init__(
            name=name,
            description=(inspect.getdoc(type(env)) or "").split("\n\n")[0],
            tasks={split: [_task(row, split) for row in rows.values()] for split, rows in self._rows.items()},
            max_turns=vf_turns if vf_turns > 0 else UNLIMITED_TURNS,
            default_split="train" if "train" in self._rows else "test",
            sampling={k: sampling[k] for k in _SAMPLING if sampling.get(k) is not None},
        )
        self.rubric = VerifiersRubric(self)
        self.kind = _kind(env)  # type: ignore[misc]
        self._specs = [
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in (env.tool_defs or [])
        ]

    # ---- the rollmesh hooks, over verifiers' rollout loop --------------------------------------

    def episode(
        self, task: Task, *, seed: int = 0, options: Mapping[str, Any] | None = None, episode_id: str = ""
    ) -> Episode:
        return VerifiersEpisode(self, task, seed=seed, options=options, episode_id=episode_id)

    async def setup_state(self, task: Task, state: State) -> None:
        rollout = state["_vf"] = _Rollout(EpisodeTurns())
        rollout.turns.run(self.vf.rollout(self._input(task), rollout.turns, MODEL))
        first = await rollout.turns.next_event()
        if isinstance(first, Ask):
            rollout.first_prompt = from_verifiers(first.prompt)
        else:
            self._finished(rollout, first.error, state)

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        rollout: _Rollout = state["_vf"]
        if not rollout.turns.running:
            raise FailedPreconditionError("the verifiers rollout has already finished", reason="EPISODE_DONE")
        rollout.turns.reply(messages[-1])
        event = await rollout.turns.next_event()
        if isinstance(event, Ask):
            if len(event.prompt) < len(messages) or [m.role for m in event.prompt[: len(messages)]] != [
                m["role"] for m in messages
            ]:
                raise UnimplementedError(
                    f"environment {self.name!r} rewrote the conversation history (get_prompt_messages); "
                    "rollmesh episodes only append messages",
                    reason="NOT_SUPPORTED",
                )
            return from_verifiers(event.prompt[len(messages) :])
        return self._finished(rollout, event.error, state)

    async def is_done(self, messages: list[Message], state: State) -> bool:
        if not state.get("done"):
            return False
        # verifiers' own turn limit is reported as rollmesh's ("max_turns"), except for one-shot tasks
        hit_limit = state.get("stop_condition") == "max_turns_reached" and self.kind != "single_turn"
        return not (hit_limit and state.get("turn", 0) >= self.max_turns)

    async def cleanup(self, state: State) -> None:
        rollout: _Rollout | None = state.get("_vf")
        if rollout is not None:
            await rollout.turns.stop()

    def _finished(self, rollout: _Rollout, error: BaseException | None, state: State) -> list[Message]:
        """The rollout ended: a failure is the environment's error, never a zero reward."""
        if error is not None:
            raise InternalError(
                f"verifiers environment {self.name!r} raised {type(error).__name__}: {error}",
                reason="ENVIRONMENT_FAILED",
            ) from error
        vf_state = rollout.turns.result
        if vf_state.get("error") is not None:
            err = vf_state["error"]
            raise InternalError(
                f"verifiers environment {self.name!r} stopped with {type(err).__name__}: {err}",
                reason="ENVIRONMENT_FAILED",
            )
        rollout.state = vf_state
        state["done"] = True
        state["stop_condition"] = str(vf_state.get("stop_condition") or "")
        final = vf_state.get("final_env_response")
        return from_verifiers(final) if final else []

    # ---- scoring and description ---------------------------------------------------------------

    def _input(self, task: Task) -> dict[str, Any]:
        row = self._rows.get(task.split, {}).get(task.task_id)
        if row is not None:
            return dict(row)
        return {"prompt": task.prompt, "answer": task.answer, "info": task.info, "example_id": 0}

    async def scoring_state(self, context: dict[str, Any]) -> Any:
        """A verifiers state for the Score RPC: a conversation scored without an episode."""
        task: Task = context["task"]
        state = await self.vf.init_state(self._input(task), EpisodeTurns(), MODEL)
        state["completion"] = to_verifiers(context["completion"])
        return state

    def tool_specs(self) -> list[dict[str, Any]]:
        return self._specs

    @cached_property
    def digest(self) -> str:
        """sha256 of the verifiers environment's code (its classes below verifiers' own, reward
        functions, tools) and its tasks."""
        h = hashlib.sha256()
        code: list[Any] = [
            c for c in type(self.vf).__mro__ if c.__module__.split(".")[0] not in ("verifiers", "builtins")
        ]
        code += [*(getattr(self.vf, "tools", None) or ()), *self.rubric.funcs]
        for obj in code:
            try:
                h.update(inspect.getsource(obj).encode())
            except (OSError, TypeError):
                h.update(getattr(obj, "__qualname__", type(obj).__qualname__).encode())
        h.update(json.dumps([self.max_turns, self.rubric.weights]).encode())
        for split, rows in sorted(self._rows.items()):
            for task_id, row in rows.items():
                h.update(json.dumps([split, task_id, row], sort_keys=True, default=str).encode())
        return h.hexdigest()


def _kind(env: Any) -> str:
    if isinstance(env, vf.SingleTurnEnv):
        return "single_turn"
    return "tool" if isinstance(env, vf.ToolEnv) else "multi_turn"


def _task(row: Mapping[str, Any], split: str) -> Task:
    info = row.get("info") or {}
    if isinstance(info, str):
        info = json.loads(info)
    extra = {k: v for k, v in row.items() if k not in _ROW_FIELDS and v is not None}
    return Task(
        task_id=str(row["example_id"]),
        prompt=from_verifiers(row["prompt"]),
        answer="" if row.get("answer") is None else str(row["answer"]),
        info={**extra, **info},
        split=split,
    )
