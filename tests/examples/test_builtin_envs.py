"""The built-in example environments, run in-process through Episode."""

from __future__ import annotations

import re

import pytest
from rollmesh.env import Episode, Task
from rollmesh.examples import arithmetic, guess_number

# ---- arithmetic ----------------------------------------------------------------------------------


def _solve(question: str) -> int:
    m = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question)
    assert m, question
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_arithmetic_tasks_are_deterministic_and_disjoint() -> None:
    env = arithmetic.load_environment(num_train=300, num_test=100, seed=0)
    again = arithmetic.load_environment(num_train=300, num_test=100, seed=0)
    other = arithmetic.load_environment(num_train=300, num_test=100, seed=1)
    assert env.kind == "single_turn" and env.max_turns == 1
    assert {k: len(v) for k, v in env.splits.items()} == {"train": 300, "test": 100}
    for split in ("train", "test"):
        assert [(t.task_id, t.prompt, t.answer) for t in env.tasks(split)] == [
            (t.task_id, t.prompt, t.answer) for t in again.tasks(split)
        ]
    assert [t.prompt for t in env.tasks("test")] != [t.prompt for t in other.tasks("test")]
    assert env.digest == again.digest != other.digest
    assert not {t.task_id for t in env.tasks("train")} & {t.task_id for t in env.tasks("test")}
    for t in env.tasks("train") + env.tasks("test"):
        assert t.prompt[0] == {"role": "system", "content": arithmetic.SYSTEM_PROMPT}
        assert str(_solve(t.prompt[-1]["content"])) == t.answer
    assert env.reward_names == ["correct", "format"]
    assert env.sampling == {"max_tokens": 32}


def test_arithmetic_rejects_bad_ops() -> None:
    with pytest.raises(ValueError, match="ops"):
        arithmetic.load_environment(ops="/")
    env = arithmetic.load_environment(num_train=50, num_test=0, ops="+")
    assert all("+" in t.prompt[-1]["content"] for t in env.tasks("train"))


@pytest.mark.parametrize(
    ("reply", "correct", "fmt"),
    [
        ("42", 1.0, 1.0),
        ("The answer is 42", 1.0, 0.0),
        ("\\boxed{42}", 1.0, 1.0),
        ("Let me think... \\boxed{42}", 1.0, 1.0),
        ("ANSWER: 42", 1.0, 1.0),
        ("41", 0.0, 1.0),
        ("42 or maybe 43", 0.0, 0.0),
        ("I don't know", 0.0, 0.0),
    ],
)
async def test_arithmetic_rewards(reply: str, correct: float, fmt: float) -> None:
    env = arithmetic.load_environment(num_train=1, num_test=1)
    task = Task(task_id="inline", prompt=[{"role": "user", "content": "What is 40 + 2?"}], answer="42")
    ep = Episode(env, task)
    await ep.start()
    step = await ep.step({"role": "assistant", "content": reply})
    assert step.done and step.stop_reason == "done" and step.messages == []
    assert step.rewards == {"correct": correct, "format": fmt}
    assert step.reward == correct  # format has weight 0: a metric, not a reward


async def test_arithmetic_solves_its_own_tasks() -> None:
    env = arithmetic.load_environment(num_train=10, num_test=10, seed=5)
    for task in env.tasks("test"):
        ep = env.episode(task)
        prompt = await ep.start()
        step = await ep.step({"role": "assistant", "content": str(_solve(prompt[-1]["content"]))})
        assert step.reward == 1.0, task
        await ep.close()


# ---- guess-number --------------------------------------------------------------------------------


async def _binary_search(ep: Episode, low: int, high: int, first: str | None = None):
    await ep.start()
    if first is not None:
        hint = await ep.step({"role": "assistant", "content": first})
        assert not hint.done
    while True:
        guess = (low + high) // 2
        step = await ep.step({"role": "assistant", "content": f"My guess is {guess}."})
        if step.done:
            return step
        feedback = step.messages[-1]["content"]
        if feedback == "Higher.":
            low = guess + 1
        elif feedback == "Lower.":
            high = guess - 1
        else:
            raise AssertionError(f"unexpected feedback {feedback!r}")


async def test_guess_number_binary_search_solves_every_test_task() -> None:
    env = guess_number.load_environment(num_tasks=200, low=1, high=100, max_turns=10)
    assert env.kind == "multi_turn"
    tests = env.tasks("test")
    assert len(tests) == 40 and len(env.tasks("train")) == 160
    assert not {t.task_id for t in tests} & {t.task_id for t in env.tasks("train")}
    for task in tests[:20]:
        ep = env.episode(task)
        step = await _binary_search(ep, 1, 100)
        assert step.stop_reason == "done", task
        assert step.messages[-1]["content"] == f"Correct! The number was {task.answer}."
        guesses = step.state["guesses"]
        assert 1 <= guesses <= 7 and guesses == step.turn  # ceil(log2(100)) = 7
        assert step.rewards == {"solved": 1.0, "efficiency": pytest.approx(1 / guesses)}
        assert step.reward == pytest.approx(1.0 + 0.2 / guesses)
        await ep.close()


async def test_guess_number_invalid_reply_gets_a_hint_and_is_not_a_guess() -> None:
    env = guess_number.load_environment(num_tasks=20, low=10, high=20, max_turns=10)
    task = env.tasks("test")[0]
    ep = env.episode(task)
    await ep.start()
    hint = await ep.step({"role": "assistant", "content": "no idea"})
    assert not hint.done
    assert hint.messages == [{"role": "user", "content": "Please answer with a single integer between 10 and 20."}]
    assert ep.state["guesses"] == 0
    step = await ep.step({"role": "assistant", "content": task.answer})
    assert step.done and step.turn == 2
    assert step.state["guesses"] == 1
    assert step.rewards == {"solved": 1.0, "efficiency": 1.0}  # found with its first real guess
    assert step.reward == pytest.approx(1.2)


async def test_guess_number_unsolved_hits_max_turns() -> None:
    env = guess_number.load_environment(num_tasks=10, low=1, high=100, max_turns=3)
    task = env.tasks("train")[0]
    wrong = "1" if task.answer != "1" else "2"
    ep = env.episode(task)
    await ep.start()
    steps = [await ep.step({"role": "assistant", "content": wrong}) for _ in range(3)]
    assert [s.done for s in steps] == [False, False, True]
    assert steps[-1].stop_reason == "max_turns"
    assert steps[-1].rewards == {"solved": 0.0, "efficiency": 0.0} and steps[-1].reward == 0.0
    assert steps[-1].state["guesses"] == 3


def test_guess_number_validates_range() -> None:
    with pytest.raises(ValueError, match="high must be greater than low"):
        guess_number.load_environment(low=5, high=5)
