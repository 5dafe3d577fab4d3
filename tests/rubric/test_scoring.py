"""Composition of reward functions, weights, partial results and group scoring (in process)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from rollmesh.errors import NotFoundError
from rollmesh.proto.v1 import rubric_pb2 as rubric_pb
from rollmesh.rubric.config import AdvantageConfig, RubricConfig, RubricServiceConfig, to_spec
from rollmesh.rubric.config import RewardFunctionConfig as Fn
from rollmesh.rubric.matching import INLINE_MAX_CHARS
from rollmesh.rubric.scoring import FAILED, PARTIAL, SKIPPED, RubricBook, is_incomplete

from . import reward_functions
from .conftest import trajectory

MOD = "rubric.reward_functions"

MATH = RubricConfig(
    name="math",
    functions=[
        Fn(name="correct", function="exact_match", params={"extract": "last_number"}),
        Fn(name="boxed", function="answer_format", weight=0.0, params={"style": "boxed"}),
        Fn(name="short", function="length_penalty", weight=0.5, params={"max": 10}),
    ],
)
FLAKY = RubricConfig(
    name="flaky",
    functions=[
        Fn(name="correct", function="exact_match"),
        Fn(name="bug", function=f"{MOD}:raises", weight=0.25),
        Fn(name="metric_bug", function=f"{MOD}:not_a_number", weight=0.0),
    ],
)


@pytest.fixture(scope="module")
async def book() -> AsyncIterator[RubricBook]:
    cfg = RubricServiceConfig(rubric=[MATH, FLAKY])
    b = RubricBook.from_config(cfg)
    yield b
    await b.close()


async def test_weighted_total_and_weight_zero_metrics(book: RubricBook) -> None:
    result = await book.get("math").score(trajectory("It is \\boxed{12}", "12"))  # 16 chars: 6 over
    assert dict(result.rewards) == pytest.approx({"correct": 1.0, "short": -0.6})
    assert result.reward == pytest.approx(1.0 + 0.5 * -0.6)
    assert "boxed" not in result.rewards and result.metrics["boxed"] == 1.0
    assert result.metrics[FAILED] == 0.0 and result.metrics[PARTIAL] == 0.0
    assert not result.errors and not is_incomplete(result)


async def test_failed_functions_are_errors_and_the_total_is_marked_partial(book: RubricBook) -> None:
    result = await book.get("flaky").score(trajectory("7", "7"))
    assert dict(result.rewards) == {"correct": 1.0}
    assert result.reward == 1.0  # the successful terms only
    assert set(result.errors) == {"bug", "metric_bug"}
    assert "reward code bug" in result.errors["bug"] and "nan" in result.errors["metric_bug"]
    assert "metric_bug" not in result.metrics
    assert result.metrics[FAILED] == 2.0 and result.metrics[PARTIAL] == 1.0
    assert is_incomplete(result)


async def test_a_failed_metric_does_not_make_the_total_partial(book: RubricBook) -> None:
    rubric = book.compile(
        to_spec(
            RubricConfig(
                name="m",
                functions=[
                    Fn(name="correct", function="exact_match"),
                    Fn(name="tokens", function="length_penalty", weight=0.0, params={"unit": "tokens", "max": 5}),
                ],
            )
        )
    )
    result = await rubric.score(trajectory("3", "3"))  # no turns: the token metric fails
    assert set(result.errors) == {"tokens"} and result.metrics[FAILED] == 1.0
    assert result.metrics[PARTIAL] == 0.0 and not is_incomplete(result)


async def test_group_advantages_leave_out_errored_and_partial_members(book: RubricBook) -> None:
    group = [
        trajectory("12", "12"),  # correct
        trajectory("11", "12"),  # wrong
        trajectory("", "12", error="inference server went away"),  # errored: not scored
        trajectory("12", "12"),
    ]
    results, adv = await book.get("math").score_group(group)
    assert [r.reward for r in results] == pytest.approx([1.0, 0.0, 0.0, 1.0])
    skipped = results[2]
    assert skipped.metrics[SKIPPED] == 1.0 and not skipped.rewards
    assert set(skipped.errors) == {"correct", "boxed", "short"}
    assert "inference server went away" in skipped.errors["correct"]
    # baseline over the three scored members: mean 2/3
    assert adv == pytest.approx([1 / 3, -2 / 3, 0.0, 1 / 3])

    flaky_results, flaky_adv = await book.get("flaky").score_group([trajectory("1", "1"), trajectory("2", "1")])
    assert all(is_incomplete(r) for r in flaky_results) and flaky_adv == [0.0, 0.0]


async def test_group_advantage_settings_come_from_the_rubric(book: RubricBook) -> None:
    cfg = RubricConfig(name="loo", functions=MATH.functions, advantage=AdvantageConfig(leave_one_out=True))
    rubric = book.compile(to_spec(cfg))
    _, adv = await rubric.score_group([trajectory("1", "1"), trajectory("0", "1"), trajectory("0", "1")])
    assert adv == pytest.approx([1.0, -0.5, -0.5])


async def test_functions_and_group_members_run_concurrently() -> None:
    # each `meet` call returns only once `parties` calls are in flight together: sequential
    # scoring would time out instead
    book = RubricBook(allow_inline_imports=True)
    try:
        two = book.compile(
            to_spec(
                RubricConfig(
                    name="pair",
                    functions=[
                        Fn(name="a", function=f"{MOD}:meet", params={"key": "functions", "timeout_s": 5}),
                        Fn(name="b", function=f"{MOD}:meet", params={"key": "functions", "timeout_s": 5}),
                    ],
                )
            )
        )
        result = await two.score(trajectory("x"))
        assert dict(result.rewards) == {"a": 1.0, "b": 1.0}
        group = book.compile(
            to_spec(
                RubricConfig(
                    name="group",
                    functions=[Fn(name="m", function=f"{MOD}:meet", params={"key": "group", "parties": 3})],
                )
            )
        )
        results, _ = await group.score_group([trajectory("x")] * 3)
        assert all(r.rewards["m"] == 1.0 for r in results)
    finally:
        await book.close()


async def test_local_rules_between_concurrent_functions() -> None:
    # Text rules run in the scoring task, the others concurrently around them; a long completion
    # (handed to a worker thread, under the function's time bound) scores as a short one does.
    book = RubricBook(allow_inline_imports=True)
    meet = {"key": "mixed", "timeout_s": 5}
    try:
        mixed = book.compile(
            to_spec(
                RubricConfig(
                    name="mixed",
                    functions=[
                        Fn(name="correct", function="exact_match", params={"extract": "last_number"}),
                        Fn(name="a", function=f"{MOD}:meet", params=meet),
                        Fn(name="polite", function="regex", params={"pattern": "(?i)thanks"}),
                        Fn(name="b", function=f"{MOD}:meet", params=meet),
                    ],
                )
            )
        )
        for completion in ("Thanks! 12", "Thanks! " + "x " * (INLINE_MAX_CHARS // 2) + "12"):
            result = await mixed.score(trajectory(completion, "12"))
            assert dict(result.rewards) == {"correct": 1.0, "a": 1.0, "polite": 1.0, "b": 1.0}
            assert not result.errors
            reward_functions._waiting.pop("mixed")
    finally:
        await book.close()


async def test_book_lookup_and_inline_cache(book: RubricBook) -> None:
    assert book.names == ["flaky", "math"]
    assert [s.name for s in book.specs()] == ["flaky", "math"]
    with pytest.raises(NotFoundError, match=r"no rubric 'nope'.*\['flaky', 'math'\]") as e:
        book.get("nope")
    assert e.value.reason == "UNKNOWN_RUBRIC" and e.value.metadata == {"rubrics": "flaky,math"}
    spec = to_spec(MATH.model_copy(update={"name": "inline"}))
    first = book.compile(spec)
    assert book.compile(rubric_pb.RubricSpec.FromString(spec.SerializeToString())) is first
    assert first.name == "inline" and first.spec == spec
