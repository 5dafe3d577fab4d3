"""The dashboard's state, without sockets: series, distributions, latest traces, bounds."""

from __future__ import annotations

import json

import pytest
from rollmesh import convert
from rollmesh.monitor.scoreboard import Scoreboard, histogram
from rollmesh.proto.v1 import bus_pb2


def score(app: str, trace_id: str, reward: float, at: float, **kw) -> bus_pb2.MonitorScore:
    s = bus_pb2.MonitorScore(
        trace_id=trace_id,
        app=app,
        rubric="rules",
        reward=reward,
        rewards=kw.pop("rewards", {"correct": reward}),
        metrics={"length": -0.5, "rubric/failed": 0.0},
        latency_s=0.01,
        **kw,
    )
    s.scored_at.FromNanoseconds(int(at * 1e9))
    return s


def test_reward_series_is_bucketed_and_trimmed_to_the_window() -> None:
    board = Scoreboard(history_s=60, bucket_s=10)
    for i, (at, r) in enumerate([(1000.0, 1.0), (1003.0, 0.0), (1012.0, 0.5), (1075.0, 0.25)]):
        board.add_score(score("shop", f"t{i}", r, at))
    snap = board.snapshot("shop", now=1075.0)
    assert snap is not None
    # the buckets of 1000 and 1010 fell out of the 60 s window ending at 1075
    assert [(p["t"], p["n"], p["mean"]) for p in snap["series"]] == [(1070.0, 1, 0.25)]
    board2 = Scoreboard(history_s=600, bucket_s=10)
    for i, (at, r) in enumerate([(1000.0, 1.0), (1003.0, 0.0), (1012.0, 0.5)]):
        board2.add_score(score("shop", f"t{i}", r, at))
    series = board2.snapshot("shop", now=1012.0)["series"]
    assert [(p["t"], p["n"], p["mean"], p["min"], p["max"]) for p in series] == [
        (1000.0, 2, 0.5, 0.0, 1.0),
        (1010.0, 1, 0.5, 0.5, 0.5),
    ]


def test_late_scores_land_in_their_own_bucket() -> None:
    board = Scoreboard(history_s=600, bucket_s=10)
    board.add_score(score("a", "t1", 1.0, 1000.0))
    board.add_score(score("a", "t2", 0.0, 1030.0))
    board.add_score(score("a", "t3", 0.5, 1015.0))  # another replica's, a bit late
    board.add_score(score("a", "t4", 0.5, 1001.0))
    board.add_score(score("a", "t5", 0.5, 10.0))  # far outside the window: not charted, still listed
    series = board.snapshot("a", now=1030.0)["series"]
    assert [(p["t"], p["n"]) for p in series] == [(1000.0, 2), (1010.0, 1), (1030.0, 1)]
    assert board.snapshot("a", now=1030.0)["scored"] == 5


def test_window_trim() -> None:
    board = Scoreboard(history_s=60, bucket_s=10)
    board.add_score(score("a", "t1", 1.0, 1000.0))
    board.add_score(score("a", "t2", 0.0, 1100.0))
    assert [p["t"] for p in board.snapshot("a", now=1100.0)["series"]] == [1100.0]


def test_functions_and_latest_traces() -> None:
    board = Scoreboard(recent_traces=3, histogram_window=4)
    for i in range(6):
        board.add_score(
            score(
                "shop",
                f"t{i}",
                i / 10,
                1000.0 + i,
                rewards={"correct": float(i % 2)},
                errors={"judge": "down"} if i == 5 else {},
            )
        )
    snap = board.snapshot("shop", now=1006.0)
    assert [r["trace_id"] for r in snap["recent"]] == ["t5", "t4", "t3"]  # newest first, bounded
    assert snap["recent"][0]["errors"] == {"judge": "down"} and "rubric/failed" not in snap["recent"][0]["metrics"]
    correct = snap["functions"]["correct"]
    assert correct["kind"] == "reward" and correct["n"] == 4 and correct["mean"] == 0.5  # window of 4
    assert correct["histogram"]["counts"][0] == 2 and correct["histogram"]["counts"][-1] == 2
    assert snap["functions"]["length"]["kind"] == "metric"
    assert snap["functions"]["judge"] == {
        "kind": "failed",
        "n": 0,
        "mean": None,
        "errors": 1,
        "histogram": {"edges": [], "counts": []},
    }
    json.dumps(snap)  # what the HTTP API returns


def test_messages_come_with_local_scores_or_from_the_remembered_ones() -> None:
    board = Scoreboard()
    msgs = convert.messages_to_pb([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 5000}])
    board.remember_messages("t1", msgs)
    board.add_score(score("a", "t1", 1.0, 1000.0))  # from the bus: messages found by trace id
    board.add_score(score("a", "t2", 1.0, 1000.0))  # scored by another replica: none
    t1 = board.trace("a", "t1")
    assert t1 is not None and t1["messages"][0] == {"role": "user", "content": "hi"}
    assert t1["messages"][1]["content"].endswith("(1000 more characters)")
    assert board.trace("a", "t2")["messages"] == [] and board.trace("a", "t2")["has_messages"] is False
    assert board.trace("a", "nope") is None and board.trace("nope", "t1") is None


def test_dead_letters_and_app_bound() -> None:
    board = Scoreboard(max_apps=2)
    board.add_dead_letter("a", "NO_RUBRIC: no rubric for app 'a'", code="NO_RUBRIC", trace_id="t1", at=5.0)
    snap = board.snapshot("a", now=10.0)
    assert snap["dead_lettered"] == {"NO_RUBRIC": 1} and snap["recent_dead_letters"][0]["trace_id"] == "t1"
    board.add_score(score("b", "t", 1.0, 1.0))
    board.add_score(score("c", "t", 1.0, 2.0))
    assert [a["app"] for a in board.apps(now=3.0)] == ["b", "c"]  # "a" was the least recently updated


@pytest.mark.parametrize(
    ("values", "edges0", "counts"),
    [
        ([], None, []),
        ([0.0, 1.0, 1.0], 0.0, [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
        ([2.0, 2.0], 2.0, [2]),
        ([-1.0, 3.0], -1.0, [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ],
)
def test_histogram(values, edges0, counts) -> None:
    h = histogram(values)
    assert h["counts"] == counts and (h["edges"][0] if h["edges"] else None) == edges0


def test_large_traces_are_kept_as_a_compact_copy() -> None:
    from rollmesh.monitor.scoreboard import MESSAGES_BUDGET, keep_messages

    small = convert.messages_to_pb([{"role": "user", "content": "hi"}])
    assert keep_messages(small, 100) is small  # no copy
    big = convert.messages_to_pb([{"role": "user", "content": "u" * 100_000}] * 150)
    kept = keep_messages(big, 15_000_000)
    assert isinstance(kept, list) and len(kept) == 40  # the last ones
    assert sum(len(m["content"]) for m in kept) < MESSAGES_BUDGET + 40 * 40
    board = Scoreboard()
    board.add_score(score("a", "t1", 1.0, 1000.0), kept)
    assert board.trace("a", "t1")["messages"][0]["content"].endswith("more characters)")
