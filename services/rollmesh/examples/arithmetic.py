"""arithmetic: single-turn integer arithmetic with an exact answer.

Tasks are generated deterministically from a seed, so the train and test splits are stable and
disjoint. Reward `correct` is 1 when the final integer of the reply equals the answer; `format`
(a metric, weight 0) is 1 when the reply is just that number.
"""

from __future__ import annotations

import random

from rollmesh.env import Rubric, SingleTurnEnv

from ..parsing import extract_answer, last_assistant_text, parse_int

SYSTEM_PROMPT = "Solve the arithmetic problem. Reply with the final answer as a single integer."


def correct(completion: list[dict], answer: str) -> float:
    value = parse_int(extract_answer(last_assistant_text(completion)))
    return float(value is not None and str(value) == answer)


def format(completion: list[dict]) -> float:
    text = extract_answer(last_assistant_text(completion))
    return float(parse_int(text) is not None and text.lstrip("-").replace(",", "").isdigit())


def make_problems(n: int, rng: random.Random, max_operand: int, ops: str) -> list[tuple[str, int]]:
    problems = []
    for _ in range(n):
        op = rng.choice(ops)
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "*":
            a, b = rng.randint(0, 12), rng.randint(0, 12)
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        problems.append((f"What is {a} {op} {b}?", value))
    return problems


def load_environment(
    num_train: int = 1000,
    num_test: int = 200,
    seed: int = 0,
    max_operand: int = 50,
    ops: str = "+-*",
) -> SingleTurnEnv:
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty combination of '+-*', got {ops!r}")
    rng = random.Random(seed)
    problems = make_problems(num_train + num_test, rng, max_operand, ops)
    rows = [{"task_id": f"a{i:05d}", "question": q, "answer": str(v)} for i, (q, v) in enumerate(problems)]
    return SingleTurnEnv(
        name="arithmetic",
        version="0.1.0",
        description="Single-turn integer arithmetic with an exact answer.",
        tasks={"train": rows[:num_train], "test": rows[num_train:]},
        system_prompt=SYSTEM_PROMPT,
        reward=Rubric([correct, format], weights=[1.0, 0.0]),
        sampling={"max_tokens": 32},
    )
