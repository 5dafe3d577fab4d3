"""Finding environments: an importable module exposing `load_environment(**kwargs)`, a name in
the `rollmesh.environments` entry point group, or a path to a .py file. What `load_environment`
returns may also be a foreign environment that one of the given adapters hosts (verifiers)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import NotFoundError
from .environment import Environment

ENTRY_POINT_GROUP = "rollmesh.environments"


def available() -> dict[str, str]:
    """Installed environments: {entry point name: module}."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def parse_args(pairs: Iterable[str]) -> dict[str, Any]:
    """`k=v` pairs; values are parsed as JSON when they are JSON (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _import(target: str) -> ModuleType:
    path = Path(target)
    if target.endswith(".py") and path.exists():
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if target in eps:
        loaded = eps[target].load()
        return loaded if isinstance(loaded, ModuleType) else importlib.import_module(eps[target].module)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            raise NotFoundError(
                f"no environment {target!r}: not an installed entry point ({', '.join(sorted(eps)) or 'none'}), "
                "not an importable module, not a .py file"
            ) from e
        raise


Adapter = Callable[..., Environment | None]
"""`adapt(obj, name=...)`: the rollmesh Environment hosting a foreign environment object (one
written for another framework), or None when `obj` is not one it knows."""


def load_environments(
    target: str, kwargs: Mapping[str, Any] | None = None, *, adapters: Sequence[Adapter] = ()
) -> list[Environment]:
    module = _import(target)
    factory = getattr(module, "load_environment", None)
    if factory is None:
        raise NotFoundError(f"module {module.__name__!r} has no load_environment(**kwargs) function")
    result = factory(**dict(kwargs or {}))
    name = module.__name__.rsplit(".", 1)[-1].replace("_", "-")  # a foreign env is named after its module
    for adapt in adapters:
        if (adapted := adapt(result, name=name)) is not None:
            return [adapted]
    envs = [result] if isinstance(result, Environment) else list(result)
    for env in envs:
        if not isinstance(env, Environment):
            raise TypeError(f"{module.__name__}.load_environment returned {type(env).__name__}, not an Environment")
    return envs
