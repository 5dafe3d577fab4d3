"""Prometheus exposition of live scoring, without sockets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from rollmesh.monitor.metrics import LiveMetrics
from rollmesh.proto.v1 import bus_pb2


def samples(m: LiveMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scores_dead_letters_and_errors_are_exposed() -> None:
    m = LiveMetrics()
    s = bus_pb2.MonitorScore(
        app="shop",
        rubric="rules",
        reward=0.75,
        rewards={"correct": 1.0},
        metrics={"length": -0.5, "rubric/failed": 1.0},
        errors={"judge": "timed out"},
        latency_s=0.02,
    )
    m.observe_score(s, 0.001, frozenset({"judge"}))
    m.observe_score(s, 0.001, frozenset({"judge"}))
    m.observe_dead_letter("shop", "NO_MESSAGES")
    m.observe_redelivery("shop")
    got = samples(m)
    assert got[("rollmesh_monitor_traces_scored_total", (("app", "shop"), ("rubric", "rules")))] == 2
    assert got[("rollmesh_monitor_traces_dead_lettered_total", (("app", "shop"), ("reason", "NO_MESSAGES")))] == 1
    assert got[("rollmesh_monitor_traces_redelivered_total", (("app", "shop"),))] == 1
    assert got[("rollmesh_monitor_judge_errors_total", (("app", "shop"), ("function", "judge")))] == 2
    assert got[("rollmesh_monitor_function_errors_total", (("app", "shop"), ("function", "judge")))] == 2
    assert got[("rollmesh_monitor_score_latency_seconds_count", (("app", "shop"),))] == 2
    assert got[("rollmesh_monitor_score_latency_seconds_bucket", (("app", "shop"), ("le", "0.025")))] == 2
    assert got[("rollmesh_monitor_score_latency_seconds_bucket", (("app", "shop"), ("le", "0.01")))] == 0
    assert got[("rollmesh_monitor_reward_bucket", (("app", "shop"), ("le", "0.8")))] == 2
    assert got[("rollmesh_monitor_reward_bucket", (("app", "shop"), ("le", "0.7")))] == 0
    assert (
        got[("rollmesh_monitor_function_value_bucket", (("app", "shop"), ("function", "length"), ("le", "+Inf")))] == 2
    )
    assert not any(dict(k[1]).get("function") == "rubric/failed" for k in got)
    assert got[("rollmesh_monitor_last_reward", (("app", "shop"),))] == 0.75


def test_app_labels_are_bounded() -> None:
    m = LiveMetrics(max_apps=2)
    for app in ("a", "b", "c", "d"):
        m.observe_dead_letter(app, "NO_RUBRIC")
    got = samples(m)
    apps = {dict(k[1])["app"] for k in got if k[0] == "rollmesh_monitor_traces_dead_lettered_total"}
    assert apps == {"a", "b", "other"}
    assert got[("rollmesh_monitor_traces_dead_lettered_total", (("app", "other"), ("reason", "NO_RUBRIC")))] == 2
