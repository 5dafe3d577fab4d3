"""A single-turn math environment written against verifiers' classic API: an XML parser and a
rubric of two weighted reward functions (correctness 1.0, format 0.2)."""

import verifiers as vf
from datasets import Dataset

SYSTEM_PROMPT = "Solve the problem. Reply as <answer>NUMBER</answer>."


def _rows(pairs: list[tuple[int, int]]) -> list[dict]:
    return [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in pairs]


def load_environment(num_train: int = 6) -> vf.Environment:
    parser = vf.XMLParser(["answer"], answer_field="answer")

    def correct_answer(completion, answer, **kwargs) -> float:
        return 1.0 if (parser.parse_answer(completion) or "").strip() == answer else 0.0

    rubric = vf.Rubric(funcs=[correct_answer, parser.get_format_reward_func()], weights=[1.0, 0.2], parser=parser)
    train = [(i, 5 - i) for i in range(num_train)]  # every sum is 5
    return vf.SingleTurnEnv(
        dataset=Dataset.from_list(_rows(train)),
        eval_dataset=Dataset.from_list(_rows([(1, 1), (2, 3), (4, 4)])),
        system_prompt=SYSTEM_PROMPT,
        parser=parser,
        rubric=rubric,
    )
