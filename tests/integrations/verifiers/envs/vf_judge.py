"""A verifiers environment scored by an LLM judge (`JudgeRubric` with its default client, which
reads OPENAI_BASE_URL: pointed at a rollmesh inference server's OpenAI-compatible API) plus an
exact-match reward."""

import verifiers as vf
from datasets import Dataset


def load_environment(judge_model: str = "scripted-judge") -> vf.Environment:
    rubric = vf.JudgeRubric(judge_model=judge_model)

    async def judged(judge, prompt, completion, answer, state) -> float:
        return 1.0 if "yes" in (await judge(prompt, completion, answer, state)).lower() else 0.0

    def exact(completion, answer) -> float:
        return 1.0 if (completion[-1].content or "").strip() == answer else 0.0

    rubric.add_reward_func(judged, weight=0.5)
    rubric.add_reward_func(exact, weight=1.0)
    rows = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "Capital of Italy?", "answer": "Rome"}]
    return vf.SingleTurnEnv(dataset=Dataset.from_list(rows), rubric=rubric)
