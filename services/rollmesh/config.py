"""Run configuration: one TOML file validated by pydantic models, with `key.path=value` overrides
from the command line. Each subsystem defines its own section model next to its code; this module
only loads, overrides and reports errors a person can act on."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from rollmesh.errors import InvalidArgumentError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be ignored)."""

    # A field's docstring (the string under it) is its description: docs/configuration.md is
    # generated from them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer: top-level tables and arrays of tables, other values inline."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list) or _is_inline_list(v)}
    lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and not _is_inline_list(value):
            for item in value:
                lines.append(f"\n[[{json.dumps(key)}]]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _is_inline_list(v: Any) -> bool:
    return isinstance(v, list) and not (v and all(isinstance(x, dict) for x in v))


def nats_urls(value: Any) -> Any:
    """NATS server URLs as one comma-separated string, from that string or a list of URLs (the
    servers of a cluster): "nats://a:4222, nats://b:4222" and ["nats://a:4222", "nats://b:4222"] are
    both "nats://a:4222,nats://b:4222". Anything else is left for validation to refuse."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        return value
    return ",".join(p.strip() for p in parts if p.strip())


NatsUrl = Annotated[str, BeforeValidator(nats_urls)]
"""A NATS URL field: a comma-separated string or a TOML list of URLs, kept comma-separated."""


class TlsSection(Section):
    """`[tls]` of a service's or a run's TOML file: the same settings as --tls-cert/--tls-key/--tls-ca/--tokens-file
    (flags win, then this table, then ROLLMESH_TLS_* variables). Paths only: keys and tokens stay in their files."""

    cert: str = ""
    """This process's certificate (PEM); turns TLS on."""
    key: str = ""
    """The certificate's private key (PEM file)."""
    ca: str = ""
    """CA bundle that signs peers; on a server it turns on mutual TLS."""
    tokens_file: str = ""
    """Bearer-token hashes a server accepts (TOML, see `rollmesh certs token`)."""

    def settings(self) -> dict[str, str]:
        """As keyword arguments for TlsConfig.overridden (empty values are left out)."""
        return {k: v for k, v in self.model_dump().items() if v}
