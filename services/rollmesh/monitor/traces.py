"""Production traces (rollmesh.v1.MonitorTrace) as the rubric sees them: validation, conversion to a
Trajectory for scoring, the MonitorScore of a result, and the routing app -> rubric.

Transport-free: the NATS consumer (live.py) hands bytes and a subject in and gets a score back, or a
TraceRejected whose code and message become the dead letter's reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from .. import convert
from ..bus import PREFIX
from ..errors import InvalidArgumentError
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import messages_pb2 as msg_pb
from ..proto.v1 import rubric_pb2 as rubric_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rubric.config import APP_RE

if TYPE_CHECKING:  # producers import this module: keep the scoring stack out of their import
    from ..rubric.scoring import CompiledRubric, RubricBook

MONITOR_PREFIX = f"{PREFIX}.monitor."

# Dead-letter reason codes (the reason reads "<CODE>: <what to fix>").
UNPARSEABLE = "UNPARSEABLE"
BAD_APP = "BAD_APP"
APP_MISMATCH = "APP_MISMATCH"
MISSING_TRACE_ID = "MISSING_TRACE_ID"
NO_MESSAGES = "NO_MESSAGES"
NO_ASSISTANT_MESSAGE = "NO_ASSISTANT_MESSAGE"
NO_RUBRIC = "NO_RUBRIC"
SCORING_FAILED = "SCORING_FAILED"
TOO_MANY_DELIVERIES = "TOO_MANY_DELIVERIES"
SCORE_TOO_LARGE = "SCORE_TOO_LARGE"
INTERNAL = "INTERNAL"
REASON_CODES = (
    UNPARSEABLE,
    BAD_APP,
    APP_MISMATCH,
    MISSING_TRACE_ID,
    NO_MESSAGES,
    NO_ASSISTANT_MESSAGE,
    NO_RUBRIC,
    SCORING_FAILED,
    TOO_MANY_DELIVERIES,
    SCORE_TOO_LARGE,
    INTERNAL,
)


class TraceRejected(Exception):
    """A trace that will never score, whatever the retries: it goes to the dead-letter subject."""

    def __init__(self, code: str, message: str, *, app: str = "", trace_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.app = app
        self.trace_id = trace_id

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


def reason_code(reason: str) -> str:
    """The code of a dead letter's reason ("NO_RUBRIC: ..." -> "NO_RUBRIC"); "OTHER" when it has none."""
    code = reason.partition(":")[0].strip()
    return code if code in REASON_CODES else "OTHER"


def app_of(subject: str) -> str:
    """The app of rollmesh.monitor.<app>; TraceRejected(BAD_APP) for anything else."""
    app = subject.removeprefix(MONITOR_PREFIX) if subject.startswith(MONITOR_PREFIX) else ""
    if not APP_RE.match(app):
        raise TraceRejected(
            BAD_APP,
            f"subject {subject!r} is not rollmesh.monitor.<app> with <app> one token of letters, digits, '-', '_' "
            "or '='",
        )
    return app


def parse_trace(data: bytes, subject: str) -> bus_pb.MonitorTrace:
    """A valid MonitorTrace of the subject's app (trace.app filled in when empty), or TraceRejected."""
    app = app_of(subject)
    try:
        trace = bus_pb.MonitorTrace.FromString(data)
    except DecodeError as e:
        raise TraceRejected(UNPARSEABLE, f"{_not_a_trace(data)} ({e})", app=app) from e
    if not trace.ListFields():
        raise TraceRejected(UNPARSEABLE, _not_a_trace(data), app=app)
    if not trace.trace_id:
        raise TraceRejected(
            MISSING_TRACE_ID, "the trace has no trace_id; give each trace a unique id (it deduplicates)", app=app
        )
    if trace.app and trace.app != app:
        raise TraceRejected(
            APP_MISMATCH,
            f"trace.app is {trace.app!r} but it was published on {subject!r}; publish on rollmesh.monitor.{trace.app} "
            "or leave app empty",
            app=app,
            trace_id=trace.trace_id,
        )
    trace.app = app
    if not trace.messages:
        raise TraceRejected(
            NO_MESSAGES, "the trace has no messages; send the conversation", app=app, trace_id=trace.trace_id
        )
    if not any(m.role == "assistant" for m in trace.messages):
        raise TraceRejected(
            NO_ASSISTANT_MESSAGE,
            "the trace has no assistant message, so there is nothing to score; include the agent's reply "
            "(role 'assistant')",
            app=app,
            trace_id=trace.trace_id,
        )
    return trace


def _not_a_trace(data: bytes) -> str:
    what = f"the payload ({len(data)} bytes) is not a serialized rollmesh.v1.MonitorTrace"
    if data[:1] in (b"{", b"["):
        what += "; it looks like JSON: publish the protobuf encoding (MonitorTrace.SerializeToString())"
    return what


def to_trajectory(trace: bus_pb.MonitorTrace) -> traj_pb.Trajectory:
    """The trajectory a rubric scores: the prompt is everything before the first assistant message,
    the task's answer and info are the trace's, env = the app."""
    first = next((i for i, m in enumerate(trace.messages) if m.role == "assistant"), len(trace.messages))
    task = msg_pb.Task(env=trace.app, task_id=trace.trace_id, prompt=trace.messages[:first], answer=trace.answer)
    if trace.HasField("info"):
        task.info.CopyFrom(trace.info)
    t = traj_pb.Trajectory(
        trajectory_id=trace.trace_id,
        task=task,
        messages=trace.messages,
        stop_reason=traj_pb.STOP_REASON_DONE,
    )
    t.provenance.trace_id = trace.trace_id
    return t


