"""Configuration of the rubric service (TOML + pydantic) and its conversion to/from RubricSpec.

    [server]
    port = 50071

    [[rubric]]
    name = "math"
    advantage = { normalize_std = true }

    [[rubric.function]]
    name = "correct"
    function = "math_equivalence"

    [[rubric.function]]
    name = "boxed"
    function = "answer_format"
    weight = 0.0                       # a metric: reported, not rewarded
    params = { style = "boxed" }

Load with `rollmesh.config.load_config(RubricServiceConfig, path, overrides)`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import convert
from ..config import Section
from ..errors import InvalidArgumentError
from ..proto.v1 import rubric_pb2 as rubric_pb

# Rubric names are registry/metric tokens; function names key maps in RewardResult.
NAME_RE = re.compile(r"^[A-Za-z0-9_\-=/.]{1,128}$")
# Keys RewardResult.metrics uses for the rubric's own bookkeeping (see scoring.py).
RESERVED_PREFIX = "rubric/"


class RewardFunctionConfig(Section):
    """One weighted reward function: a built-in name (see functions.BUILTINS) or "pkg.module:fn"."""

    name: str
    function: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"function name {v!r} must be 1-128 characters of letters, digits, '_-=/.'")
        if v.startswith(RESERVED_PREFIX):
            raise ValueError(f"function name {v!r}: the prefix {RESERVED_PREFIX!r} is reserved for rubric metrics")
        return v

    @field_validator("function")
    @classmethod
    def _function(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("function must name a built-in or a Python import path 'package.module:function'")
        return v.strip()

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"weight must be a finite number, got {v}")
        return v


class AdvantageConfig(Section):
    """Group-relative advantages: reward minus the group mean (or the mean of the others)."""

    normalize_std: bool = False
    leave_one_out: bool = False


class RubricConfig(Section):
    # `[[rubric.function]]` in TOML, `functions` in Python.
    model_config = ConfigDict(populate_by_name=True)

    name: str
    description: str = ""
    functions: list[RewardFunctionConfig] = Field(default_factory=list, alias="function")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"rubric name {v!r} must be 1-128 characters of letters, digits, '_-=/.'")
        return v

    @model_validator(mode="after")
    def _functions(self) -> RubricConfig:
        if not self.functions:
            raise ValueError(f"rubric {self.name!r} has no reward functions; add at least one [[rubric.function]]")
        names = [f.name for f in self.functions]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rubric {self.name!r}: function names must be unique, repeated: {dupes}")
        return self


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = 50071
    # Address other services should use, when it differs from host (containers, 0.0.0.0).
    advertise_host: str | None = None
    max_message_mb: float = 16.0
    max_concurrent_rpcs: int = 256
    max_group_size: int = 1024
    max_functions: int = 64
    # Bound of an RPC whose client set no deadline.
    default_deadline_s: float = 300.0
    grace_s: float = 10.0
    # Import-path functions ("pkg.module:fn") in inline specs sent over gRPC execute code chosen by
    # the caller; only configured rubrics may use them unless this is set.
    allow_inline_imports: bool = False

    @field_validator("max_message_mb", "default_deadline_s")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_concurrent_rpcs", "max_group_size", "max_functions")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class MonitorConfig(Section):
    """Live scoring of production traces from NATS; filled by the live scoring module."""


class DashboardConfig(Section):
    """The live scoring dashboard; filled by the live scoring module."""


class RubricServiceConfig(Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    rubric: list[RubricConfig] = Field(default_factory=list)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)

    @model_validator(mode="after")
    def _unique(self) -> RubricServiceConfig:
        names = [r.name for r in self.rubric]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rubric names must be unique, repeated: {dupes}")
        return self


def to_spec(cfg: RubricConfig) -> rubric_pb.RubricSpec:
    return rubric_pb.RubricSpec(
        name=cfg.name,
        description=cfg.description,
        functions=[
            rubric_pb.RewardFunctionSpec(
                name=f.name, function=f.function, weight=f.weight, params=convert.to_struct(f.params)
            )
            for f in cfg.functions
        ],
        advantage=rubric_pb.AdvantageSpec(
            normalize_std=cfg.advantage.normalize_std, leave_one_out=cfg.advantage.leave_one_out
        ),
    )


def from_spec(spec: rubric_pb.RubricSpec) -> RubricConfig:
    """A validated RubricConfig; InvalidArgumentError (naming the field) for a bad spec."""
    data = {
        "name": spec.name or "inline",
        "description": spec.description,
        "functions": [
            {"name": f.name, "function": f.function, "weight": f.weight, "params": convert.from_struct(f.params)}
            for f in spec.functions
        ],
        "advantage": {"normalize_std": spec.advantage.normalize_std, "leave_one_out": spec.advantage.leave_one_out},
    }
    try:
        return RubricConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in e.errors())
        raise InvalidArgumentError(f"invalid rubric spec {data['name']!r}: {problems}", reason="BAD_RUBRIC") from e
