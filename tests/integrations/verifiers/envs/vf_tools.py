"""A tool environment written against verifiers' classic API: a Python function as the tool, a
reward for the right final answer (and the tool-call counts verifiers adds as metrics)."""

import verifiers as vf
from datasets import Dataset


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


def load_environment() -> vf.Environment:
    rows = [{"question": f"Use the add tool: what is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (7, 8)]]

    def correct_answer(completion, answer) -> float:
        last = completion[-1]
        return 1.0 if last.role == "assistant" and (last.content or "").strip() == answer else 0.0

    return vf.ToolEnv(
        dataset=Dataset.from_list(rows),
        tools=[add],
        rubric=vf.Rubric(funcs=[correct_answer]),
        max_turns=3,
    )
