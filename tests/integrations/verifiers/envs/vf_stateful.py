"""A StatefulToolEnv written against verifiers' classic API: the tool's `vault` argument is hidden
from the model and filled from the rollout's state by `update_tool_args`."""

import verifiers as vf
from datasets import Dataset


def open_vault(code: str, vault: dict) -> str:
    """Opens the vault with a code.

    Args:
        code: the code to try.
    """
    return vault["treasure"] if code == vault["code"] else "wrong code"


class VaultEnv(vf.StatefulToolEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_tool(open_vault, args_to_skip=["vault"])

    async def setup_state(self, state: vf.State) -> vf.State:
        state["vault"] = {"code": state["info"]["code"], "treasure": state["answer"]}
        return state

    def update_tool_args(self, tool_name, tool_args, messages, state, **kwargs) -> dict:
        return {**tool_args, "vault": state["vault"]}


def found_it(completion, answer) -> float:
    return 1.0 if (completion[-1].content or "").strip() == answer else 0.0


def load_environment() -> vf.Environment:
    rows = [
        {
            "question": "The code is 1234. Open the vault and say what is inside.",
            "answer": "gold",
            "info": {"code": "1234"},
        },
        {
            "question": "The code is 9999. Open the vault and say what is inside.",
            "answer": "silver",
            "info": {"code": "9999"},
        },
    ]
    return VaultEnv(dataset=Dataset.from_list(rows), rubric=vf.Rubric(funcs=[found_it]), max_turns=3)
