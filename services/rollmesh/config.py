"""Run configuration: one TOML file validated by pydantic models, with `key.path=value` overrides
from the command line. Each subsystem defines its own section model next to its code; this module
only loads, overrides and reports errors a person can act on."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rollmesh.errors import InvalidArgumentError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`trainer.lr=1e-5` -> (["trainer", "lr"], 1e-5). Values are parsed as JSON when they can be."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise InvalidArgumentError(f"override {item!r} must look like section.key=value", reason="BAD_OVERRIDE")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidArgumentError(f"override {item!r}: {part!r} is not a section", reason="BAD_OVERRIDE")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"config file {str(p)!r} does not exist", reason="CONFIG_NOT_FOUND")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"{p}: invalid TOML: {e}", reason="BAD_CONFIG") from e


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> M:
    """Defaults, then the TOML file, then overrides; validated by `model`."""
    data: dict[str, Any] = json.loads(json.dumps(dict(defaults or {})))
    if path is not None:
        _merge(data, read_toml(path))
    apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidArgumentError(f"invalid configuration{where}: {problems}", reason="BAD_CONFIG") from e


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
