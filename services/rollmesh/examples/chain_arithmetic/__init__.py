"""chain-arithmetic: a chain of arithmetic steps, each one starting from the previous answer, played
by an external agent program (agent.py) through RunEpisode.

The task's prompt asks the first step ("What is 7 + 5?"); each later question starts from the
model's own previous answer ("What is 12 * 3?"), so an early mistake carries on. The agent program
makes one model call per step; every call goes through the caller's interception endpoint, so the
episode trains token-exact like a stream episode. The same environment also plays over the Episode
stream (env_response asks the next step), so both ways can be compared.

Rewards: `correct` (1 when the last answer is the chain's true result) and `steps` (weight 0, the
share of steps whose answer was right).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from rollmesh.env import AgentContext, EpisodeResult, Message, MultiTurnEnv, Rubric, State, Task

from ...parsing import parse_int
from .agent import question

AGENT = Path(__file__).with_name("agent.py")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
SYSTEM_PROMPT = "You are a careful calculator. Answer each question with a single integer."


def _answers(completion: list[Message]) -> list[int | None]:
    return [parse_int(m.get("content") or "") for m in completion if m.get("role") == "assistant"]


def correct(completion: list[Message], answer: str, info: dict) -> float:
    got = _answers(completion)
    return float(len(got) == len(info["steps"]) and got[-1] is not None and str(got[-1]) == answer)


def steps(completion: list[Message], info: dict) -> float:
    got = _answers(completion)
    return sum(g == v for g, v in zip(got, info["values"], strict=False)) / len(info["values"])


class ChainArithmeticEnv(MultiTurnEnv):
    """A chain of arithmetic steps, each from the previous answer, solved by an agent program."""

    def __init__(self, *, agent_timeout_s: float = 300.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.agent_timeout_s = agent_timeout_s

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        job = {"messages": task.prompt, "steps": task.info["steps"]}
        result = await agent.run_program(
            [sys.executable, str(AGENT)], input=json.dumps(job), timeout_s=self.agent_timeout_s
        )
        lines = result.stdout.strip().splitlines()
        transcript = json.loads(lines[-1]) if lines else None
        if not isinstance(transcript, dict) or not isinstance(transcript.get("messages"), list):
            raise ValueError("the agent program printed no transcript ({'messages': [...]}) as its last line")
        return EpisodeResult(messages=transcript["messages"])

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        """The stream's way: the next step, from the model's own answer."""
        steps_ = state["steps"]
        done = sum(1 for m in messages if m.get("role") == "assistant")
        value = parse_int(messages[-1].get("content") or "")
        if value is None or done >= len(steps_):
            state["done"] = True
            return []
        op, operand = steps_[done]
        return [{"role": "user", "content": question(value, op, operand)}]

    async def setup_state(self, task: Task, state: State) -> None:
        state["steps"] = task.info["steps"]


def make_chain(rng: random.Random, n_steps: int, max_operand: int) -> tuple[int, list[list], list[int]]:
    value = rng.randint(1, max_operand)
    start, chain, values = value, [], []
    for _ in range(n_steps):
        op = rng.choice("+-*")
        operand = rng.randint(2, 5) if op == "*" else rng.randint(1, max_operand)
        value = OPS[op](value, operand)
        chain.append([op, operand])
        values.append(value)
    return start, chain, values


def load_environment(
    num_train: int = 500, num_test: int = 100, n_steps: int = 3, max_operand: int = 20, seed: int = 0
) -> ChainArithmeticEnv:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    rng = random.Random(seed)
    rows = []
    for i in range(num_train + num_test):
        start, chain, values = make_chain(rng, n_steps, max_operand)
        op, operand = chain[0]
        rows.append(
            {
                "task_id": f"c{i:05d}",
                "question": question(start, op, operand),
                "answer": str(values[-1]),
                "info": {"start": start, "steps": chain, "values": values},
            }
        )
    return ChainArithmeticEnv(
        name="chain-arithmetic",
        version="0.1.0",
        tasks={"train": rows[:num_train], "test": rows[num_train:]},
        system_prompt=SYSTEM_PROMPT,
        max_turns=n_steps,
        reward=Rubric([correct, steps], weights=[1.0, 0.0]),
        sampling={"max_tokens": 16},
    )
