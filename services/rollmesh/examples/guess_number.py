"""guess-number: multi-turn guessing with feedback.

The policy guesses a secret integer; after each guess the environment says "higher" or "lower".
Reward `solved` is 1 when the secret is found within max_turns; `efficiency` (weight 0.2) rewards
finding it in fewer guesses, which binary search does in at most ceil(log2(high - low + 1)).
"""

from __future__ import annotations

import random

from rollmesh.env import Message, MultiTurnEnv, Rubric, State

from ..parsing import parse_int


def solved(state: State) -> float:
    return float(bool(state.get("solved")))


def efficiency(state: State) -> float:
    if not state.get("solved"):
        return 0.0
    return 1.0 / state["guesses"]


class GuessNumberEnv(MultiTurnEnv):
    """Find a secret integer from higher/lower feedback."""

    async def setup_state(self, task, state: State) -> None:
        state["low"], state["high"] = task.info["low"], task.info["high"]
        state["secret"] = int(task.answer)
        state["guesses"] = 0

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        guess = parse_int(messages[-1].get("content") or "")
        if guess is None:
            reply = f"Please answer with a single integer between {state['low']} and {state['high']}."
        else:
            state["guesses"] += 1
            if guess == state["secret"]:
                state["solved"] = state["done"] = True
                reply = f"Correct! The number was {guess}."
            else:
                reply = "Higher." if guess < state["secret"] else "Lower."
        return [{"role": "user", "content": reply}]


def load_environment(num_tasks: int = 500, low: int = 1, high: int = 100, max_turns: int = 10, seed: int = 0):
    if high <= low:
        raise ValueError(f"high must be greater than low, got low={low}, high={high}")
    rng = random.Random(seed)
    prompt = (
        f"I am thinking of an integer between {low} and {high}. Guess it. "
        "Reply with one integer per turn; I will say whether the number is higher or lower."
    )
    rows = [
        {
            "task_id": f"g{i:05d}",
            "question": prompt,
            "answer": str(rng.randint(low, high)),
            "info": {"low": low, "high": high},
        }
        for i in range(num_tasks)
    ]
    split = max(1, num_tasks // 5)
    return GuessNumberEnv(
        name="guess-number",
        version="0.1.0",
        tasks={"train": rows[split:], "test": rows[:split]},
        max_turns=max_turns,
        reward=Rubric([solved, efficiency], weights=[1.0, 0.2]),
        sampling={"max_tokens": 16},
    )
