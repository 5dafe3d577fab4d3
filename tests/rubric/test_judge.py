"""The LLM judge: parsing on fixed strings, the token bucket on a fake clock, and end to end
against a real inference server running the tiny model (which babbles: its replies never parse,
which is exactly what must be reported as an error, never as 0)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rollmesh.errors import InvalidArgumentError
from rollmesh.natsd import free_port
from rollmesh.rubric.config import RewardFunctionConfig as Fn
from rollmesh.rubric.config import RubricConfig, to_spec
from rollmesh.rubric.context import ScoreContext
from rollmesh.rubric.judge import (
    DEFAULT_PROMPT,
    TokenBucket,
    check_template,
    make_parser,
    parse_number,
    parse_yes_no,
    render,
)
from rollmesh.rubric.scoring import CompiledRubric, RubricBook

from .conftest import trajectory

pytest.importorskip("torch")
pytest.importorskip("transformers")

# ---- parsing (deterministic, on fixed strings) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8", 8.0), ("Score: 7/10", 7.0), ("-2.5 points", -2.5), ("1e2", 100.0), ("no digits", None), ("", None)],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes.", 1.0), ("no", 0.0), ("NO, because", 0.0), ("Yes and no", 1.0), ("yesterday", None), ("maybe", None)],
)
def test_parse_yes_no(text: str, expected: float | None) -> None:
    assert parse_yes_no(text) == expected


def test_parser_with_regex_and_range() -> None:
    grade = make_parser(r"GRADE:\s*(\S+)", lo=1, hi=5)
    assert grade("reasoning... GRADE: 5") == 1.0
    assert grade("GRADE: 3") == 0.5
    assert grade("GRADE: 9") is None  # off the scale it was asked for: unparseable, not clipped
    assert grade("GRADE: excellent") is None
    assert grade("5") is None
    assert make_parser("number", lo=0, hi=10)("7 of 10") == pytest.approx(0.7)
    assert make_parser("yes_no")("Yes") == 1.0
    with pytest.raises(InvalidArgumentError, match="min < max"):
        make_parser("number", lo=5, hi=5)


def test_template_check_and_render() -> None:
    check_template(DEFAULT_PROMPT, "judge")
    check_template("{{literal}} {completion}", "judge")
    with pytest.raises(InvalidArgumentError, match=r"uses \['score'\]"):
        check_template("{completion} {score}", "judge")
    with pytest.raises(InvalidArgumentError, match="bad prompt template"):
        check_template("{completion", "judge")
    ctx = ScoreContext.of(trajectory("It is 4", "4", question="What is 2 + 2?"))
    text = render("Q={question} A={answer} C={completion} {{x}}\n{messages}", ctx)
    assert text == "Q=What is 2 + 2? A=4 C=It is 4 {x}\nuser: What is 2 + 2?\nassistant: It is 4"


def test_token_bucket_on_a_fake_clock() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, burst=2, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]  # the burst
    assert bucket.take() == pytest.approx(0.5)  # then one token every 1/rate s
    now[0] += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 10
    assert [bucket.take(), bucket.take(), bucket.take()] == [0.0, 0.0, pytest.approx(0.5)]  # capped at burst
    assert TokenBucket(0).take() == 0.0  # no limit


# ---- end to end against a real inference server ---------------------------------------------------


@pytest.fixture(scope="module")
async def judge_server(tiny_model_dir: Path, nats_url: str) -> AsyncIterator[Any]:
    from rollmesh.inference.backends.hf import HFBackend
    from rollmesh.inference.server import InferenceServer

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, nats_url=nats_url)
    # count the generations the server really runs (the judge's own counters could lie)
    server.generations = 0
    generate = server.core.generate

    async def counted(prompt_ids: list[int], *args: Any, **kwargs: Any) -> Any:
        server.generations += 1
        server.last_prompt_ids = list(prompt_ids)
        return await generate(prompt_ids, *args, **kwargs)

    server.core.generate = counted
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
async def book(nats_url: str) -> AsyncIterator[RubricBook]:
    b = RubricBook(nats_url=nats_url)
    yield b
    await b.close()


def judge_rubric(book: RubricBook, **params: Any) -> CompiledRubric:
    return book.compile(
        to_spec(
            RubricConfig(
                name="judged",
                functions=[Fn(name="exact", function="exact_match"), Fn(name="judge", function="judge", params=params)],
            )
        )
    )


def endpoint_stats(rubric: CompiledRubric) -> Any:
    return next(f for f in rubric.functions if f.name == "judge").fn.endpoint.stats


async def test_babble_is_a_parse_error_and_the_cache_saves_the_second_call(judge_server, book: RubricBook) -> None:
    rubric = judge_rubric(book, address=judge_server.address, parse=r"VERDICT=(\d+)", max_tokens=12)
    t = trajectory("4", "4", question="What is 2 + 2?")
    before = judge_server.generations
    result = await rubric.score(t)
    assert "judge" not in result.rewards and "judge" not in result.metrics  # not a 0
    assert "unparseable judge output" in result.errors["judge"]
    assert result.rewards["exact"] == 1.0 and result.reward == 1.0 and result.metrics["rubric/partial"] == 1.0
    assert judge_server.generations == before + 1  # greedy: no retry, it would say the same
    again = await rubric.score(t)
    assert again.errors["judge"] == result.errors["judge"]
    assert judge_server.generations == before + 1  # answered from the cache
    assert endpoint_stats(rubric).cache_hits >= 1


async def test_identical_prompts_in_a_group_are_judged_once(judge_server, book: RubricBook) -> None:
    rubric = judge_rubric(book, address=judge_server.address, parse="yes_no", prompt="Grade {completion} please")
    before = judge_server.generations
    results, adv = await rubric.score_group([trajectory("same answer", "x")] * 4)
    assert judge_server.generations == before + 1
    assert all("judge" in r.errors for r in results) and adv == [0.0] * 4  # partial members: no advantage


async def test_unparseable_sampled_output_is_retried_with_fresh_samples(judge_server, book: RubricBook) -> None:
    rubric = judge_rubric(
        book, address=judge_server.address, parse=r"VERDICT=(\d+)", temperature=1.0, retries=2, backoff_s=0.01
    )
    before, retries_before = judge_server.generations, endpoint_stats(rubric).retries
    result = await rubric.score(trajectory("sampled", "x"))
    assert "unparseable judge output" in result.errors["judge"]
    assert judge_server.generations == before + 3 and endpoint_stats(rubric).retries == retries_before + 2


async def test_judge_found_by_model_name_in_the_registry(judge_server, book: RubricBook) -> None:
    rubric = judge_rubric(book, model="tiny", parse=r"VERDICT=(\d+)", prompt="registry {answer}")
    before = judge_server.generations
    result = await rubric.score(trajectory("1", "1"))
    assert "unparseable judge output" in result.errors["judge"] and judge_server.generations == before + 1


async def test_unreachable_judge_is_retried_then_an_error(book: RubricBook) -> None:
    rubric = judge_rubric(book, address=f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.01)
    result = await rubric.score(trajectory("1", "1"))
    assert "UnavailableError" in result.errors["judge"] and "judge" not in result.rewards
    stats = endpoint_stats(rubric)
    assert stats.requests == 3 and stats.retries == 2 and stats.failures == 1


async def test_judge_call_timeout(judge_server, book: RubricBook) -> None:
    rubric = judge_rubric(
        book, address=judge_server.address, max_tokens=200, call_timeout_s=0.001, retries=1, backoff_s=0.01
    )
    result = await rubric.score(trajectory("slow", "x"))
    assert (
        "DeadlineExceededError" in result.errors["judge"] and "did not answer within 0.001 s" in result.errors["judge"]
    )


async def test_the_judge_sends_its_system_message_and_the_rendered_prompt(judge_server, book: RubricBook) -> None:
    from rollmesh.inference.client import InferenceClient

    rubric = judge_rubric(
        book, address=judge_server.address, system="Be strict.", prompt="Grade {completion} for {question}"
    )
    await rubric.score(trajectory("four", "4", question="2 + 2?"))
    expected = [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "Grade four for 2 + 2?"}]
    async with await InferenceClient.connect(judge_server.address) as client:
        assert judge_server.last_prompt_ids == await client.tokenize(expected)
