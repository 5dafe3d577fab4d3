"""verifiers classic environments (single-turn with a parser, a multi-turn game, a ToolEnv, a
StatefulToolEnv, a JudgeRubric whose judge is a rollmesh inference server) hosted by
`rollmesh env serve` from .venv-verifiers: they pass the conformance suite, and `rollmesh eval`
with scripted model replies gets the rewards verifiers' own rollout loop and rubric give the same
replies (run in .venv-verifiers without rollmesh in the loop)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, VF_BIN, env_file, serve, stop

pytest.importorskip("transformers")  # the scripted backend tokenizes with the tiny tokenizer


def tool_call(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


# {env: (split, tasks, scripted replies)}
EVALS = {
    "vf-math": ("test", 3, ["<answer>5</answer>"]),  # right for one test task (2 + 3) of three
    "vf-guess": ("train", 4, ["50", "25", "75", "90"]),  # secrets 25, 60, 75, 90: 2, never, 3, 4 guesses
    "vf-tools": ("train", 2, [tool_call("add", a=2, b=3), "5"]),  # right for 2 + 3, wrong for 7 + 8
    "vf-stateful": ("train", 2, [tool_call("open_vault", code="1234"), "gold"]),  # the right code for task 0
    "vf-judge": ("train", 2, ["Paris"]),  # right for France, wrong for Italy; the judge says "yes" to both
}
JUDGE = "scripted-judge"


@pytest.fixture(scope="module")
async def models() -> AsyncIterator[dict[str, str]]:
    """A scripted inference server per environment ({env name: address}) and the judge's, whose
    OpenAI-compatible API is at models["judge"]."""
    from rollmesh.inference.backends.scripted import ScriptedBackend
    from rollmesh.inference.server import InferenceServer

    servers = {
        env: InferenceServer(ScriptedBackend(script, model=f"scripted-{env}")) for env, (_, _, script) in EVALS.items()
    }
    judge = InferenceServer(ScriptedBackend(["yes"], model=JUDGE), openai_port=0)
    for server in [*servers.values(), judge]:
        await server.start()
    assert judge.openai_url
    yield {**{env: server.address for env, server in servers.items()}, "judge": f"{judge.openai_url}/v1"}
    for server in [*servers.values(), judge]:
        await server.stop(0)


@pytest.fixture(scope="module")
async def vf_server(models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One server hosting the example verifiers environments; its judge calls the mesh's model."""
    log = tmp_path_factory.mktemp("vf-server") / "server.log"
    targets = [str(env_file(env)) for env in EVALS]
    judge = {"OPENAI_BASE_URL": models["judge"], "OPENAI_API_KEY": "unused"}
    # A small episode limit and idle timeout keep those conformance checks short.
    args = ["--max-episodes", "64", "--idle-timeout", "3", "--grace", "5"]
    proc, address = await asyncio.to_thread(serve, targets, log, *args, env=judge)
    yield address
    await asyncio.to_thread(stop, proc)


