"""A toy verifiers task to train on: reply with a number; the reward is graded (the share of the
reply's characters that are digits), so even the tiny random model gets a signal to climb."""

import verifiers as vf
from datasets import Dataset

ASKS = ["Give me a number.", "Say a number.", "Reply with any integer.", "How many stars are there?"]


def digits(completion, **kwargs) -> float:
    text = "".join((completion[-1].content or "").split()) if completion else ""
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


def load_environment(num_train: int = 64) -> vf.Environment:
    rows = [{"question": f"{ASKS[i % len(ASKS)]} ({i})", "answer": ""} for i in range(num_train)]
    return vf.SingleTurnEnv(
        dataset=Dataset.from_list(rows),
        system_prompt="Reply with a number and nothing else.",
        rubric=vf.Rubric(funcs=[digits]),
    )
