"""The environment `rollmesh bench verifiers` runs on both sides: a multi-turn game written
against verifiers' classic API (guess a secret number from "higher" / "lower" hints). It imports
verifiers, so it is loaded only by .venv-verifiers: by `rollmesh env serve` (as a file) and by
verifiers' own env server (as the module `vf_guess`)."""

import verifiers as vf
from datasets import Dataset

SECRETS = [25, 60, 75, 90]


class GuessEnv(vf.MultiTurnEnv):
    async def setup_state(self, state: vf.State) -> vf.State:
        state["guesses"] = 0
        return state

    @vf.stop
    async def guessed_it(self, state: vf.State) -> bool:
        return state.get("solved", False)

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs) -> vf.Messages:
        secret = int(state["answer"])
        state["guesses"] += 1
        text = messages[-1].content or ""
        digits = "".join(c for c in text if c.isdigit())
        if not digits:
            return [vf.UserMessage(content="Reply with a number.")]
        guess = int(digits)
        if guess == secret:
            state["solved"] = True
            state["final_env_response"] = [vf.UserMessage(content="Correct!")]
            return []
        return [vf.UserMessage(content="higher" if guess < secret else "lower")]


def solved(state) -> float:
    return 1.0 if state.get("solved") else 0.0


def fewer_guesses(state) -> float:
    return 1.0 / max(1, state.get("guesses", 1))


def load_environment(max_turns: int = 4) -> vf.Environment:
    rows = [{"question": "Guess my number between 1 and 100.", "answer": str(s)} for s in SECRETS]
    return GuessEnv(
        dataset=Dataset.from_list(rows),
        system_prompt="Reply with a number only.",
        rubric=vf.Rubric(funcs=[solved, fewer_guesses], weights=[1.0, 0.5]),
        max_turns=max_turns,
    )