def all_failed(result: rubric_pb.RewardResult, rubric: CompiledRubric) -> bool:
    return len(result.errors) >= len(rubric.functions)


MAX_ERROR_CHARS = 1000


def make_score(
    trace: bus_pb.MonitorTrace,
    rubric: str,
    result: rubric_pb.RewardResult,
    *,
    scored_at: float,
    arrived_at: float | None = None,
) -> bus_pb.MonitorScore:
    """The MonitorScore of a result; latency from the trace's created_at, else its arrival."""
    start = trace.created_at.ToNanoseconds() / 1e9 if trace.HasField("created_at") else arrived_at
    score = bus_pb.MonitorScore(
        trace_id=trace.trace_id,
        app=trace.app,
        rubric=rubric,
        rewards=result.rewards,
        reward=result.reward,
        metrics=result.metrics,
        errors={k: v if len(v) <= MAX_ERROR_CHARS else v[:MAX_ERROR_CHARS] + "…" for k, v in result.errors.items()},
        labels=trace.labels,
        latency_s=max(0.0, scored_at - start) if start is not None else 0.0,
    )
    score.scored_at.FromNanoseconds(int(scored_at * 1e9))
    return score


@dataclass
class ScoredTrace:
    trace: bus_pb.MonitorTrace
    score: bus_pb.MonitorScore
    # Functions of the rubric that are LLM judges (their errors are counted apart).
    judges: frozenset[str]
    scoring_s: float
    size_bytes: int  # of the serialized trace


class TraceScorer:
    """Routes each app's traces to its rubric and scores them. `apps` maps app -> rubric name;
    `default` is the rubric of the other apps (None: they are rejected with NO_RUBRIC)."""

    def __init__(self, book: RubricBook, apps: Mapping[str, str] | None = None, default: str | None = None) -> None:
        self.book = book
        self.apps = dict(apps or {})
        self.default = default
        missing = sorted({r for r in [*self.apps.values(), default] if r is not None and r not in book.names})
        if missing:
            raise InvalidArgumentError(
                f"[monitor] names rubrics {missing} that are not configured; configured: {book.names or 'none'}",
                reason="BAD_CONFIG",
            )
        self._judges = {
            name: frozenset(f.name for f in book.get(name).functions if f.function == "judge") for name in book.names
        }

    def rubric_for(self, app: str, trace_id: str = "") -> CompiledRubric:
        name = self.apps.get(app, self.default)
        if name is None:
            raise TraceRejected(
                NO_RUBRIC,
                f"no rubric for app {app!r}: map it in [monitor] apps (configured: {sorted(self.apps) or 'none'}) "
                "or set [monitor] default",
                app=app,
                trace_id=trace_id,
            )
        return self.book.get(name)

    async def score(self, subject: str, data: bytes, *, arrived_at: float | None = None) -> ScoredTrace:
        """TraceRejected for a trace that cannot be scored (bad payload, missing fields, no rubric,
        every reward function failed). Other exceptions are infrastructure failures: retry."""
        trace = parse_trace(data, subject)
        rubric = self.rubric_for(trace.app, trace.trace_id)
        t0 = time.perf_counter()
        result = await rubric.score(to_trajectory(trace))
        scoring_s = time.perf_counter() - t0
        if all_failed(result, rubric):
            errors = "; ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))
            raise TraceRejected(
                SCORING_FAILED,
                f"every reward function of rubric {rubric.name!r} failed: {errors}"[:2000],
                app=trace.app,
                trace_id=trace.trace_id,
            )
        score = make_score(trace, rubric.name, result, scored_at=time.time(), arrived_at=arrived_at)
        return ScoredTrace(trace, score, self._judges.get(rubric.name, frozenset()), scoring_s, len(data))


def make_trace(
    app: str,
    messages: Iterable[Mapping[str, Any]] | Iterable[msg_pb.Message],
    *,
    answer: str = "",
    info: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    trace_id: str | None = None,
    created_at: float | None = None,
) -> bus_pb.MonitorTrace:
    """A MonitorTrace from chat messages (OpenAI-style dicts or Message protos), with a fresh
    trace_id and created_at = now unless given. InvalidArgumentError for an invalid app."""
    if not APP_RE.match(app):
        raise InvalidArgumentError(
            f"invalid app {app!r}: use letters, digits, '-', '_' or '=' (it is a NATS subject token)",
            reason="INVALID_SUBJECT_TOKEN",
        )
    pbs = [m if isinstance(m, msg_pb.Message) else convert.message_to_pb(m) for m in messages]
    trace = bus_pb.MonitorTrace(
        trace_id=trace_id or uuid.uuid4().hex,
        app=app,
        messages=pbs,
        answer=answer,
        labels=dict(labels or {}),
    )
    if info:
        trace.info.CopyFrom(convert.to_struct(info))
    ts = Timestamp()
    ts.FromNanoseconds(int((time.time() if created_at is None else created_at) * 1e9))
    trace.created_at.CopyFrom(ts)
    return trace
