"""Each built-in reward function and Python import-path functions, scored in process (no sockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rollmesh import convert
from rollmesh.errors import InvalidArgumentError
from rollmesh.proto.v1 import rubric_pb2 as rubric_pb
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from rollmesh.rubric.functions import BUILTINS, describe_builtins
from rollmesh.rubric.scoring import RubricBook

from .conftest import trajectory


@pytest.fixture(scope="module")
async def book() -> AsyncIterator[RubricBook]:
    b = RubricBook(allow_inline_imports=True)
    yield b
    await b.close()


def spec(function: str, params: dict[str, Any] | None = None, name: str = "f") -> rubric_pb.RubricSpec:
    return rubric_pb.RubricSpec(
        name="test",
        functions=[
            rubric_pb.RewardFunctionSpec(name=name, function=function, weight=1.0, params=convert.to_struct(params))
        ],
    )


async def value(book: RubricBook, function: str, t: traj_pb.Trajectory, params: dict[str, Any] | None = None) -> float:
    result = await book.compile(spec(function, params)).score(t)
    assert not result.errors, result.errors
    return result.rewards["f"]


async def error(book: RubricBook, function: str, t: traj_pb.Trajectory, params: dict[str, Any] | None = None) -> str:
    result = await book.compile(spec(function, params)).score(t)
    assert "f" not in result.rewards and result.metrics["rubric/failed"] == 1.0
    return result.errors["f"]


def test_every_builtin_is_documented() -> None:
    docs = describe_builtins()
    assert (
        set(docs)
        == set(BUILTINS)
        >= {
            "exact_match",
            "normalized_match",
            "math_equivalence",
            "regex",
            "answer_format",
            "length_penalty",
            "tool_call_validity",
            "env_score",
            "judge",
        }
    )
    assert all(len(d) > 40 for d in docs.values())


# ---- answers -------------------------------------------------------------------------------------


async def test_exact_match(book: RubricBook) -> None:
    assert await value(book, "exact_match", trajectory(" 42\n", "42")) == 1.0
    assert await value(book, "exact_match", trajectory("The answer is 42", "42")) == 0.0
    assert await value(book, "exact_match", trajectory("The answer is 42", "42"), {"extract": "last_number"}) == 1.0
    assert await value(book, "exact_match", trajectory("Paris", "paris")) == 0.0
    assert await value(book, "exact_match", trajectory("Paris", "paris"), {"case_sensitive": False}) == 1.0
    assert await value(book, "exact_match", trajectory("so \\boxed{x^{2}} done", "x^{2}"), {"extract": "boxed"}) == 1.0
    by_regex = {"extract": r"<ans>(.*?)</ans>"}
    assert await value(book, "exact_match", trajectory("<ans>1</ans> or <ans>7</ans>", "7"), by_regex) == 1.0
    # no answer in the requested form: a real 0 (the model's failure), not an error
    assert await value(book, "exact_match", trajectory("no number here", "7"), {"extract": "last_number"}) == 0.0


async def test_exact_match_scores_the_final_assistant_message(book: RubricBook) -> None:
    turns = [
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "are you sure?"},
        {"role": "assistant", "content": "41"},
    ]
    assert await value(book, "exact_match", trajectory(turns, "41")) == 1.0
    assert await value(book, "exact_match", trajectory(turns, "42")) == 0.0


async def test_normalized_match(book: RubricBook) -> None:
    assert await value(book, "normalized_match", trajectory("  The   Eiffel Tower!", "eiffel tower")) == 1.0
    assert await value(book, "normalized_match", trajectory("An apple.", "apple")) == 1.0
    assert await value(book, "normalized_match", trajectory("a pear", "apple")) == 0.0
    assert await value(book, "normalized_match", trajectory("ANSWER: The Moon", "moon"), {"extract": "answer"}) == 1.0


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("0.5", "1/2", 1.0),
        ("The result is $\\frac{1}{2}$.", "0.5", 1.0),
        ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0),
        ("\\boxed{0.75}", "1/2", 0.0),
        ("I do not know", "1/2", 0.0),
    ],
)
async def test_math_equivalence(book: RubricBook, completion: str, answer: str, expected: float) -> None:
    assert await value(book, "math_equivalence", trajectory(completion, answer)) == expected


async def test_math_equivalence_unparseable_reference_is_an_error(book: RubricBook) -> None:
    assert "cannot parse the reference answer" in await error(book, "math_equivalence", trajectory("1", "\\\\{{"))
    for fn in ("math_equivalence", "exact_match", "normalized_match"):
        assert "no reference answer" in await error(book, fn, trajectory("1", "  "))


# ---- formats -------------------------------------------------------------------------------------


async def test_regex(book: RubricBook) -> None:
    t = trajectory("Final answer: 12")
    assert await value(book, "regex", t, {"pattern": r"answer:\s*\d+"}) == 1.0
    assert await value(book, "regex", t, {"pattern": r"answer:\s*\d+", "full_match": True}) == 0.0
    assert await value(book, "regex", t, {"pattern": r"Final answer: \d+", "full_match": True}) == 1.0
    assert await value(book, "regex", t, {"pattern": "FINAL", "ignore_case": True}) == 1.0
    assert await value(book, "regex", t, {"pattern": "sorry", "must_match": False}) == 1.0
    assert await value(book, "regex", t, {"pattern": "answer", "must_match": False}) == 0.0


async def test_catastrophic_regex_is_an_error_not_a_hang(book: RubricBook) -> None:
    t = trajectory("a" * 35 + "b")
    assert "TimeoutError" in await error(book, "regex", t, {"pattern": r"^(?:(a|aa)+)+$"})


@pytest.mark.parametrize(
    ("style", "completion", "expected"),
    [
        ("boxed", "so \\boxed{3}", 1.0),
        ("boxed", "so 3", 0.0),
        ("answer_line", "work...\nANSWER: 3", 1.0),
        ("answer_line", "the answer is 3", 0.0),
        ("integer", "-1,024", 1.0),
        ("integer", "about 3 apples", 0.0),
        ("number", "ANSWER: 2.5", 1.0),
        ("xml", "<answer>\n3\n</answer>", 1.0),
        ("xml", "<answer></answer>", 0.0),
    ],
)
async def test_answer_format(book: RubricBook, style: str, completion: str, expected: float) -> None:
    assert await value(book, "answer_format", trajectory(completion), {"style": style}) == expected


async def test_length_penalty(book: RubricBook) -> None:
    t = trajectory("x" * 150)
    assert await value(book, "length_penalty", t, {"max": 200}) == 0.0
    assert await value(book, "length_penalty", t, {"max": 100}) == pytest.approx(-0.5)
    assert await value(book, "length_penalty", t, {"max": 100, "scale": 25}) == -1.0  # capped
    assert await value(book, "length_penalty", t, {"target": 100}) == pytest.approx(-0.5)
    assert await value(book, "length_penalty", trajectory("one two three"), {"unit": "words", "max": 2}) == -0.5
    with_ids = trajectory("ignored", completion_ids=list(range(30)))
    assert await value(book, "length_penalty", with_ids, {"unit": "tokens", "max": 20}) == pytest.approx(-0.5)
    assert "turns" in await error(book, "length_penalty", t, {"unit": "tokens", "max": 20})


# ---- tools ---------------------------------------------------------------------------------------

ADD = {
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


def tool_calls(*calls: tuple[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": f"c{i}",
                    "type": "function",
                    "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)},
                }
                for i, (n, a) in enumerate(calls)
            ],
        },
        {"role": "tool", "content": "5", "tool_call_id": "c0"},
        {"role": "assistant", "content": "5"},
    ]


async def test_tool_call_validity(book: RubricBook) -> None:
    tools = {"tools": [ADD]}
    good = trajectory(tool_calls(("add", {"a": 2, "b": 3})))
    assert await value(book, "tool_call_validity", good, tools) == 1.0
    wrong_type = trajectory(tool_calls(("add", {"a": 2, "b": 3}), ("add", {"a": "two", "b": 3})))
    assert await value(book, "tool_call_validity", wrong_type, tools) == 0.0
    assert await value(book, "tool_call_validity", wrong_type, {**tools, "mode": "fraction"}) == 0.5
    for bad in (("mul", {"a": 1, "b": 2}), ("add", "{not json"), ("add", "[1, 2]"), ("add", {"a": 1})):
        assert await value(book, "tool_call_validity", trajectory(tool_calls(bad)), tools) == 0.0, bad
    no_calls = trajectory("5")
    assert await value(book, "tool_call_validity", no_calls, tools) == 1.0
    assert await value(book, "tool_call_validity", no_calls, {**tools, "require_call": True}) == 0.0
    # tool specs carried by the task, the schema as an object or as JSON text
    assert await value(book, "tool_call_validity", trajectory(tool_calls(("add", {"a": 1, "b": 1})), info=tools)) == 1.0
    as_text = {"tools": [{**ADD, "parameters": json.dumps(ADD["parameters"])}]}
    assert await value(book, "tool_call_validity", trajectory(tool_calls(("add", {"a": 1})), info=as_text)) == 0.0


async def test_tool_call_validity_without_specs_is_an_error(book: RubricBook) -> None:
    message = await error(book, "tool_call_validity", trajectory(tool_calls(("add", {"a": 1, "b": 1}))))
    assert "no tool specs" in message


# ---- Python functions by import path -------------------------------------------------------------

MOD = "rubric.reward_functions"


async def test_import_path_functions_use_the_sdk_convention(book: RubricBook) -> None:
    t = trajectory("it is 42, I think", "42", info={"bonus": 2}, state={"solved": 1})
    assert await value(book, f"{MOD}:contains_answer", t) == 1.0
    assert await value(book, f"{MOD}:async_length", trajectory("abcd")) == 4.0
    assert await value(book, f"{MOD}:async_length", trajectory("abcd"), {"scale": 0.5}) == 2.0
    assert await value(book, f"{MOD}:uses_state", t) == 4.0
    assert await value(book, f"{MOD}:async_scorer", t) == 0.5


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        ("not_a_number", "returned nan"),
        ("infinite", "returned inf"),
        ("raises", "RuntimeError: reward code bug"),
        ("returns_text", "ValueError"),
    ],
)
async def test_bad_values_are_errors_not_zero(book: RubricBook, fn: str, expected: str) -> None:
    assert expected in await error(book, f"{MOD}:{fn}", trajectory("x"))


async def test_slow_function_times_out_as_an_error(book: RubricBook) -> None:
    assert "timed out" in await error(book, f"{MOD}:slow", trajectory("x"), {"timeout_s": 0.2})


@pytest.mark.parametrize(
    ("function", "params", "expected"),
    [
        ("no_such_builtin", None, "unknown function 'no_such_builtin'"),
        (f"{MOD}:missing", None, "cannot load"),
        ("no.such.module:fn", None, "cannot load"),
        (f"{MOD}:NOT_CALLABLE", None, "not callable"),
        (f"{MOD}:needs_unknown", None, "gold_label"),
        (f"{MOD}:contains_answer", {"bogus": 1}, "incorrect arguments"),
        ("regex", None, "missing params.pattern"),
        ("regex", {"pattern": "("}, "invalid regular expression"),
        ("regex", {"pattern": "x", "full": True}, "unknown params ['full']"),
        ("exact_match", {"case_sensitive": "yes"}, "must be a bool"),
        ("exact_match", {"extract": "no group"}, "capturing group"),
        ("length_penalty", {"max": 1, "target": 2}, "exactly one"),
        ("answer_format", {"style": "json"}, "must be one of"),
        ("env_score", None, "needs params.address"),
        ("judge", None, "exactly one of params.model"),
        ("judge", {"model": "m"}, "NATS URL"),
        ("judge", {"address": "x:1", "prompt": "{nope}"}, "prompt template uses ['nope']"),
        ("judge", {"address": "x:1", "parse": "score: \\d+"}, "capturing group"),
        ("judge", {"address": "x:1", "min": 1}, "both min and max"),
        ("exact_match", {"timeout_s": 0}, "timeout_s must be >= 0.001"),
    ],
)
def test_bad_functions_fail_at_compile_time(
    book: RubricBook, function: str, params: dict | None, expected: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        book.compile(spec(function, params))


def test_inline_import_paths_need_permission() -> None:
    with pytest.raises(InvalidArgumentError, match="allow_inline_imports") as e:
        RubricBook().compile(spec(f"{MOD}:contains_answer"))
    assert e.value.reason == "IMPORTS_NOT_ALLOWED"


async def test_math_verify_time_out_is_an_error_not_a_zero(book: RubricBook) -> None:
    tower = trajectory("$9^{9^{9^{9}}}$", "1")
    message = await error(book, "math_equivalence", tower, {"timeout_s": 1})
    assert "gave up after 1 s; equivalence unknown" in message


async def test_a_stuck_math_worker_is_killed_and_replaced() -> None:
    import os
    import signal

    from rollmesh.rubric.mathverify import MathVerifier

    verifier = MathVerifier(workers=1)
    try:
        assert (await verifier.check("1/2", "0.5", timeout_s=5)).equivalent
        (worker,) = verifier._idle
        os.kill(worker.proc.pid, signal.SIGSTOP)  # a real hang: the process no longer runs at all
        with pytest.raises(TimeoutError, match=r"longer than 0\.5 s"):
            await verifier.check("1/2", "0.5", timeout_s=0.5)
        assert await worker.proc.wait() == -signal.SIGKILL
        assert (await verifier.check("1/2", "0.5", timeout_s=5)).equivalent  # a fresh worker
        assert verifier._idle and verifier._idle[0] is not worker
    finally:
        await verifier.close()
