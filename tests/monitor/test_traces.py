"""MonitorTrace validation, conversion and app -> rubric routing, without sockets."""

from __future__ import annotations

import pytest
from rollmesh.errors import InvalidArgumentError
from rollmesh.monitor import traces as tr
from rollmesh.proto.v1 import bus_pb2, rubric_pb2, trajectory_pb2
from rollmesh.rubric.config import RubricConfig
from rollmesh.rubric.scoring import RubricBook

from .conftest import RULES, STRICT, chat

SUBJECT = "rollmesh.monitor.shop"


def trace(**kw) -> bus_pb2.MonitorTrace:
    messages, answer = chat(41)
    fields = {"messages": messages, "answer": answer, "trace_id": "t-1", **kw}
    return tr.make_trace("shop", fields.pop("messages"), **fields)


@pytest.fixture(scope="module")
async def book():
    b = RubricBook([RubricConfig.model_validate(RULES), RubricConfig.model_validate(STRICT)])
    yield b
    await b.close()


def rejected(data: bytes, subject: str = SUBJECT) -> tr.TraceRejected:
    with pytest.raises(tr.TraceRejected) as info:
        tr.parse_trace(data, subject)
    return info.value


def test_a_valid_trace_parses_and_takes_its_app_from_the_subject() -> None:
    t = trace()
    t.app = ""
    parsed = tr.parse_trace(t.SerializeToString(), SUBJECT)
    assert parsed.app == "shop" and parsed.trace_id == "t-1"


@pytest.mark.parametrize(
    ("data", "code", "hint"),
    [
        (b"\xff\x00garbage", tr.UNPARSEABLE, "not a serialized rollmesh.v1.MonitorTrace"),
        (b"", tr.UNPARSEABLE, "0 bytes"),
        (b'{"trace_id": "x"}', tr.UNPARSEABLE, "looks like JSON"),
    ],
)
def test_payloads_that_are_not_traces_are_rejected(data: bytes, code: str, hint: str) -> None:
    r = rejected(data)
    assert r.code == code and hint in r.message and r.reason.startswith(code + ": ")


def test_missing_fields_have_their_own_reasons() -> None:
    no_id = trace()
    no_id.trace_id = ""
    assert rejected(no_id.SerializeToString()).code == tr.MISSING_TRACE_ID
    no_messages = trace()
    del no_messages.messages[:]
    r = rejected(no_messages.SerializeToString())
    assert (r.code, r.trace_id, r.app) == (tr.NO_MESSAGES, "t-1", "shop")
    user_only = trace()
    del user_only.messages[1:]
    assert rejected(user_only.SerializeToString()).code == tr.NO_ASSISTANT_MESSAGE


def test_bad_subjects_and_mismatched_apps_are_rejected() -> None:
    data = trace().SerializeToString()
    assert rejected(data, "rollmesh.monitor.a.b").code == tr.BAD_APP
    assert rejected(data, "somewhere.else").code == tr.BAD_APP
    r = rejected(data, "rollmesh.monitor.other")
    assert r.code == tr.APP_MISMATCH and "rollmesh.monitor.shop" in r.message


def test_trajectory_splits_prompt_and_completion() -> None:
    t = trace(info={"k": 1}, labels={"user": "u1"})
    t.messages.add(role="user", content="and 2+2?")
    t.messages.add(role="assistant", content="4")
    traj = tr.to_trajectory(t)
    assert traj.trajectory_id == "t-1" and traj.task.task_id == "t-1" and traj.task.env == "shop"
    assert [m.role for m in traj.task.prompt] == ["user"]
    assert len(traj.messages) == 4 and traj.task.answer == "42" and traj.task.info["k"] == 1
    assert traj.stop_reason == trajectory_pb2.STOP_REASON_DONE and traj.provenance.trace_id == "t-1"


def test_score_latency_is_from_created_at_else_arrival() -> None:
    t = trace(created_at=100.0, labels={"a": "b"})
    result = rubric_pb2.RewardResult(rewards={"x": 1.0}, reward=1.0, errors={"y": "boom"})
    s = tr.make_score(t, "rules", result, scored_at=100.25)
    assert s.latency_s == pytest.approx(0.25) and s.labels["a"] == "b" and s.errors["y"] == "boom"
    t.ClearField("created_at")
    assert tr.make_score(t, "rules", result, scored_at=100.25, arrived_at=100.0).latency_s == pytest.approx(0.25)
    assert tr.make_score(t, "rules", result, scored_at=100.25, arrived_at=101.0).latency_s == 0.0  # clock skew


def test_make_trace_validates_the_app() -> None:
    with pytest.raises(InvalidArgumentError, match="subject token"):
        tr.make_trace("a.b", [{"role": "assistant", "content": "x"}])
    t = tr.make_trace("ok", [{"role": "assistant", "content": "x"}])
    assert len(t.trace_id) == 32 and t.HasField("created_at")


async def test_scorer_routes_apps_to_their_rubric(book: RubricBook) -> None:
    scorer = tr.TraceScorer(book, {"shop": "rules"}, default="strict")
    shop = await scorer.score(SUBJECT, trace().SerializeToString())
    assert shop.score.rubric == "rules" and dict(shop.score.rewards) == {"correct": 1.0, "polite": 1.0}
    assert shop.score.reward == 1.5 and shop.score.metrics["length"] == 0.0
    other = trace()
    other.app = "blog"
    # "strict" compares the whole completion: wrong
    blog = await scorer.score("rollmesh.monitor.blog", other.SerializeToString())
    assert blog.score.rubric == "strict" and blog.score.reward == 0.0


async def test_partial_errors_are_reported_and_all_failed_is_rejected(book: RubricBook) -> None:
    scorer = tr.TraceScorer(book, {"shop": "rules", "exact": "strict"})
    partial = await scorer.score(SUBJECT, trace(answer="").SerializeToString())
    assert "no reference answer" in partial.score.errors["correct"] and partial.score.rewards["polite"] == 1.0
    no_answer = trace(answer="")
    no_answer.app = "exact"
    with pytest.raises(tr.TraceRejected) as info:
        await scorer.score("rollmesh.monitor.exact", no_answer.SerializeToString())
    assert info.value.code == tr.SCORING_FAILED and "no reference answer" in info.value.message


async def test_unmapped_apps_and_unknown_rubrics(book: RubricBook) -> None:
    scorer = tr.TraceScorer(book, {"shop": "rules"})
    with pytest.raises(tr.TraceRejected) as info:
        scorer.rubric_for("blog")
    assert info.value.code == tr.NO_RUBRIC and "[monitor]" in info.value.message
    with pytest.raises(InvalidArgumentError, match="not configured"):
        tr.TraceScorer(book, {"shop": "nope"})
    with pytest.raises(InvalidArgumentError, match="missing"):
        tr.TraceScorer(book, default="missing")


def test_reason_codes_are_read_back() -> None:
    assert tr.reason_code("NO_RUBRIC: no rubric for app 'x'") == tr.NO_RUBRIC
    assert tr.reason_code("something else") == "OTHER"
