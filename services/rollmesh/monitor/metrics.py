"""Prometheus metrics of live scoring, served at the dashboard's /metrics.

Observations go into plain counters and bucket arrays (a bisect and a few dict updates per trace:
prometheus_client's labelled metrics cost ~1 µs per call, 15+ calls per trace at thousands of
traces/s) and become metric families only when scraped. Each service has its own registry, so
several can live in one process (tests).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..proto.v1 import bus_pb2 as bus_pb

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
VALUE_BUCKETS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0)
RUBRIC_METRIC = "rubric/"

Labels = tuple[str, ...]


class Histo:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out


class LiveMetrics(Collector):
    """`max_apps` bounds the label values: apps come from subjects anyone can publish on."""

    def __init__(self, *, max_apps: int = 200) -> None:
        self.max_apps = max_apps
        self._apps: set[str] = set()
        self.scored: defaultdict[Labels, int] = defaultdict(int)  # (app, rubric)
        self.dead_lettered: defaultdict[Labels, int] = defaultdict(int)  # (app, reason)
        self.redelivered: defaultdict[Labels, int] = defaultdict(int)  # (app,)
        self.retried: defaultdict[Labels, int] = defaultdict(int)  # (app,)
        self.function_errors: defaultdict[Labels, int] = defaultdict(int)  # (app, function)
        self.judge_errors: defaultdict[Labels, int] = defaultdict(int)  # (app, function)
        self.latency: dict[Labels, Histo] = {}  # (app,)
        self.scoring: dict[Labels, Histo] = {}  # (app,)
        self.reward: dict[Labels, Histo] = {}  # (app,)
        self.function_value: dict[Labels, Histo] = {}  # (app, function)
        self.last_reward: dict[Labels, float] = {}  # (app,)
        self.in_flight = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _app(self, app: str) -> str:
        if app in self._apps:
            return app
        if len(self._apps) >= self.max_apps:
            return "other"
        self._apps.add(app)
        return app

    @staticmethod
    def _histo(table: dict[Labels, Histo], key: Labels, bounds: Sequence[float]) -> Histo:
        h = table.get(key)
        if h is None:
            h = table[key] = Histo(bounds)
        return h

    def observe_score(self, score: bus_pb.MonitorScore, scoring_s: float, judges: frozenset[str]) -> None:
        app = self._app(score.app)
        key = (app,)
        self.scored[(app, score.rubric)] += 1
        self._histo(self.latency, key, LATENCY_BUCKETS).observe(score.latency_s)
        self._histo(self.scoring, key, LATENCY_BUCKETS).observe(scoring_s)
        self._histo(self.reward, key, VALUE_BUCKETS).observe(score.reward)
        self.last_reward[key] = score.reward
        for name, value in score.rewards.items():
            self._histo(self.function_value, (app, name), VALUE_BUCKETS).observe(value)
        for name, value in score.metrics.items():
            if not name.startswith(RUBRIC_METRIC):
                self._histo(self.function_value, (app, name), VALUE_BUCKETS).observe(value)
        for name in score.errors:
            self.function_errors[(app, name)] += 1
            if name in judges:
                self.judge_errors[(app, name)] += 1

    def observe_dead_letter(self, app: str, code: str) -> None:
        self.dead_lettered[(self._app(app or "unknown"), code)] += 1

    def observe_redelivery(self, app: str) -> None:
        self.redelivered[(self._app(app or "unknown"),)] += 1

    def observe_retry(self, app: str) -> None:
        self.retried[(self._app(app or "unknown"),)] += 1

    # ---- scrape ----------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str], table: dict[Labels, int]) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(table.items()):
                family.add_metric(list(key), value)
            return family

        def histogram(name: str, doc: str, labels: list[str], table: dict[Labels, Histo]) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=labels)
            for key, h in sorted(table.items()):
                family.add_metric(list(key), h.buckets(), h.total)
            return family

        yield counter("rollmesh_monitor_traces_scored", "Traces scored and published", ["app", "rubric"], self.scored)
        yield counter(
            "rollmesh_monitor_traces_dead_lettered",
            "Traces parked on the dead-letter subject, by reason code",
            ["app", "reason"],
            self.dead_lettered,
        )
        yield counter(
            "rollmesh_monitor_traces_redelivered", "Deliveries of a trace after its first", ["app"], self.redelivered
        )
        yield counter(
            "rollmesh_monitor_traces_retried",
            "Traces handed back for another delivery after an infrastructure failure",
            ["app"],
            self.retried,
        )
        yield counter(
            "rollmesh_monitor_function_errors",
            "Reward functions that failed on a trace (the trace is still scored by the others)",
            ["app", "function"],
            self.function_errors,
        )
        yield counter(
            "rollmesh_monitor_judge_errors",
            "LLM judge functions that failed on a trace (after their retries)",
            ["app", "function"],
            self.judge_errors,
        )
        yield histogram(
            "rollmesh_monitor_score_latency_seconds",
            "Seconds from a trace's created_at (or arrival) to its published score",
            ["app"],
            self.latency,
        )
        yield histogram(
            "rollmesh_monitor_scoring_seconds", "Seconds the rubric took on one trace", ["app"], self.scoring
        )
        yield histogram("rollmesh_monitor_reward", "Weighted reward of scored traces", ["app"], self.reward)
        yield histogram(
            "rollmesh_monitor_function_value",
            "Value of each reward function (weight 0 = metric) on scored traces",
            ["app", "function"],
            self.function_value,
        )
        last = GaugeMetricFamily("rollmesh_monitor_last_reward", "Reward of the latest scored trace", labels=["app"])
        for key, value in sorted(self.last_reward.items()):
            last.add_metric(list(key), value)
        yield last
        yield GaugeMetricFamily("rollmesh_monitor_in_flight", "Traces being scored now", value=self.in_flight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
