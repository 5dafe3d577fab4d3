"""The conformance suite against real servers on 127.0.0.1: the Python reference server must pass
every check, through the API and through the CLI, and deliberately broken servers must fail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rollmesh.apps.conformance import CHECKS, ConformanceReport, Status, example_arguments, run_conformance
from rollmesh.env import Episode, SingleTurnEnv, ToolEnv
from rollmesh.env.environment import Environment
from rollmesh.env.loader import load_environments
from rollmesh.env.server import SERVICE_NAME, EnvironmentServer, EnvironmentServicer, EpisodeLimits
from rollmesh.errors import NotFoundError
from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
from rollmesh.rpc import RpcLimits, create_server

BIN = Path(sys.executable).parent
SERVER_LINE = re.compile(r"rollmesh env server on (\S+:\d+):")
STATIC_CHECKS = {c.name for c in CHECKS if not c.per_env}
ERROR_CHECKS = {
    "list-tasks-errors",
    "empty-action",
    "score",
    "run-episode",
    "start-errors",
    "stream-order",
    "malformed",
}


async def lookup(query: str, limit: int, exact: bool, mode: str = "fast") -> str:
    """Looks a term up (a tool for the tool-calling path of the episode checks).

    Args:
        query: the term.
        limit: how many results.
        exact: exact matches only.
        mode: unused.
    """
    return f"{limit} result(s) for {query!r} (exact={exact}, mode={mode})"


def lookup_env() -> ToolEnv:
    """A tool environment without Score: covers tool calls and the UNIMPLEMENTED path."""
    tasks = [{"task_id": f"l{i}", "question": f"Look up item {i}.", "answer": f"item {i}"} for i in range(5)]
    return ToolEnv(name="lookup", tools=[lookup], tasks=tasks, max_turns=4)


def reference_envs() -> list[Environment]:
    envs = [*load_environments("rollmesh.examples.arithmetic"), *load_environments("rollmesh.examples.guess_number")]
    try:
        envs += load_environments("rollmesh.examples.wiki_search")
    except (ImportError, NotFoundError):  # not there yet
        pass
    return [*envs, lookup_env()]


def failures(report: ConformanceReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if c.status is Status.FAIL}


# A short idle timeout and a small episode limit, so that those checks run (and run quickly).
LIMITS = EpisodeLimits(max_concurrent_episodes=300, idle_timeout_s=1.5)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[EnvironmentServer]:
    async with EnvironmentServer(reference_envs(), limits=LIMITS) as srv:
        yield srv


# --- the reference server passes ------------------------------------------------------------------


async def test_python_server_passes_every_check(server: EnvironmentServer) -> None:
    start = time.monotonic()
    report = await run_conformance(server.address, timeout_s=20)
    assert failures(report) == {}, report.to_dict()
    assert report.passed
    names = [c.name for c in report.checks]
    envs = server.servicer.envs
    assert set(names) == STATIC_CHECKS | {f"episode:{e}" for e in envs}
    not_passed = [c for c in report.checks if c.status is not Status.PASS]
    assert [c.name for c in not_passed] == ["drain"], not_passed  # opt-in: it stops the server
    assert "lookup: UNIMPLEMENTED NOT_SUPPORTED" in report.result("score").detail
    assert report.result("episode:lookup").detail.startswith("task l0: 2 turn(s)")  # one tool call, then the answer
    assert "episode 301: RESOURCE_EXHAUSTED EPISODE_LIMIT" in report.result("episode-limit").detail
    assert report.result("idle-timeout").detail.count("DEADLINE_EXCEEDED IDLE_TIMEOUT") == 3
    assert all(c.rule and c.spec for c in report.checks)
    assert server.servicer.active == 0
    assert time.monotonic() - start < 20


async def test_a_long_idle_timeout_is_skipped_with_how_to_run_it() -> None:
    async with EnvironmentServer(load_environments("rollmesh.examples.arithmetic")) as srv:  # 300 s
        report = await run_conformance(srv.address, timeout_s=20)
    assert report.passed
    result = report.result("idle-timeout")
    assert result.status is Status.SKIP and "rerun with --max-wait 305" in result.detail


def test_example_arguments_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": ["number", "null"]},
            "b": {"type": "boolean"},
            "e": {"enum": ["first", "second"]},
            "o": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            "optional": {"type": "string"},
        },
        "required": ["s", "i", "n", "b", "e", "o"],
    }
    assert example_arguments(schema) == {
        "s": "test",
        "i": 1,
        "n": 1.0,
        "b": False,
        "e": "first",
        "o": {"x": 1},
    }


def test_cli_against_a_served_environment(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                BIN / "rollmesh",
                "env",
                "serve",
                "rollmesh.examples.guess_number",
                "--port",
                "0",
                "--grace",
                "5",
                "--idle-timeout",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        address = wait_for_address(proc, log)
        out = subprocess.run(
            [BIN / "rollmesh", "conformance", address, "--json", "--timeout", "20", "--drain-pid", str(proc.pid)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["address"] == address and report["passed"] is True
        assert {c["name"] for c in report["checks"]} == STATIC_CHECKS | {"episode:guess-number"}
        for c in report["checks"]:
            assert c["status"] == "PASS", c
            assert isinstance(c["detail"], str) and c["duration_s"] >= 0
            assert c["spec"].startswith("docs/protocol.md ") and c["rule"]
        assert report["checks"][-1]["name"] == "drain"  # last: it stopped the server
        rc = proc.wait(timeout=5)  # the drain check's SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()


def wait_for_address(proc: subprocess.Popen, log: Path, timeout_s: float = 20.0) -> str:
    """The bound address from the server's "rollmesh env server on HOST:PORT: ..." line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if m := SERVER_LINE.search(log.read_text()):
            return m.group(1)
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {log.read_text()}"
        time.sleep(0.05)
    raise TimeoutError(f"no address from the server after {timeout_s} s: {log.read_text()}")


