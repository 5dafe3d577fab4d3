"""verifiers environments rollmesh refuses to host, each with its reason: an EnvGroup (mix
environments with [[rollout.envs]] instead) and a rubric with a group-level reward function."""

import verifiers as vf
from datasets import Dataset


def load_environment(kind: str = "group") -> vf.Environment:
    dataset = Dataset.from_list([{"question": "Say hi.", "answer": "hi"}])

    def correct(completion, answer) -> float:
        return float((completion[-1].content or "") == answer)

    def diversity(completions) -> list[float]:  # a group-level reward function
        return [float(len({c[-1].content for c in completions}))] * len(completions)

    if kind == "group":
        return vf.SingleTurnEnv(dataset=dataset, rubric=vf.Rubric(funcs=[correct, diversity]))
    one = vf.SingleTurnEnv(dataset=dataset, rubric=vf.Rubric(funcs=[correct]))
    return vf.EnvGroup(envs=[one, vf.SingleTurnEnv(dataset=dataset, rubric=vf.Rubric(funcs=[correct]))])
