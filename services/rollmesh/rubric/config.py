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
from ..config import Section, TlsSection
from ..errors import InvalidArgumentError
from ..proto.v1 import rubric_pb2 as rubric_pb

# Rubric names are registry/metric tokens; function names key maps in RewardResult.
NAME_RE = re.compile(r"^[A-Za-z0-9_\-=/.]{1,128}$")
# Keys RewardResult.metrics uses for the rubric's own bookkeeping (see scoring.py).
RESERVED_PREFIX = "rubric/"
# An app is one NATS subject token (rollmesh.monitor.<app>).
APP_RE = re.compile(r"^[A-Za-z0-9_\-=]+$")


class RewardFunctionConfig(Section):
    """One weighted reward function: a built-in name (see functions.BUILTINS) or "pkg.module:fn"."""

    name: str
    """Unique within the rubric; the key of its reward in results."""
    function: str
    """A built-in name (`rollmesh rubric ls`), or "package.module:function"."""
    weight: float = 1.0
    """Weight in the total reward; 0 = reported as a metric only."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The function's parameters (built-ins check them when the rubric loads)."""

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
    """Divide advantages by the group's reward std."""
    leave_one_out: bool = False
    """Baseline = the mean of the other rollouts of the group (RLOO)."""


class RubricConfig(Section):
    # `[[rubric.function]]` in TOML, `functions` in Python.
    model_config = ConfigDict(populate_by_name=True)

    name: str
    """Unique name; clients and monitor routes refer to it."""
    description: str = ""
    """Free text, shown by `rollmesh rubric ls`."""
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
    """Interface the gRPC server binds (`--host` overrides)."""
    port: int = 50071
    """gRPC port (`--port` overrides; 0 = any free port)."""
    advertise_host: str | None = None
    """Address other services should use, when it differs from host (containers, 0.0.0.0)."""
    max_message_mb: float = 16.0
    """Largest gRPC message, both directions."""
    max_concurrent_rpcs: int = 256
    """RPCs served at once; more get RESOURCE_EXHAUSTED."""
    max_group_size: int = 1024
    """Most trajectories in one ScoreGroup."""
    max_functions: int = 64
    """Most reward functions in one inline rubric spec."""
    default_deadline_s: float = 300.0
    """Bound of an RPC whose client set no deadline."""
    grace_s: float = 10.0
    """Seconds in-flight calls get to finish on SIGTERM."""
    allow_inline_imports: bool = False
    """Import-path functions ("pkg.module:fn") in inline specs sent over gRPC execute code chosen by the caller; only
    configured rubrics may use them unless this is set.
    """
    allowed_addresses: list[str] = Field(default_factory=list)
    """host:port addresses that inline specs sent over gRPC may name in params.address (judge, env_score,
    tool_call_validity), besides the addresses of servers in the NATS registry and those the configured rubrics use;
    any other is refused (PERMISSION_DENIED, ADDRESS_NOT_ALLOWED), so a client cannot make the service call hosts of
    its choosing. Compared exactly as written.
    """

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

    @field_validator("allowed_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = [a.strip() for a in v]
        for a in out:
            if not a or any(c.isspace() for c in a):
                raise ValueError(f"allowed address {a!r} must be a host:port without spaces")
        return out


class MonitorConfig(Section):
    """Live scoring of production traces: a durable JetStream pull consumer on the MONITOR stream,
    shared by every replica (each trace goes to one of them), scores on rollmesh.scores.<app>.

        [monitor]
        default = "helpfulness"                 # rubric of apps not listed below (none: dead letter)
        apps = { shop = "shop-quality" }        # app -> rubric
    """

    enabled: bool = True
    """When the service has a NATS URL."""
    apps: dict[str, str] = Field(default_factory=dict)
    """App -> rubric name."""
    default: str | None = None
    """Rubric of apps not in `apps` (none: their traces are dead-lettered NO_RUBRIC)."""
    durable: str = "rubric-live"
    """Replicas with the same durable share the work; a different name scores every trace again."""
    filter_subjects: list[str] = Field(default_factory=lambda: ["rollmesh.monitor.>"])
    """MONITOR subjects this consumer takes."""
    deliver: str = "new"
    """Which traces: "new" = published from the consumer's creation on; "all" = also what MONITOR retains."""
    fetch_batch: int = 256
    """Traces per pull."""
    max_in_flight: int = 128
    """Traces scored at once (LLM judges are bounded by their own max_concurrent)."""
    ack_wait_s: float = 60.0
    """A trace not acknowledged within ack_wait_s is delivered again (to any replica)."""
    max_deliveries: int = 5
    """Deliveries before a trace is dead-lettered instead of scored once more."""
    retry_delay_s: float = 2.0
    """Wait before a trace that failed to score is delivered again."""
    publish_timeout_s: float = 10.0
    """Bound of publishing one score."""

    @field_validator("apps")
    @classmethod
    def _apps(cls, v: dict[str, str]) -> dict[str, str]:
        for app in v:
            if not APP_RE.match(app):
                raise ValueError(f"app {app!r} must be a NATS subject token: letters, digits, '-', '_' or '='")
        return v

    @field_validator("durable")
    @classmethod
    def _durable(cls, v: str) -> str:
        if not APP_RE.match(v):
            raise ValueError(f"durable {v!r} must be letters, digits, '-', '_' or '='")
        return v

    @field_validator("filter_subjects")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one subject, e.g. 'rollmesh.monitor.>'")
        for s in v:
            if not s.startswith("rollmesh.monitor."):
                raise ValueError(f"filter subject {s!r} must be under rollmesh.monitor. (the MONITOR stream)")
        return v

    @field_validator("deliver")
    @classmethod
    def _deliver(cls, v: str) -> str:
        if v not in ("new", "all"):
            raise ValueError("deliver must be 'new' or 'all'")
        return v

    @field_validator("fetch_batch", "max_in_flight", "max_deliveries")
    @classmethod
    def _positive_count(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("ack_wait_s", "publish_timeout_s")
    @classmethod
    def _positive_s(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("retry_delay_s")
    @classmethod
    def _non_negative_s(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError("must be >= 0")
        return v


class DashboardConfig(Section):
    """The live scoring dashboard (HTTP): per-app reward chart, per-function distributions, latest
    traces; also /metrics (Prometheus) and /healthz."""

    enabled: bool = True
    """Serve the dashboard (`--no-dashboard` overrides)."""
    host: str = "127.0.0.1"
    """Interface the dashboard binds."""
    port: int = 8071
    """HTTP port (`--dashboard-port` overrides; 0 = any free port)."""
    source: str = "bus"
    """Whose scores: "bus" = every replica's (from rollmesh.scores.>); "local" = this replica's."""
    history_s: float = 3600.0
    """Window of the reward chart."""
    bucket_s: float = 10.0
    """One chart point per bucket."""
    recent_traces: int = 100
    """Rows of the latest-traces table, per app."""
    histogram_window: int = 2000
    """Latest values per function the distributions are drawn from."""
    max_apps: int = 200
    """Apps kept; the least recent are dropped past this."""
    refresh_s: float = 2.0
    """How often the page polls."""
    show_messages: bool = True
    """Keep the latest traces' messages for the page (they are production data: off to show scores only)."""

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in ("bus", "local"):
            raise ValueError("source must be 'bus' or 'local'")
        return v

    @field_validator("history_s", "bucket_s", "refresh_s")
    @classmethod
    def _positive_s(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("recent_traces", "histogram_window", "max_apps")
    @classmethod
    def _positive_count(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class RubricServiceConfig(Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    rubric: list[RubricConfig] = Field(default_factory=list)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    tls: TlsSection = Field(default_factory=TlsSection)

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