# --- broken servers fail --------------------------------------------------------------------------


class ZeroLoadServicer(EnvironmentServicer):
    """Reports no open episodes, ever: a server whose load figure cannot be trusted."""

    async def Describe(self, request, context):
        response = await super().Describe(request, context)
        response.active_episodes = 0
        return response


async def test_a_server_that_misreports_its_load_fails() -> None:
    limits = RpcLimits()
    servicer = ZeroLoadServicer(
        load_environments("rollmesh.examples.arithmetic"), max_message_bytes=limits.max_message_bytes
    )
    add = env_grpc.add_EnvironmentServiceServicer_to_server
    async with create_server([(add, servicer, SERVICE_NAME)], limits=limits) as rpc_server:
        report = await run_conformance(rpc_server.address, timeout_s=10)
        assert not report.passed
        assert set(failures(report)) == {"cancel-mid-episode", "episode-limit"}, report.to_dict()
        assert "active_episodes is 0 with an episode open" in report.result("cancel-mid-episode").detail

        # ... and the command line says so with its exit code.
        proc = await asyncio.create_subprocess_exec(
            BIN / "rollmesh",
            "conformance",
            rpc_server.address,
            "--json",
            "--timeout",
            "10",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, stdout.decode() + stderr.decode()
        cli_report = json.loads(stdout)
        assert cli_report["passed"] is False
        failed = [c["name"] for c in cli_report["checks"] if c["status"] == "FAIL"]
        assert failed == ["episode-limit", "cancel-mid-episode"]


class NeverDoneEpisode(Episode):
    """Answers every action but never says done."""

    async def step(self, action):
        result = await super().step(action)
        self.done = result.done = False
        result.stop_reason = ""
        return result


class NeverDoneEnv(SingleTurnEnv):
    def episode(self, task, **kwargs):
        return NeverDoneEpisode(self, task, **kwargs)


async def test_a_server_that_never_ends_episodes_fails() -> None:
    env = NeverDoneEnv(name="never-done", tasks=[{"task_id": "n0", "question": "1 + 1?", "answer": "2"}], max_turns=3)
    async with EnvironmentServer([env]) as srv:
        report = await run_conformance(srv.address, timeout_s=10)
    assert not report.passed
    failed = failures(report)
    assert "no step with done = true after max_turns = 3 actions" in failed["episode:never-done"]
    assert {"episode:never-done", "score", "concurrent-episodes", "stream-order"} <= set(failed)
    assert report.result("health").status is Status.PASS


class BareContext:
    """A servicer context whose abort drops the google.rpc.Status details: the same codes, but
    nothing a program can act on."""

    def __init__(self, context) -> None:
        self._context = context

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    async def abort(self, code, details="", trailing_metadata=()):
        await self._context.abort(code, details)


class NoDetailsServicer(EnvironmentServicer):
    async def Episode(self, request_iterator, context):
        await super().Episode(request_iterator, BareContext(context))

    def ListTasks(self, request, context):
        return super().ListTasks(request, BareContext(context))

    async def Score(self, request, context):
        return await super().Score(request, BareContext(context))

    async def RunEpisode(self, request, context):
        return await super().RunEpisode(request, BareContext(context))


async def test_a_server_without_error_details_fails_every_error_rule_and_names_each_case() -> None:
    limits = RpcLimits()
    servicer = NoDetailsServicer(
        load_environments("rollmesh.examples.arithmetic"), max_message_bytes=limits.max_message_bytes
    )
    add = env_grpc.add_EnvironmentServiceServicer_to_server
    async with create_server([(add, servicer, SERVICE_NAME)], limits=limits) as rpc_server:
        report = await run_conformance(rpc_server.address, timeout_s=10)
    failed = failures(report)
    # arithmetic has a Score, so the score check sees no error status
    assert set(failed) == ERROR_CHECKS - {"score"} | {"episode-limit"}, report.to_dict()
    # every case of a check is reported, not only the first
    start_errors = failed["start-errors"]
    for case in ("unknown env", "empty env", "unknown task", "unknown split", "no task", "inline task without prompt"):
        assert f"{case}: NOT_FOUND without ErrorInfo details" in start_errors or (
            f"{case}: INVALID_ARGUMENT without ErrorInfo details" in start_errors
        ), start_errors


async def test_an_unreachable_address_fails_every_check() -> None:
    async with EnvironmentServer(load_environments("rollmesh.examples.arithmetic")) as srv:
        address = srv.address
    report = await run_conformance(address, timeout_s=1)  # the port is closed now
    assert not report.passed
    assert {c.name for c in report.checks} == STATIC_CHECKS | {"episode:*"}
    assert all(c.status is Status.FAIL and "cannot reach" in c.detail for c in report.checks)


def test_every_check_cites_a_section_of_the_spec_and_states_its_rule() -> None:
    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", spec, re.MULTILINE))
    assert {"2.1", "3.2", "13"} <= sections
    for c in CHECKS:
        assert c.spec in sections, f"{c.name} cites section {c.spec}, which docs/protocol.md does not have"
        assert c.rule.endswith(".") and len(c.rule) > 20, c.name
