"""What the dashboard shows, per app, in bounded memory: the reward over time (mean/min/max per time
bucket over a history window), the latest values of each reward function (for distributions),
the latest traces with their scores (and messages, when this process saw them), dead letters.

Plain Python, no transport: the live scorer (or a subscription to rollmesh.scores.>) feeds it,
the HTTP dashboard reads JSON-ready snapshots.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import convert
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import messages_pb2 as msg_pb

RUBRIC_METRIC = "rubric/"
MAX_CONTENT_CHARS = 4000
MAX_MESSAGES = 100
# A trace up to this size is kept as received (no copy); a larger one as a compact copy of its last
# COMPACT_MESSAGES messages within about MESSAGES_BUDGET characters, so memory stays bounded per row.
KEEP_AS_IS_BYTES = 32 * 1024
MESSAGES_BUDGET = 16_000
COMPACT_MESSAGES = 40

Kept = Sequence[msg_pb.Message] | list[dict[str, Any]]
HISTOGRAM_BINS = 10


@dataclass
class Bucket:
    start: float
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)

    def as_dict(self) -> dict[str, float]:
        return {"t": self.start, "n": self.n, "mean": self.total / self.n, "min": self.lo, "max": self.hi}


@dataclass
class TraceRow:
    # The score as received; turned into JSON only when a page asks (most rows are never shown).
    score: bus_pb.MonitorScore
    scored_at: float
    messages: Kept | None = None

    @property
    def trace_id(self) -> str:
        return self.score.trace_id

    def as_dict(self, *, with_messages: bool = False) -> dict[str, Any]:
        s = self.score
        out: dict[str, Any] = {
            "trace_id": s.trace_id,
            "rubric": s.rubric,
            "reward": s.reward,
            "rewards": dict(s.rewards),
            "metrics": {k: v for k, v in s.metrics.items() if not k.startswith(RUBRIC_METRIC)},
            "errors": dict(s.errors),
            "latency_s": s.latency_s,
            "scored_at": self.scored_at,
            "labels": dict(s.labels),
            "has_messages": self.messages is not None,
        }
        if with_messages:
            out["messages"] = [m if isinstance(m, dict) else _message(m) for m in (self.messages or ())]
        return out


def _message(m: msg_pb.Message, limit: int = MAX_CONTENT_CHARS) -> dict[str, Any]:
    d = dict(convert.message_from_pb(m))
    content = d.get("content") or ""
    if len(content) > limit:
        d["content"] = content[:limit] + f"… ({len(content) - limit} more characters)"
    return d


def keep_messages(messages: Sequence[msg_pb.Message], size_bytes: int) -> Kept:
    """What a row keeps of a trace's messages (`size_bytes`: the serialized trace's size)."""
    if size_bytes <= KEEP_AS_IS_BYTES and len(messages) <= MAX_MESSAGES:
        return messages
    tail = list(messages)[-COMPACT_MESSAGES:]
    limit = MESSAGES_BUDGET // max(1, len(tail))
    return [_message(m, limit) for m in tail]


@dataclass
class AppBoard:
    app: str
    recent: deque[TraceRow]
    window: int
    buckets: deque[Bucket] = field(default_factory=deque)
    values: dict[str, deque[float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    function_errors: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    recent_dead: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))
    scored: int = 0
    last_at: float = 0.0

    def value(self, name: str, kind: str, v: float) -> None:
        values = self.values.get(name)
        if values is None:
            values = self.values[name] = deque(maxlen=self.window)
            self.kinds[name] = kind
        values.append(v)


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Equal-width bins over [0, 1] when every value lies there (the usual reward range), else over
    [min, max]; one bin when all values are equal."""
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if hi == lo:
        return {"edges": [lo, hi], "counts": [len(values)]}
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


