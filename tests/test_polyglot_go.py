"""The Go module (clients/go) end to end, against real processes only: it builds offline as a
module, its generated code is fresh, its own tests pass, including those against the Python
environment, inference and rubric servers and a nats-server (a trace published from Go is scored
by the Python rubric service and read back in Go); its examples run; the example maze server
passes `rollmesh conformance` (drain included), plays whole episodes with the Python EnvClient,
registers in the NATS registry (`rollmesh ls` lists it) and exits 0 on SIGTERM. With certificates
of `rollmesh certs init`: the maze server with mutual TLS passes conformance as the orchestrator,
refuses a reader's episode (PERMISSION_DENIED, MISSING_ROLE) and connections without a certificate
of its CA, registers over TLS in a NATS that maps certificates to users, and the Go client plays
on a Python server with mutual TLS. The example digits server is a replica of the Python `digits`
environment: over mutual TLS it describes, lists and scores as the Python one does, and passes
conformance."""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rollmesh import bus
from rollmesh.apps.conformance import CHECKS, Options, Status, run_conformance
from rollmesh.env.client import EnvClient
from rollmesh.errors import DeadlineExceededError, ResourceExhaustedError
from rollmesh.natsd import EmbeddedNats
from rollmesh.proto.v1 import bus_pb2
from rollmesh.proto.v1 import environment_pb2 as env_pb
from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
from rollmesh.registry import Registry
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_info
from rollmesh.security import pki

ROOT = Path(__file__).resolve().parents[1]
GO = ROOT / "clients" / "go"
BIN = GO / "bin"
ROLLMESH = ROOT / ".venv" / "bin" / "rollmesh"
TOOLCHAIN_UNAVAILABLE = 3  # setup.sh's exit status when it cannot install the toolchain
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
RUBRICS = """
[server]
port = 0

[monitor]
default = "rules"
durable = "go-tests"

[[rubric]]
name = "rules"

[[rubric.function]]
name = "correct"
function = "exact_match"
params = { extract = "last_number" }

[[rubric.function]]
name = "polite"
function = "regex"
weight = 0.5
params = { pattern = "(?i)thanks" }
"""


