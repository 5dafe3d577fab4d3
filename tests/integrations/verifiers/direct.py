"""Run in the verifiers virtual environment: plays each given episode with verifiers' own
rollout loop alone (a verifiers Client that replays the given assistant messages, no rollmesh),
scores it with the environment's rubric, and prints {"rewards", "reward"} per episode as JSON.

stdin: [{"env": path of the module, "episodes": [{"split", "task_id", "replies": [message, ...]}]}, ...];
stdout: one list of results per environment."""

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

from verifiers.legacy.clients.client import Client
from verifiers.legacy.types import Response, ResponseMessage, ToolCall


class Replay(Client):
    def __init__(self, replies: list[dict]) -> None:
        super().__init__(object())
        self.replies = list(replies)

    async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs):
        reply = self.replies.pop(0)
        calls = [
            ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in reply.get("tool_calls") or []
        ]
        message = ResponseMessage(
            content=reply.get("content", ""), tool_calls=calls or None, finish_reason="stop", is_truncated=False
        )
        return Response(id="r", created=0, model=model, message=message)

    def setup_client(self, config): ...
    async def to_native_tool(self, tool): ...
    async def to_native_prompt(self, messages): ...
    async def get_native_response(self, *a, **kw): ...
    async def raise_from_native_response(self, response): ...
    async def from_native_response(self, response): ...
    async def close(self): ...


async def play(job: dict) -> list[dict]:
    path = Path(job["env"])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = module.load_environment()
    out = []
    for ep in job["episodes"]:
        rows = env.get_dataset() if ep["split"] == "train" else env.get_eval_dataset()
        row = next(r for r in rows if str(r["example_id"]) == ep["task_id"])
        state = await env.rollout(row, Replay(ep["replies"]), "replay")
        await env.rubric.score_rollout(state)
        out.append({"rewards": dict(state["metrics"]), "reward": state["reward"]})
    return out


async def main() -> None:
    print(json.dumps([await play(job) for job in json.load(sys.stdin)]))


asyncio.run(main())