class Scoreboard:
    def __init__(
        self,
        *,
        history_s: float = 3600.0,
        bucket_s: float = 10.0,
        recent_traces: int = 100,
        histogram_window: int = 2000,
        max_apps: int = 200,
        remembered_messages: int = 5000,
    ) -> None:
        self.history_s = history_s
        self.bucket_s = bucket_s
        self.recent_traces = recent_traces
        self.histogram_window = histogram_window
        self.max_apps = max_apps
        self._apps: OrderedDict[str, AppBoard] = OrderedDict()
        # Messages of traces this process scored, for scores that come back over the bus.
        self._messages: OrderedDict[str, Kept] = OrderedDict()
        self._remembered = remembered_messages

    def _board(self, app: str) -> AppBoard:
        board = self._apps.get(app)
        if board is None:
            board = self._apps[app] = AppBoard(app, deque(maxlen=self.recent_traces), self.histogram_window)
            while len(self._apps) > self.max_apps:  # the least recently updated app goes
                self._apps.popitem(last=False)
        self._apps.move_to_end(app)
        return board

    def remember_messages(self, trace_id: str, messages: Kept) -> None:
        self._messages[trace_id] = messages
        while len(self._messages) > self._remembered:
            self._messages.popitem(last=False)

    def add_score(self, score: bus_pb.MonitorScore, messages: Kept | None = None) -> None:
        board = self._board(score.app)
        at = score.scored_at.ToNanoseconds() / 1e9 if score.HasField("scored_at") else time.time()
        if messages is None:
            messages = self._messages.pop(score.trace_id, None)
        board.recent.append(TraceRow(score, at, messages))
        board.scored += 1
        board.last_at = max(board.last_at, at)
        if (bucket := self._bucket(board, at)) is not None:
            bucket.add(score.reward)
        for name, v in score.rewards.items():
            board.value(name, "reward", v)
        for name, v in score.metrics.items():
            if not name.startswith(RUBRIC_METRIC):
                board.value(name, "metric", v)
        if score.errors:
            board.function_errors.update(score.errors.keys())
        self._trim(board, board.last_at)

    def add_dead_letter(self, app: str, reason: str, *, code: str, trace_id: str = "", at: float | None = None) -> None:
        board = self._board(app or "unknown")
        board.dead_letters[code] += 1
        board.recent_dead.append(
            {"at": time.time() if at is None else at, "trace_id": trace_id, "code": code, "reason": reason[:500]}
        )

    def _bucket(self, board: AppBoard, at: float) -> Bucket | None:
        """The bucket of time `at`; None when it is older than the history window."""
        start = math.floor(at / self.bucket_s) * self.bucket_s
        buckets = board.buckets
        if not buckets or buckets[-1].start < start:
            buckets.append(Bucket(start))
            return buckets[-1]
        if start < board.last_at - self.history_s:
            return None
        # A late score (another replica's clock, a slow judge) goes into its own bucket.
        for i in range(len(buckets) - 1, -1, -1):
            if buckets[i].start == start:
                return buckets[i]
            if buckets[i].start < start:
                buckets.insert(i + 1, Bucket(start))
                return buckets[i + 1]
        buckets.appendleft(Bucket(start))
        return buckets[0]

    def _trim(self, board: AppBoard, now: float) -> None:
        while board.buckets and board.buckets[0].start < now - self.history_s:
            board.buckets.popleft()

    # ---- reading ---------------------------------------------------------------------------------

    def apps(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        out = []
        for app, board in sorted(self._apps.items()):
            self._trim(board, now)
            n = sum(b.n for b in board.buckets)
            out.append(
                {
                    "app": app,
                    "scored": board.scored,
                    "dead_lettered": sum(board.dead_letters.values()),
                    "mean_reward": sum(b.total for b in board.buckets) / n if n else None,
                    "last_at": board.last_at or None,
                }
            )
        return out

    def snapshot(self, app: str, now: float | None = None) -> dict[str, Any] | None:
        board = self._apps.get(app)
        if board is None:
            return None
        now = time.time() if now is None else now
        self._trim(board, now)
        functions = {}
        for name, values in sorted(board.values.items()):
            vs = list(values)
            functions[name] = {
                "kind": board.kinds[name],
                "n": len(vs),
                "mean": sum(vs) / len(vs) if vs else None,
                "errors": board.function_errors.get(name, 0),
                "histogram": histogram(vs),
            }
        for name, n in board.function_errors.items():
            functions.setdefault(
                name, {"kind": "failed", "n": 0, "mean": None, "errors": n, "histogram": histogram([])}
            )
        return {
            "app": app,
            "now": now,
            "history_s": self.history_s,
            "bucket_s": self.bucket_s,
            "scored": board.scored,
            "dead_lettered": dict(board.dead_letters),
            "series": [b.as_dict() for b in board.buckets],
            "functions": functions,
            "recent": [row.as_dict() for row in reversed(board.recent)],
            "recent_dead_letters": list(reversed(board.recent_dead)),
        }

    def trace(self, app: str, trace_id: str) -> dict[str, Any] | None:
        board = self._apps.get(app)
        if board is None:
            return None
        for row in board.recent:
            if row.trace_id == trace_id:
                return row.as_dict(with_messages=True)
        return None
