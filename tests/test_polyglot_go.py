"""The Go client and environment-server helper (clients/go): the generated code is fresh, the Go
tests pass, and the example maze server passes the conformance suite and plays whole episodes with
the Python EnvClient over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import filecmp
import json
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollmesh.apps.conformance import CHECKS, Status, run_conformance
from rollmesh.env.client import EnvClient
from rollmesh.errors import DeadlineExceededError, ResourceExhaustedError

GO = Path(__file__).resolve().parents[1] / "clients" / "go"
SERVER = GO / "bin" / "maze-server"
SERVER_LINE = re.compile(r"rollmesh env server on (\S+:\d+): (.*)")
TOOLCHAIN_UNAVAILABLE = 3  # setup.sh's exit status when it cannot install the toolchain
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module", autouse=True)
def toolchain() -> None:
    """clients/go/setup.sh: installs the toolchain if needed and builds the example server."""
    result = run(GO / "setup.sh", timeout=900)
    if result.returncode == TOOLCHAIN_UNAVAILABLE:
        pytest.skip(f"the Go toolchain cannot be installed here: {result.stderr.strip()[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert SERVER.is_file()


class MazeServer:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([str(SERVER), "--port", "0", *args], stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # printed once listening
        match = SERVER_LINE.search(line)
        if not match:
            self.process.kill()
            raise AssertionError(f"no server line from {SERVER}: {line!r}")
        self.address, self.envs = match.group(1), match.group(2)

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        finally:
            self.process.kill()
            assert self.process.stderr is not None
            self.process.stderr.close()


@pytest.fixture(scope="module")
def server() -> Iterator[MazeServer]:
    srv = MazeServer()
    yield srv
    assert srv.stop() == 0


# --- the Go side ----------------------------------------------------------------------------------


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    result = run(GO / "gen.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    fresh, checked_in = tmp_path / "rollmeshv1", GO / "rollmeshv1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in checked_in.iterdir())
    assert "environment_grpc.pb.go" in names
    _, mismatch, errors = filecmp.cmpfiles(fresh, checked_in, names, shallow=False)
    assert not mismatch and not errors, f"stale generated code: {mismatch + errors}; run clients/go/gen.sh"


def test_go_tests_pass() -> None:
    result = run(GO / "test.sh", "-v")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.findall(r"^--- PASS: (\w+)", result.stdout, re.M)
    assert len(passed) >= 15, passed
    assert "--- FAIL" not in result.stdout


# --- the example server ---------------------------------------------------------------------------


async def test_server_line_and_conformance(server: MazeServer) -> None:
    assert server.envs == "maze"
    report = await run_conformance(server.address, timeout_s=20)
    failed = {c.name: c.detail for c in report.checks if c.status is not Status.PASS}
    assert failed == {}, json.dumps(report.to_dict(), indent=1)
    expected = {c.name for c in CHECKS if not c.per_env} | {"episode:maze"}
    assert {c.name for c in report.checks} == expected


def shortest_path(prompt: str) -> list[str]:
    """Reads the maze drawn in the prompt and finds a shortest path from S to G."""
    rows = [line for line in prompt.splitlines() if line and set(line) <= set("#.SG")]
    find = lambda ch: next((r, row.index(ch)) for r, row in enumerate(rows) if ch in row)  # noqa: E731
    start, goal = find("S"), find("G")
    came: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        for name, (dr, dc) in MOVES.items():
            nxt = (cur[0] + dr, cur[1] + dc)
            if nxt not in came and rows[nxt[0]][nxt[1]] != "#":
                came[nxt] = (cur, name)
                queue.append(nxt)
    path, at = [], goal
    while (step := came[at]) is not None:
        at, name = step
        path.append(name)
    return path[::-1]


def move(i: int, direction: str) -> dict:
    arguments = json.dumps({"direction": direction})
    return {"id": f"call_{i}", "type": "function", "function": {"name": "move", "arguments": arguments}}


async def test_scripted_policy_solves_mazes(server: MazeServer) -> None:
    async with await EnvClient.connect(server.address) as client:
        tasks = await client.tasks("maze", "train", limit=6) + await client.tasks("maze", "test", limit=3)
        assert len(tasks) == 9
        for task in tasks:
            async with client.episode("maze", task.task_id, split=task.split) as ep:
                path = shortest_path(ep.messages[-1]["content"])
                assert ",".join(path) == task.answer
                for i, direction in enumerate(path):
                    assert not ep.done
                    step = await ep.step({"role": "assistant", "content": "", "tool_calls": [move(i, direction)]})
                    assert step.messages[0]["role"] == "tool" and step.messages[0]["tool_call_id"] == f"call_{i}"
                assert step.done and step.stop_reason == "done" and step.turn == len(path)
                assert step.reward == 1.0 and step.rewards == {"solved": 1.0}
                assert step.metrics["moves"] == len(path) and step.state["solved"] is True
                rewards, reward = await client.score("maze", ep.task, ep.messages, step.state)
                assert (rewards, reward) == ({"solved": 1.0}, 1.0)


async def test_all_moves_in_one_action_and_giving_up(server: MazeServer) -> None:
    async with await EnvClient.connect(server.address) as client:
        (task,) = await client.tasks("maze", "test", limit=1)
        async with client.episode("maze", task.task_id, split="test") as ep:
            path = shortest_path(ep.messages[-1]["content"])
            calls = [move(i, d) for i, d in enumerate(path)]
            step = await ep.step({"role": "assistant", "content": "", "tool_calls": calls})
            assert step.done and step.turn == 1 and step.reward == 1.0
            assert len(step.messages) == len(path) and "Solved" in step.messages[-1]["content"]
        async with client.episode("maze", task.task_id, split="test") as ep:
            blocked = await ep.step({"role": "assistant", "content": "", "tool_calls": [move(0, "up")]})
            assert "wall" in blocked.messages[0]["content"] and not blocked.done
            step = await ep.step("I give up.")
            assert step.done and step.reward == 0.0 and step.stop_reason == "done"
            rewards, _ = await client.score("maze", ep.task, ep.messages, step.state)
            assert rewards == {"solved": 0.0}


async def test_limits_from_the_command_line() -> None:
    srv = MazeServer("--max-episodes", "2", "--idle-timeout", "0.5")
    try:
        async with await EnvClient.connect(srv.address) as client:
            limits = (await client.describe()).limits
            assert (limits.max_concurrent_episodes, limits.episode_idle_timeout_s) == (2, 0.5)
            async with client.episode("maze", "train-000"), client.episode("maze", "train-001"):
                assert (await client.describe()).active_episodes == 2
                with pytest.raises(ResourceExhaustedError):
                    async with client.episode("maze", "train-002"):
                        pass
            # The server frees a slot when it sees the stream end, a moment after the client closes it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not (await client.describe()).active_episodes:
                    break
                await asyncio.sleep(0.05)
            async with client.episode("maze", "train-000") as ep:
                await ep.step({"role": "assistant", "content": "", "tool_calls": [move(0, "down")]})
                await asyncio.sleep(1.0)  # idle past the server's timeout
                with pytest.raises(DeadlineExceededError):
                    await ep.step("too late")
            assert (await client.describe()).active_episodes == 0
    finally:
        assert srv.stop() == 0


async def test_sigterm_with_an_open_episode_exits_zero() -> None:
    srv = MazeServer("--grace", "0.5")
    async with await EnvClient.connect(srv.address) as client:
        async with client.episode("maze", "train-000"):
            assert (await client.describe()).active_episodes == 1
            assert srv.stop() == 0
