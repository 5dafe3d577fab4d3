"""Reward functions: the built-ins, and Python functions loaded by import path.

A spec names a function by string. Built-ins (BUILTINS, defined in builtin_functions.py and listed by
`describe_builtins()`) compare `completion` (the final assistant message's content, after an
optional `extract` step) with `answer` (trajectory.task.answer), check formats, or call out to an
environment server or an LLM judge. Any other name of the form "package.module:function" is
imported and called with the environment SDK's convention (parameters named completion, answer,
prompt, messages, state, info, task; see rollmesh.env.rubric), its `params` bound as keyword
arguments. Sync functions run in a worker thread so that they cannot stall the server.

Every function also takes `timeout_s` (its time bound per trajectory). A function that raises,
times out or returns a non-finite number has its reward reported as an error (see scoring.py).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..env.rubric import Rubric
from ..errors import MAX_QUOTED_CHARS, InvalidArgumentError, clip, quoted
from .builtin_functions import BUILTINS
from .builtins import Params, ScoreFn
from .config import RewardFunctionConfig
from .context import ScoreContext
from .resources import Resources


def describe_builtins() -> dict[str, str]:
    return {name: b.doc for name, b in sorted(BUILTINS.items())}


@dataclass(frozen=True)
class CompiledFunction:
    name: str
    function: str
    weight: float
    timeout_s: float
    fn: ScoreFn
    local: bool = False  # Builtin.local


def compile_function(
    cfg: RewardFunctionConfig, resources: Resources, *, allow_imports: bool, inline: bool = False
) -> CompiledFunction:
    """InvalidArgumentError for an unknown function or bad params (reason UNKNOWN_FUNCTION / BAD_PARAMS).
    `inline`: the function comes from a client's spec (stricter checks, e.g. of judge prompts)."""
    where = f"reward function {cfg.name!r} ({clip(cfg.function, MAX_QUOTED_CHARS)})"
    params = Params(where, cfg.params, inline=inline)
    local = False
    if cfg.function in BUILTINS:
        b = BUILTINS[cfg.function]
        local = b.local
        timeout_s = params.number("timeout_s", b.timeout_s, minimum=0.001)
        fn = b.make(params, resources)
        params.finish()
        timeout_s += b.setup_s
    elif ":" in cfg.function:
        if not allow_imports:
            raise InvalidArgumentError(
                f"{where}: import-path functions are only allowed in configured rubrics, not in inline specs "
                "(set server.allow_inline_imports = true to allow them)",
                reason="IMPORTS_NOT_ALLOWED",
            )
        timeout_s = params.number("timeout_s", 30.0, minimum=0.001)
        kwargs = {k: v for k, v in cfg.params.items() if k != "timeout_s"}
        fn = load_python_function(cfg.function, kwargs, where)
    else:
        raise InvalidArgumentError(
            f"{where}: unknown function {quoted(cfg.function)}; built-ins are {sorted(BUILTINS)}, "
            "or give a Python import path 'package.module:function'",
            reason="UNKNOWN_FUNCTION",
            metadata={"builtins": ",".join(sorted(BUILTINS))},
        )
    return CompiledFunction(cfg.name, cfg.function, cfg.weight, timeout_s, fn, local)


def load_python_function(path: str, kwargs: Mapping[str, Any], where: str) -> ScoreFn:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise InvalidArgumentError(f"{where}: cannot load {quoted(path)}: {e}", reason="UNKNOWN_FUNCTION") from e
    if not callable(obj):
        raise InvalidArgumentError(f"{where}: {quoted(path)} is not callable", reason="UNKNOWN_FUNCTION")
    target = functools.partial(obj, **kwargs) if kwargs else obj
    if inspect.iscoroutinefunction(obj):
        wrapped = target
    else:

        @functools.wraps(target)
        async def wrapped(**kw: Any) -> Any:
            value = await asyncio.to_thread(target, **kw)
            return await value if inspect.isawaitable(value) else value  # e.g. an object with async __call__

    try:
        # the SDK's Rubric maps parameter names to context values (and rejects what it cannot fill)
        rubric = Rubric([wrapped])
    except ValueError as e:
        raise InvalidArgumentError(f"{where}: {e}", reason="BAD_PARAMS") from e

    async def score(ctx: ScoreContext) -> float:
        rewards, _ = await rubric.score(ctx.sdk_kwargs())
        return next(iter(rewards.values()))

    return score