async def run(
    argv: list[Any], stdin: str = "", env: dict[str, str] | None = None, limit_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """A command, without blocking this process's event loop (where the scripted models serve)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=PIPE, stdout=PIPE, stderr=PIPE, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    async with asyncio.timeout(limit_s):
        out, err = await proc.communicate(stdin.encode())
    return subprocess.CompletedProcess(argv, proc.returncode or 0, out.decode(), err.decode())


async def test_conformance(vf_server: str) -> None:
    out = await run([sys.executable, "-m", "rollmesh.cli", "conformance", vf_server, "--json", "--timeout", "20"])
    report = json.loads(out.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if c["status"] == "FAIL"}
    assert out.returncode == 0 and report["passed"], failed
    names = {c["name"] for c in report["checks"]}
    assert {f"episode:{env}" for env in EVALS} | {"score"} <= names


async def evaluate(env: str, address: str, model: str, out: Path) -> list[dict[str, Any]]:
    split, n, _ = EVALS[env]
    r = await run([sys.executable, "-m", "rollmesh.cli", "eval", "--env", env, "--env-address", address,
                   "--model", model, "--split", split, "-n", str(n), "-r", "1", "--no-publish", "--no-progress",
                   "--nats", "nats://127.0.0.1:1", "--out", str(out), "--json"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["counts"]["trajectories"] == n and summary["counts"]["errored"] == 0
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


@pytest.mark.timeout(420)  # five evals and a verifiers process at once: slow on a busy 2-core machine
async def test_eval_rewards_are_the_verifiers_rubrics(vf_server: str, models: dict[str, str], tmp_path: Path) -> None:
    runs = await asyncio.gather(*(evaluate(env, vf_server, models[env], tmp_path / env) for env in EVALS))
    jobs = [
        {
            "env": str(env_file(env)),
            "episodes": [
                {
                    "split": EVALS[env][0],
                    "task_id": t["task"]["task_id"],
                    "replies": [_plain(m) for m in t["messages"] if m["role"] == "assistant"],
                }
                for t in trajs
            ],
        }
        for env, trajs in zip(EVALS, runs, strict=True)
    ]
    judge = {"OPENAI_BASE_URL": models["judge"], "OPENAI_API_KEY": "unused"}
    direct = await run([VF_BIN / "python", Path(__file__).parent / "direct.py"], stdin=json.dumps(jobs), env=judge)
    assert direct.returncode == 0, direct.stderr[-3000:]
    for env, trajs, expected in zip(EVALS, runs, json.loads(direct.stdout), strict=True):
        for t, want in zip(trajs, expected, strict=True):
            assert t["rewards"] == pytest.approx(want["rewards"]), (env, t["task"]["task_id"])
            assert t.get("reward", 0.0) == pytest.approx(want["reward"]), (env, t["task"]["task_id"])
            for turn in t["turns"]:  # token-exact: every model call is a turn with its ids
                assert turn["prompt_ids"] and turn["completion_ids"]
        rewards = sorted(t.get("reward", 0.0) for t in trajs)
        assert rewards[0] < rewards[-1], (env, rewards)  # each script is right for some tasks only
    guess = {t["task"]["task_id"]: t for t in runs[1]}
    assert [len(guess[i]["turns"]) for i in "0123"] == [2, 4, 3, 4]  # env_response and the stop condition
    assert guess["1"]["stop_reason"] == "STOP_REASON_MAX_TURNS" and guess["0"]["rewards"]["solved"] == 1.0
    tools = next(t for t in runs[2] if t["task"]["task_id"] == "0")
    assert [m["role"] for m in tools["messages"]][-3:] == ["assistant", "tool", "assistant"]
    assert tools["rewards"]["add_calls"] == 1.0 and tools["reward"] == 1.0
    vault = {t["task"]["task_id"]: t for t in runs[3]}  # update_tool_args filled the hidden argument
    assert [m["content"] for m in vault["0"]["messages"] if m["role"] == "tool"] == ["gold"]
    assert [m["content"] for m in vault["1"]["messages"] if m["role"] == "tool"] == ["wrong code"]
    judged = {t["task"]["task_id"]: t["rewards"] for t in runs[4]}  # the judge answered through rollmesh
    assert judged == {"0": pytest.approx({"judged": 1.0, "exact": 1.0, "num_turns": 1.0}),
                      "1": pytest.approx({"judged": 1.0, "exact": 0.0, "num_turns": 1.0})}  # fmt: skip


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message of a trajectory (protobuf JSON) as an OpenAI-style dict."""
    calls = [
        {"id": c.get("id", ""), "function": {"name": c["name"], "arguments": c.get("arguments_json", "")}}
        for c in message.get("tool_calls", [])
    ]
    return {"content": message.get("content", ""), "tool_calls": calls}