def run(
    *cmd: str | Path, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


class Server:
    """A server process whose output goes to a log; `match` is the line that says it is ready."""

    def __init__(self, log: Path, *cmd: str | Path, ready: str, timeout_s: float = 120) -> None:
        self.log = log
        self.process = subprocess.Popen([str(c) for c in cmd], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not (match := re.search(ready, log.read_text(errors="replace"))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"{cmd[0]} not ready (exit {self.process.poll()}): {log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.match = match

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.process.kill()


def maze(log: Path, *args: str) -> Server:
    return Server(log, BIN / "maze-server", "--port", "0", *args, ready=r"rollmesh env server on (\S+:\d+): (.*)")


@pytest.fixture(scope="module", autouse=True)
def toolchain() -> None:
    """clients/go/setup.sh: installs the toolchain if needed, vendors the sources, builds bin/."""
    result = run(GO / "setup.sh", timeout=900)
    if result.returncode == TOOLCHAIN_UNAVAILABLE:
        pytest.skip(f"the Go toolchain cannot be installed here: {result.stderr.strip()[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("maze-server", "digits-server", "play", "generate", "score", "trace"):
        assert (BIN / name).is_file(), name


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    """A nats-server of this module's own: the Go tests make streams and registry records."""
    with EmbeddedNats() as server:
        yield server.url


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("go-servers")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the mesh's identities (`rollmesh certs init`): env, orchestrator, reader, ..."""
    return pki.init(tmp_path_factory.mktemp("certs"))


def identity(certs: Path, name: str) -> list[str | Path]:
    """The TLS flags of an identity of `certs`."""
    return ["--tls-cert", certs / f"{name}.pem", "--tls-key", certs / f"{name}-key.pem", "--tls-ca", certs / "ca.pem"]


@pytest.fixture(scope="module")
def servers(logs: Path, nats_url: str, tiny_model_dir: Path, certs: Path) -> Iterator[dict[str, str]]:
    """The Python servers the Go clients talk to, as the ROLLMESH_TEST_* variables of the Go tests."""
    (logs / "rubrics.toml").write_text(RUBRICS)
    rubric = ["rubric", "serve", "--config", logs / "rubrics.toml", "--nats", nats_url, "--port", "0", "--no-dashboard"]
    inference = "inference serve --backend hf --dtype float32 --name tiny --port 0 --model".split()
    started: list[Server] = []
    try:
        env = Server(
            logs / "env.log", ROLLMESH, "env", "serve", "guess-number", "--port", "0", ready=r"server on (\S+:\d+):"
        )
        started.append(env)
        llm = Server(logs / "inference.log", ROLLMESH, *inference, tiny_model_dir, ready=r"server on (\S+:\d+):")
        started.append(llm)
        scorer = Server(logs / "rubric.log", ROLLMESH, *rubric, ready=r"(?s)server on (\S+:\d+):.*live scoring on")
        started.append(scorer)
        secure = ["env", "serve", "arithmetic", "--port", "0", *identity(certs, "env")]
        mtls = Server(logs / "env-mtls.log", ROLLMESH, *secure, ready=r"server on (\S+:\d+):")
        started.append(mtls)
        yield {
            "ROLLMESH_TEST_ENV": env.match.group(1),
            "ROLLMESH_TEST_INFERENCE": llm.match.group(1),
            "ROLLMESH_TEST_RUBRIC": scorer.match.group(1),
            "ROLLMESH_TEST_NATS": nats_url,
            "ROLLMESH_TEST_NATS_SERVER": str(ROOT / ".venv" / "bin" / "nats-server"),
            "ROLLMESH_TEST_TLS_ENV": mtls.match.group(1),
            "ROLLMESH_TEST_CERTS": str(certs),
        }
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def server(logs: Path) -> Iterator[Server]:
    srv = maze(logs / "maze.log")
    yield srv
    assert srv.stop() == 0


# --- the module -----------------------------------------------------------------------------------


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    result = run(GO / "gen.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    fresh, checked_in = tmp_path / "rollmeshv1", GO / "rollmeshv1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in checked_in.iterdir())
    assert {"environment_grpc.pb.go", "errors.pb.go"} <= set(names)
    _, mismatch, errors = filecmp.cmpfiles(fresh, checked_in, names, shallow=False)
    assert not mismatch and not errors, f"stale generated code: {mismatch + errors}; run clients/go/gen.sh"


def test_a_module_built_offline_that_leaves_the_clone_clean(tmp_path: Path) -> None:
    gomod = (GO / "go.mod").read_text()
    assert gomod.startswith("module github.com/rollmesh/rollmesh/clients/go\n\ngo 1.19\n")
    for requirement in (
        "github.com/nats-io/nats.go v1.22.1",
        "google.golang.org/grpc v1.33.3",
        "google.golang.org/protobuf v1.28.1",
    ):
        assert f"\t{requirement}\n" in gomod
    # the modules of the build, as the go command sees them: offline, from vendor/, an empty module cache
    env = {"GO111MODULE": "on", "GOFLAGS": "-mod=vendor", "GOPROXY": "off", "GOPATH": str(tmp_path)}
    template = "{{with .Module}}{{.Path}} {{.Version}}{{end}}"
    listed = run("go", "list", "-deps", "-test", "-f", template, "./...", env=env, cwd=GO, timeout=300)
    assert listed.returncode == 0, listed.stderr
    modules = dict(line.split(" ", 1) for line in set(listed.stdout.splitlines()) if line)
    assert modules.pop("github.com/rollmesh/rollmesh/clients/go") == ""  # the main module
    assert modules["github.com/nats-io/nats.go"] == "v1.22.1" and len(modules) == 11, modules
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing was downloaded
    # setup.sh's outputs are ignored; no go.sum is made or kept
    status = run("git", "status", "--porcelain", "--untracked-files=all", "clients/go", timeout=60)
    made = [
        line for line in status.stdout.splitlines() if re.search(r"clients/go/(vendor|\.debian|bin)/|go\.sum", line)
    ]
    assert status.returncode == 0 and made == [], made
    ignored = run("git", "check-ignore", "clients/go/vendor", "clients/go/.debian", "clients/go/bin", timeout=60)
    assert ignored.stdout.split() == ["clients/go/vendor", "clients/go/.debian", "clients/go/bin"]


def test_the_readme_programs_build() -> None:
    """Every complete program of the README compiles against the module as it is."""
    blocks = re.findall(r"```go\n(.*?)```", (GO / "README.md").read_text(), re.S)
    programs = [b for b in blocks if re.search(r"^package main$", b, re.M)]
    assert len(programs) == 3
    env = {"GO111MODULE": "on", "GOFLAGS": "-mod=vendor", "GOPROXY": "off"}
    for i, program in enumerate(programs):
        where = BIN / "readme" / str(i)  # bin/ is git-ignored
        where.mkdir(parents=True, exist_ok=True)
        (where / "main.go").write_text(program)
        built = run("go", "build", "-o", where / "program", f"./bin/readme/{i}", env=env, cwd=GO, timeout=300)
        assert built.returncode == 0, f"README program {i}:\n{built.stderr}"


# Tests of the Go module that need a live server: they must run here, not skip.
LIVE_GO_TESTS = {
    "TestDescribeAndListTasksOfThePythonServer",
    "TestPlayEpisodesWithBinarySearch",
    "TestReasonsFromThePythonServer",
    "TestContextDeadlines",
    "TestGenerateFromChatAndFromTokens",
    "TestRubricClient",
    "TestPublishNeedsAStream",
    "TestScoreReader",
    "TestTraceToScoreRoundTrip",
    "TestRegisterHeartbeatAndDeregister",
    "TestMutualTLSWithThePythonServer",
    "TestRegisterOverTLSWithAClientCertificate",
    "TestMonitorOverTLS",
}


def test_go_tests_pass(servers: dict[str, str]) -> None:
    result = run(GO / "test.sh", "-v", env=servers, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    passed = set(re.findall(r"^--- PASS: (\w+)", result.stdout, re.M))
    assert LIVE_GO_TESTS <= passed, LIVE_GO_TESTS - passed
    assert len(passed) >= 45, sorted(passed)
    assert "--- FAIL" not in result.stdout and "--- SKIP" not in result.stdout, result.stdout[-4000:]


# --- the examples ---------------------------------------------------------------------------------


def test_the_examples_run(servers: dict[str, str]) -> None:
    env, llm, rubric = servers["ROLLMESH_TEST_ENV"], servers["ROLLMESH_TEST_INFERENCE"], servers["ROLLMESH_TEST_RUBRIC"]
    play = run(BIN / "play", "--env", env, "--inference", llm, "--split", "test", "--max-tokens", "8", timeout=300)
    assert play.returncode == 0, play.stderr
    turns = re.findall(r"^turn (\d+): (\d+) tokens", play.stdout, re.M)
    done = re.search(r"^done: stop_reason=(STOP_REASON_\w+) reward=(\S+) has_reward=true", play.stdout, re.M)
    assert done and [int(t) for t, _ in turns] == list(range(1, len(turns) + 1)), play.stdout
    assert done.group(1) == ("STOP_REASON_MAX_TURNS" if len(turns) == 10 else "STOP_REASON_DONE"), play.stdout

    generate = run(BIN / "generate", "--inference", llm, "--max-tokens", "4", timeout=300)
    assert generate.returncode == 0, generate.stderr
    assert "model tiny (hf)" in generate.stdout and len(re.findall(r"logprob -\d", generate.stdout)) >= 1
    reply = re.search(r'^reply: (".*") \(finish', generate.stdout, re.M)
    assert reply and f"from token ids: {reply.group(1)}" in generate.stdout, generate.stdout  # the same greedy reply

    score = run(BIN / "score", "--rubric", rubric, "--name", "rules", "--reply", "Thanks: it is 4", timeout=120)
    assert score.returncode == 0 and "reward 1.5\n" in score.stdout, score.stdout + score.stderr
    unknown = run(BIN / "score", "--rubric", rubric, "--name", "rulez", timeout=120)
    assert unknown.returncode != 0 and "reason UNKNOWN_RUBRIC" in unknown.stderr

    app = f"go-example-{time.time_ns()}"
    trace = run(
        BIN / "trace", "--nats", servers["ROLLMESH_TEST_NATS"], "--app", app, "--reply", "Thanks: 5", timeout=120
    )
    assert trace.returncode == 0, trace.stderr
    published = re.search(r"^published trace (\w{32}) \(stream MONITOR", trace.stdout, re.M)
    assert published and f"score of {published.group(1)} by rubric rules: reward 0.5," in trace.stdout, trace.stdout


# --- the example server ---------------------------------------------------------------------------


async def test_conformance_drain_included(logs: Path) -> None:
    srv = maze(logs / "conformance.log", "--max-episodes", "200", "--idle-timeout", "2")
    try:
        report = await run_conformance(srv.match.group(1), options=Options(timeout_s=30, drain_pid=srv.process.pid))
        failed = {c.name: c.detail for c in report.checks if c.status is not Status.PASS}
        assert failed == {}, json.dumps(report.to_dict(), indent=1)
        expected = {c.name for c in CHECKS if not c.per_env} | {"episode:maze"}
        assert {c.name for c in report.checks} == expected
        assert srv.process.wait(timeout=30) == 0  # the drain check's SIGTERM
    finally:
        srv.process.kill()


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


async def test_scripted_policy_solves_mazes(server: Server) -> None:
    async with await EnvClient.connect(server.match.group(1)) as client:
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


async def test_all_moves_in_one_action_and_giving_up(server: Server) -> None:
    async with await EnvClient.connect(server.match.group(1)) as client:
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
            step = await ep.step("")  # an empty reply is a move: here, giving up
            assert step.done and step.reward == 0.0 and step.stop_reason == "done"
            rewards, _ = await client.score("maze", ep.task, ep.messages, step.state)
            assert rewards == {"solved": 0.0}


async def test_limits_from_the_command_line(logs: Path) -> None:
    srv = maze(logs / "limits.log", "--max-episodes", "2", "--idle-timeout", "0.5", "--max-message-mb", "0.5")
    try:
        async with await EnvClient.connect(srv.match.group(1)) as client:
            limits = (await client.describe()).limits
            assert (limits.max_concurrent_episodes, limits.episode_idle_timeout_s) == (2, 0.5)
            assert limits.max_message_bytes == 512 * 1024
            async with client.episode("maze", "train-000"), client.episode("maze", "train-001"):
                assert (await client.describe()).active_episodes == 2
                with pytest.raises(ResourceExhaustedError) as refused:
                    async with client.episode("maze", "train-002"):
                        pass
                assert refused.value.reason == "EPISODE_LIMIT" and refused.value.metadata == {"limit": "2"}
            # The server frees a slot when it sees the stream end, a moment after the client closes it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not (await client.describe()).active_episodes:
                    break
                await asyncio.sleep(0.05)
            async with client.episode("maze", "train-000") as ep:
                await ep.step({"role": "assistant", "content": "", "tool_calls": [move(0, "down")]})
                await asyncio.sleep(1.0)  # idle past the server's timeout
                with pytest.raises(DeadlineExceededError) as idle:
                    await ep.step("too late")
                assert idle.value.reason == "IDLE_TIMEOUT"
            assert (await client.describe()).active_episodes == 0
    finally:
        assert srv.stop() == 0
    srv = maze(logs / "no-idle.log", "--idle-timeout", "0")
    try:
        async with await EnvClient.connect(srv.match.group(1)) as client:
            assert (await client.describe()).limits.episode_idle_timeout_s == 0  # 0: no idle timeout
    finally:
        assert srv.stop() == 0


async def test_sigterm_with_an_open_episode_exits_zero(logs: Path) -> None:
    srv = maze(logs / "sigterm.log", "--grace", "0.5")
    async with await EnvClient.connect(srv.match.group(1)) as client:
        async with client.episode("maze", "train-000"):
            assert (await client.describe()).active_episodes == 1
            start = time.monotonic()
            assert srv.stop() == 0
            assert 0.4 <= time.monotonic() - start < 10  # the open episode held the shutdown for its grace
    assert "terminated: shutting down, 1 episode(s) open" in srv.log.read_text()


async def test_the_maze_server_registers_and_deregisters(logs: Path, nats_url: str) -> None:
    srv = maze(logs / "registered.log", "--nats", nats_url, "--max-episodes", "64", "--advertise-host", "localhost")
    address = srv.match.group(1)
    try:
        async with await EnvClient.connect(address) as client:
            instance = (await client.describe()).server.instance_id
        async with await Registry.connect(nats_url) as registry:
            (record,) = await registry.list("environment", "maze")
            assert record.kind == bus_pb2.SERVICE_KIND_ENVIRONMENT and record.instance_id == instance
            assert record.address == "localhost:" + address.rsplit(":", 1)[1]
            assert (record.capacity, record.version, record.protocol_version) == (64, "0.1.0", "v1")
            assert abs(record.heartbeat_at.ToSeconds() - time.time()) < 10 and record.started_at.ToSeconds() > 0
            listed = run(ROLLMESH, "ls", "--nats", nats_url, timeout=60)
            assert listed.returncode == 0 and re.search(
                rf"environment\s+maze\s+0\.1\.0\s+{record.address}", listed.stdout
            )
            # a heartbeat re-puts the record every TTL/3
            deadline = time.monotonic() + registry.ttl_s
            while time.monotonic() < deadline:
                (again,) = await registry.list("environment", "maze")
                if again.heartbeat_at.ToNanoseconds() > record.heartbeat_at.ToNanoseconds():
                    break
                await asyncio.sleep(0.2)
            assert again.heartbeat_at.ToNanoseconds() > record.heartbeat_at.ToNanoseconds()
            assert again.started_at == record.started_at
            assert srv.stop() == 0
            assert await registry.list("environment", "maze") == []  # deleted, well before the TTL
    finally:
        srv.process.kill()


# --- transport security ---------------------------------------------------------------------------


def secure_stub(
    address: str, ca: Path, cert: Path | None = None
) -> tuple[grpc.Channel, env_grpc.EnvironmentServiceStub]:
    """A channel that trusts `ca`, presents `cert` (its key is <name>-key.pem) and checks the
    server's certificate for env.rollmesh."""
    key = cert.with_name(cert.stem + "-key.pem") if cert else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    channel = grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "env.rollmesh")])
    return channel, env_grpc.EnvironmentServiceStub(channel)


def start_request() -> env_pb.EpisodeRequest:
    return env_pb.EpisodeRequest(start=env_pb.StartEpisode(env="maze", task_id="train-000"))


def test_conformance_over_mutual_tls(logs: Path, certs: Path) -> None:
    """Every check, drain included, as the orchestrator identity."""
    srv = maze(logs / "mtls-conformance.log", *identity(certs, "env"), "--idle-timeout", "3", "--grace", "5")
    try:
        address, pid = srv.match.group(1), str(srv.process.pid)
        result = run(
            ROLLMESH, "conformance", "--json", "--max-wait", "10", "--drain-pid", pid,
            *identity(certs, "orchestrator"), address, timeout=300,
        )  # fmt: skip
        report = json.loads(result.stdout)
        not_passed = {c["name"]: f"{c['status']}: {c['detail']}" for c in report["checks"] if c["status"] != "PASS"}
        assert not_passed == {}, json.dumps(report, indent=1)
        assert result.returncode == 0 and report["passed"]
        assert {"health", "reflection", "idle-timeout", "drain", "episode:maze"} <= {
            c["name"] for c in report["checks"]
        }
        assert srv.process.wait(timeout=30) == 0  # the drain check's SIGTERM
    finally:
        srv.process.kill()


def test_roles_and_certificates(logs: Path, certs: Path, tmp_path: Path) -> None:
    srv = maze(logs / "mtls-roles.log", *identity(certs, "env"))
    address, ca = srv.match.group(1), certs / "ca.pem"
    try:
        # a reader may describe, not play
        channel, reader = secure_stub(address, ca, certs / "reader.pem")
        with channel:
            assert reader.Describe(env_pb.DescribeRequest(), timeout=10).environments[0].name == "maze"
            assert [m.total for m in reader.ListTasks(env_pb.ListTasksRequest(env="maze", split="test"), timeout=10)]
            with pytest.raises(grpc.RpcError) as refused:
                next(reader.Episode(iter([start_request()]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert info is not None and (info.reason, info.domain) == ("MISSING_ROLE", "rollmesh.dev")
        assert dict(info.metadata) == {"identity": "reader", "required": "orchestrator"}
        assert refused.value.details() == (
            "'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles orchestrator"
        )
        # the orchestrator may play
        channel, orchestrator = secure_stub(address, ca, certs / "orchestrator.pem")
        with channel:
            started = next(orchestrator.Episode(iter([start_request()]), timeout=10))
            assert started.started.episode_id
        # no client certificate, another CA's certificate, plaintext: no call gets through
        other = pki.init(tmp_path / "other")
        attempts = {
            "no certificate": secure_stub(address, ca),
            "another CA": secure_stub(address, ca, other / "orchestrator.pem"),
            "plaintext": (plain := grpc.insecure_channel(address), env_grpc.EnvironmentServiceStub(plain)),
        }
        for what, (channel, stub) in attempts.items():
            with channel, pytest.raises(grpc.RpcError) as failed:
                stub.Describe(env_pb.DescribeRequest(), timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (what, failed.value)
    finally:
        assert srv.stop() == 0
    audit = srv.log.read_text()
    assert re.search(
        r"audit: access denied: /rollmesh.v1.EnvironmentService/Episode by reader from 127.0.0.1:\d+ \(MISSING_ROLE\)",
        audit,
    ), audit


def test_an_exposed_address_needs_mutual_tls(logs: Path, certs: Path) -> None:
    refused = run(BIN / "maze-server", "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert refused.returncode != 0
    assert "refusing to serve environments on 0.0.0.0 without TLS and caller authentication" in refused.stderr
    tls_only = ["--tls-cert", certs / "env.pem", "--tls-key", certs / "env-key.pem"]
    refused = run(BIN / "maze-server", "--host", "0.0.0.0", "--port", "0", *tls_only, timeout=60)
    assert refused.returncode != 0 and "without caller authentication (--tls-ca)" in refused.stderr
    for flags in (["--insecure"], identity(certs, "env")):
        srv = maze(logs / "exposed.log", "--host", "0.0.0.0", *flags)
        assert srv.stop() == 0


async def test_the_maze_server_registers_over_tls(logs: Path, certs: Path) -> None:
    """A NATS that requires client certificates and maps each to a user with its roles'
    permissions (DIR/nats-auth.conf): the env identity may write the registry."""
    with EmbeddedNats(auth_dir=certs) as nats:
        srv = maze(logs / "registered-tls.log", "--nats", nats.url, *identity(certs, "env"))
        port = srv.match.group(1).rsplit(":", 1)[1]
        try:
            nc = await bus.connect(nats.url, tls=pki.member_config(certs, "orchestrator"))
            registry = await Registry.from_client(nc)
            try:
                (record,) = await registry.list("environment", "maze")
                assert record.address == f"127.0.0.1:{port}" and record.kind == bus_pb2.SERVICE_KIND_ENVIRONMENT
                listed = run(ROLLMESH, "ls", "--nats", nats.url, env=as_env(certs, "orchestrator"), timeout=60)
                assert listed.returncode == 0 and re.search(
                    rf"environment\s+maze\s+0\.1\.0\s+127\.0\.0\.1:{port}", listed.stdout
                )
                assert srv.stop() == 0
                assert await registry.list("environment", "maze") == []  # deregistered over TLS
            finally:
                await registry.close()
                await nc.close()
        finally:
            srv.process.kill()
        # without a certificate, or as an identity that may not register, the server does not start
        plain = run(BIN / "maze-server", "--port", "0", "--nats", nats.url, timeout=60)
        assert plain.returncode != 0 and "cannot reach NATS" in plain.stderr, plain.stderr
        reader = run(BIN / "maze-server", "--port", "0", "--nats", nats.url, *identity(certs, "reader"), timeout=60)
        assert reader.returncode != 0 and "permissions violation" in reader.stderr.lower(), reader.stderr


def as_env(certs: Path, name: str) -> dict[str, str]:
    """The environment variables that give a process the identity `name`."""
    return {
        "ROLLMESH_TLS_CERT": str(certs / f"{name}.pem"),
        "ROLLMESH_TLS_KEY": str(certs / f"{name}-key.pem"),
        "ROLLMESH_TLS_CA": str(certs / "ca.pem"),
    }


# --- the digits replica ---------------------------------------------------------------------------

# Replies whose rewards tell the rules apart: digits in non-whitespace characters (Python's
# isdigit and isspace: a superscript is a digit, U+001C and U+3000 are spaces), and integers
# after any leading minus signs.
DIGITS_REPLIES = ("42", "4a", " -7 ", "--7", "", "3.5", "x\u00b2\u2460", "1\x1c2\u3000", "\u0661\u0662", "Thanks!")


async def test_the_digits_server_is_a_replica_of_the_python_digits(logs: Path, certs: Path) -> None:
    """bin/digits-server and `rollmesh env serve digits`, both with mutual TLS: the same
    environment, the same tasks by id, the same steps and scores of each reply; then conformance."""
    secure = identity(certs, "env")
    go = Server(
        logs / "digits-go.log", BIN / "digits-server", "--port", "0", *secure, "--idle-timeout", "3", "--grace", "5",
        ready=r"rollmesh env server on (\S+:\d+): digits\n",
    )  # fmt: skip
    try:
        py = Server(
            logs / "digits-py.log", ROLLMESH, "env", "serve", "digits", "--port", "0", *secure,
            ready=r"server on (\S+:\d+):",
        )  # fmt: skip
        try:
            await play_digits_on_both({"go": go.match.group(1), "python": py.match.group(1)}, certs)
        finally:
            assert py.stop() == 0
        result = run(
            ROLLMESH, "conformance", "--json", "--max-wait", "10", "--drain-pid", str(go.process.pid),
            *identity(certs, "orchestrator"), go.match.group(1), timeout=300,
        )  # fmt: skip
        report = json.loads(result.stdout)
        not_passed = {c["name"]: f"{c['status']}: {c['detail']}" for c in report["checks"] if c["status"] != "PASS"}
        assert not_passed == {}, json.dumps(report, indent=1)
        assert result.returncode == 0 and report["passed"]
        assert {"health", "idle-timeout", "drain", "episode:digits"} <= {c["name"] for c in report["checks"]}
        assert go.process.wait(timeout=30) == 0  # the drain check's SIGTERM
    finally:
        go.process.kill()


async def play_digits_on_both(addresses: dict[str, str], certs: Path) -> None:
    """Describes, lists, plays and scores the same on the Go and the Python replica, as the orchestrator."""
    tls = pki.member_config(certs, "orchestrator")
    clients = {k: EnvClient(create_channel(a, kind="env", tls=tls), a) for k, a in addresses.items()}
    try:
        infos = {}
        for k, client in clients.items():
            (infos[k],) = (await client.describe()).environments
            infos[k].ClearField("digest")  # of each one's own code
        assert infos["go"] == infos["python"], infos
        assert list(infos["go"].reward_names) == ["digits", "number"] and infos["go"].default_sampling.max_tokens == 8
        listed = {(k, split): await c.tasks("digits", split) for k, c in clients.items() for split in ("train", "test")}
        for split in ("train", "test"):
            assert listed["go", split] == listed["python", split], split
        train, test = listed["python", "train"], listed["python", "test"]
        assert (len(train), len(test), train[0].task_id, test[-1].task_id) == (200, 50, "d0000", "d0249")
        rewards = {}
        for task in (train[7], test[13]):  # tasks the Python replica listed
            for reply in DIGITS_REPLIES:
                results = {}
                for k, client in clients.items():
                    # as an orchestrator starts an episode (task id and split), and with the task inline
                    for how, start in (("id", {"task_id": task.task_id}), ("inline", {"task": task})):
                        async with client.episode("digits", split=task.split, **start) as ep:
                            assert ep.messages == task.prompt and ep.max_turns == 1
                            step = await ep.step(reply)
                            score = await client.score("digits", ep.task, ep.messages, step.state)
                        results[k, how] = (step, score)
                (step, score), *others = results.values()
                assert all(other == (step, score) for other in others), (task.task_id, reply, results)
                assert step.done and step.stop_reason == "done" and step.metrics == {"turns": 1.0}
                assert score == (step.rewards, step.reward) and step.reward == step.rewards["digits"]
                rewards[reply] = step.rewards
        assert rewards["42"] == {"digits": 1.0, "number": 1.0} and rewards["4a"] == {"digits": 0.5, "number": 0.0}
    finally:
        for client in clients.values():
            await client.close()
