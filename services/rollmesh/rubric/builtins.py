"""The registry of built-in reward functions: `@builtin(name)` registers a factory that turns typed
`Params` (checked when a rubric is compiled) and shared `Resources` into a score function."""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from .context import ScoreContext
from .resources import Resources

ScoreFn = Callable[[ScoreContext], Awaitable[float]]
_REQUIRED = object()


class Params:
    """Typed access to a function's params; unknown or ill-typed params are errors at compile time.
    `inline`: they come from a client's spec, not from the service's configuration."""

    def __init__(self, where: str, params: Mapping[str, Any], *, inline: bool = False) -> None:
        self.where = where
        self.inline = inline
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
    # Params that name a host:port the function connects to (checked against the service's
    # allow-list when a client's inline spec sets them; see addresses.py).
    address_params: tuple[str, ...] = ()
    # Text rules that only compute (microseconds, or a worker thread for a long text): scored in
    # the caller's task, not a task of their own (see CompiledRubric.score).
    local: bool = False

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.make.__doc__ or "")


BUILTINS: dict[str, Builtin] = {}


def builtin(
    name: str,
    *,
    timeout_s: float = 10.0,
    setup_s: float = 0.0,
    address_params: tuple[str, ...] = (),
    local: bool = False,
) -> Callable[[Callable[[Params, Resources], ScoreFn]], Any]:
    def register(make: Callable[[Params, Resources], ScoreFn]) -> Callable[[Params, Resources], ScoreFn]:
        BUILTINS[name] = Builtin(name, make, timeout_s, setup_s, address_params, local)
        return make

    return register
