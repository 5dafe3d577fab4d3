"""digits: reply with a number. The reward is graded (the share of the reply's characters that are
digits), so even a model that babbles gets a signal: the RL quickstart on the tiny random model,
whose reward rises within minutes on a CPU. `number` (a metric, weight 0) is 1 when the reply is
exactly one integer.
"""

from __future__ import annotations

import random

from rollmesh.env import Rubric, SingleTurnEnv

from ..parsing import last_assistant_text

SYSTEM_PROMPT = "Reply with a number and nothing else."
ASKS = (
    "Give me a number.",
    "Say a number.",
    "Pick a number between {a} and {b}.",
    "How many {thing} are there?",
    "Reply with any integer.",
    "What is your favourite number?",
)
THINGS = ("stars", "apples", "birds", "days in a week", "robots", "steps")


def digits(completion: list[dict]) -> float:
    """Digits / non-whitespace characters of the reply (0 for an empty reply)."""
    text = "".join(last_assistant_text(completion).split())
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


def number(completion: list[dict]) -> float:
    text = last_assistant_text(completion).strip()
    return float(text.lstrip("-").isdigit())


def load_environment(num_train: int = 200, num_test: int = 50, seed: int = 0, max_tokens: int = 8) -> SingleTurnEnv:
    rng = random.Random(seed)
    rows = []
    for i in range(num_train + num_test):
        a = rng.randint(0, 50)
        ask = rng.choice(ASKS).format(a=a, b=a + rng.randint(1, 50), thing=rng.choice(THINGS))
        rows.append({"task_id": f"d{i:04d}", "question": ask, "answer": ""})
    return SingleTurnEnv(
        name="digits",
        version="0.1.0",
        description="Reply with a number; graded reward (share of digits): the tiny-model RL quickstart.",
        tasks={"train": rows[:num_train], "test": rows[num_train:]},
        system_prompt=SYSTEM_PROMPT,
        reward=Rubric([digits, number], weights=[1.0, 0.0]),
        sampling={"max_tokens": max_tokens},
    )
