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
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..env.rubric import Rubric
from ..errors import InvalidArgumentError
from .config import RewardFunctionConfig
from .context import ScoreContext
from .resources import Resources

ScoreFn = Callable[[ScoreContext], Awaitable[float]]
_REQUIRED = object()


class Params:
    """Typed access to a function's params; unknown or ill-typed params are errors at compile time."""

    def __init__(self, where: str, params: Mapping[str, Any]) -> None:
        self.where = where
        self._params = dict(params)
        self._known: set[str] = set()

    def get(self, key: str, default: Any = _REQUIRED, *, kind: type | tuple[type, ...] = object) -> Any:
        self._known.add(key)
        if key not in self._params:
            if default is _REQUIRED:
                raise InvalidArgumentError(f"{self.where}: missing params.{key}", reason="BAD_PARAMS")
            return default
        value = self._params[key]
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # protobuf Struct numbers are doubles
        if (kind is not object and not isinstance(value, kind)) or (kind in (int, float) and isinstance(value, bool)):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise InvalidArgumentError(
                f"{self.where}: params.{key} must be a {name}, got {value!r}", reason="BAD_PARAMS"
            )
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, minimum: float | None = None) -> float:
        value = self.get(key, default, kind=float)
        if value is not None and (not math.isfinite(value) or (minimum is not None and value < minimum)):
            rule = f">= {minimum:g}" if minimum is not None else "finite"
            raise InvalidArgumentError(f"{self.where}: params.{key} must be {rule}, got {value}", reason="BAD_PARAMS")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default, kind=str)
        if value not in choices:
            raise InvalidArgumentError(
                f"{self.where}: params.{key} must be one of {list(choices)}, got {value!r}", reason="BAD_PARAMS"
            )
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._params) - self._known)
        if unknown:
            raise InvalidArgumentError(
                f"{self.where}: unknown params {unknown}; it takes {sorted(self._known)}", reason="BAD_PARAMS"
            )


@dataclass(frozen=True)
class Builtin:
    name: str
    make: Callable[[Params, Resources], ScoreFn]
    timeout_s: float
    # Added to the outer time bound, for one-off setup that the function bounds itself (worker start).
    setup_s: float = 0.0

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.make.__doc__ or "")


BUILTINS: dict[str, Builtin] = {}


def builtin(
    name: str, *, timeout_s: float = 10.0, setup_s: float = 0.0
) -> Callable[[Callable[[Params, Resources], ScoreFn]], Any]:
    def register(make: Callable[[Params, Resources], ScoreFn]) -> Callable[[Params, Resources], ScoreFn]:
        BUILTINS[name] = Builtin(name, make, timeout_s, setup_s)
        return make

    return register


def describe_builtins() -> dict[str, str]:
    return {name: b.doc for name, b in sorted(BUILTINS.items())}


@dataclass(frozen=True)
class CompiledFunction:
    name: str
    function: str
    weight: float
    timeout_s: float
    fn: ScoreFn


def compile_function(cfg: RewardFunctionConfig, resources: Resources, *, allow_imports: bool) -> CompiledFunction:
    """InvalidArgumentError for an unknown function or bad params (reason UNKNOWN_FUNCTION / BAD_PARAMS)."""
    where = f"reward function {cfg.name!r} ({cfg.function})"
    params = Params(where, cfg.params)
    if cfg.function in BUILTINS:
        b = BUILTINS[cfg.function]
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
            f"{where}: unknown function {cfg.function!r}; built-ins are {sorted(BUILTINS)}, "
            "or give a Python import path 'package.module:function'",
            reason="UNKNOWN_FUNCTION",
            metadata={"builtins": ",".join(sorted(BUILTINS))},
        )
    return CompiledFunction(cfg.name, cfg.function, cfg.weight, timeout_s, fn)


def load_python_function(path: str, kwargs: Mapping[str, Any], where: str) -> ScoreFn:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise InvalidArgumentError(f"{where}: cannot load {path!r}: {e}", reason="UNKNOWN_FUNCTION") from e
    if not callable(obj):
        raise InvalidArgumentError(f"{where}: {path!r} is not callable", reason="UNKNOWN_FUNCTION")
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


# The built-ins register themselves with @builtin when their module is imported.
from . import builtin_functions as _builtin_functions  # noqa: E402, F401
