"""The TypeScript package (clients/typescript) end to end: it builds, its generated code is fresh,
its own tests pass, and its example Wordle server passes `rollmesh conformance`, plays full
episodes with the Python EnvClient, registers in the NATS registry and exits 0 on SIGTERM. Traces
published by its NATS helper decode as rollmesh.v1.MonitorTrace in Python. Real processes only:
node, a gRPC server on 127.0.0.1, a nats-server of this module's own (the TypeScript tests make
streams of their own on rollmesh.monitor subjects, which must not overlap the rest of the suite's
MONITOR stream)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from rollmesh import bus
from rollmesh.apps.conformance import CHECKS, Status, run_conformance
from rollmesh.env.client import EnvClient
from rollmesh.natsd import EmbeddedNats
from rollmesh.proto.v1 import bus_pb2

TS = Path(__file__).resolve().parents[1] / "clients" / "typescript"
WORDLE = TS / "dist" / "examples" / "wordle" / "server.js"
SERVER_LINE = re.compile(r"rollmesh env server on (\S+):")
FEEDBACK = re.compile(r"^([A-Z]{5}): ([GY-]{5})\.")

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are not installed: the TypeScript package cannot be built",
)


def run(*cmd: str | Path, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=TS,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with EmbeddedNats() as server:
        yield server.url


@pytest.fixture(scope="module")
def built() -> Path:
    run(TS / "setup.sh", timeout=600)
    return TS


def start_wordle(log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Starts the Wordle server; returns it and the address from its "server on" line."""
    proc = subprocess.Popen(["node", str(WORDLE), "--port", "0", *args], stderr=log.open("wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if m := SERVER_LINE.search(log.read_text()):
            return proc, m.group(1)
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {log.read_text()}"
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"no address from the Wordle server: {log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def wordle(built: Path, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("wordle") / "server.log"
    proc, address = start_wordle(log, "--max-episodes", "200", "--idle-timeout", "30", "--nats", nats_url)
    try:
        yield address
    finally:
        assert stop(proc) == 0, log.read_text()


# --- the package ---------------------------------------------------------------------------------


def test_generated_code_is_fresh(built: Path, tmp_path: Path) -> None:
    run(TS / "gen.sh", tmp_path, timeout=120)
    checked_in = TS / "src" / "gen"
    files = sorted(p.relative_to(checked_in) for p in checked_in.rglob("*") if p.is_file())
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == fresh, "gen.sh makes other files than src/gen/ holds: run clients/typescript/gen.sh"
    stale = [str(f) for f in files if (checked_in / f).read_bytes() != (tmp_path / f).read_bytes()]
    assert not stale, f"stale generated code {stale}: run clients/typescript/gen.sh"


def test_typescript_unit_tests_pass(built: Path, nats_url: str) -> None:
    output = run(TS / "test.sh", timeout=300, env={"NATS_URL": nats_url})
    counts = {k: int(v) for k, v in re.findall(r"ℹ (tests|pass|fail|skipped) (\d+)", output)}
    assert counts["fail"] == 0 and counts["skipped"] == 0, output[-4000:]
    assert counts["pass"] == counts["tests"] >= 20, counts


# --- the Wordle server ----------------------------------------------------------------------------


async def test_wordle_server_passes_conformance(wordle: str) -> None:
    report = await run_conformance(wordle, timeout_s=20)
    assert report.passed, report.to_dict()
    assert all(c.status is Status.PASS for c in report.checks), report.to_dict()
    expected = {c.name for c in CHECKS if not c.per_env} | {"episode:wordle"}
    assert {c.name for c in report.checks} == expected


def marks(guess: str, secret: str) -> str:
    """Wordle feedback, written independently of the TypeScript game: G, Y or - per letter."""
    out = ["-"] * 5
    left: dict[str, int] = {}
    for i, (g, s) in enumerate(zip(guess, secret, strict=True)):
        if g == s:
            out[i] = "G"
        else:
            left[s] = left.get(s, 0) + 1
    for i, g in enumerate(guess):
        if out[i] != "G" and left.get(g, 0) > 0:
            out[i] = "Y"
            left[g] -= 1
    return "".join(out)


async def test_a_solver_wins_every_wordle_task_with_the_python_client(wordle: str) -> None:
    async with await EnvClient.connect(wordle) as client:
        describe = await client.describe()
        assert describe.server.language == "typescript"
        env = describe.environments[0]
        tasks = [t for split in env.splits for t in await client.tasks("wordle", split)]
        assert len(tasks) == sum(env.splits.values()) > 10
        words = sorted({t.answer for t in tasks})
        for task in tasks:
            candidates = list(words)
            async with client.episode("wordle", task.task_id, split=task.split) as ep:
                assert "Wordle" in ep.messages[-1]["content"]
                while not ep.done:
                    guess = candidates[0]
                    step = await ep.step(f"My guess: {guess.upper()}")
                    m = FEEDBACK.match(step.messages[-1]["content"])
                    assert m and m.group(1) == guess.upper(), step.messages
                    candidates = [w for w in candidates if marks(guess, w) == m.group(2)]
                assert step.stop_reason == "done", (task.answer, step)
                assert (step.reward, step.rewards) == (1.0, {"solved": 1.0})
                assert step.metrics["partial"] == 1.0 and step.metrics["turns"] == step.turn <= 6
                assert step.state and step.state["solved"] is True
                rewards, reward = await client.score("wordle", task, ep.messages, step.state)
                assert (rewards, reward) == ({"solved": 1.0}, 1.0)


async def test_six_wrong_guesses_lose_with_partial_credit(wordle: str) -> None:
    async with await EnvClient.connect(wordle) as client:
        task = (await client.tasks("wordle", limit=1))[0]
        wrong = next(w for w in ("fjord", "nymph", "waltz") if w != task.answer)
        async with client.episode("wordle", task.task_id) as ep:
            steps = [await ep.step("??") for _ in range(5)] + [await ep.step(wrong)]
        assert [s.done for s in steps] == [False] * 5 + [True]
        last = steps[-1]
        assert (last.stop_reason, last.reward, last.turn) == ("max_turns", 0.0, 6)
        assert "Out of guesses" in last.messages[-1]["content"]
        assert last.metrics["partial"] == pytest.approx(
            sum({"G": 1, "Y": 0.5, "-": 0}[c] for c in marks(wrong, task.answer)) / 5
        )


async def test_the_server_is_found_through_the_registry(wordle: str, nats_url: str) -> None:
    async with await EnvClient.connect(name="wordle", nats_url=nats_url) as client:
        assert client.address.endswith(":" + wordle.rsplit(":", 1)[1])
        assert (await client.describe()).environments[0].name == "wordle"


async def test_sigterm_mid_episode_exits_0_after_the_grace(built: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc, address = start_wordle(log, "--grace", "0.5")
    try:
        async with await EnvClient.connect(address) as client:
            task = (await client.tasks("wordle", limit=1))[0]
            async with client.episode("wordle", task.task_id) as ep:
                await ep.step("??")
                proc.send_signal(signal.SIGTERM)
                start = time.monotonic()
                rc = await asyncio.to_thread(proc.wait, 15)
                elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    assert 0.4 <= elapsed < 5, f"the open episode should hold the shutdown for the 0.5 s grace, took {elapsed:.2f} s"
    assert "SIGTERM: shutting down, 1 episode(s) in flight" in log.read_text()


# --- traces on the bus ----------------------------------------------------------------------------

PUBLISH = """
const { connect } = require("nats");
const { publishMonitorTrace, messages } = require("./dist/src/index.js");
(async () => {
  const nc = await connect({ servers: process.env.NATS_URL });
  const message = messages.Message.fromPartial({ role: "user", content: "What is 2 + 2?" });
  const reply = messages.Message.fromPartial({ role: "assistant", content: "4" });
  const trace = { traceId: process.env.TRACE_ID, messages: [message, reply], answer: "4",
                  info: { source: "ts" }, labels: { lang: "typescript" } };
  console.log(JSON.stringify(await publishMonitorTrace(nc, process.env.APP, trace)));
  await nc.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


def publish_from_typescript(nats_url: str, app: str, trace_id: str) -> dict[str, object]:
    out = run("node", "-e", PUBLISH, timeout=30, env={"NATS_URL": nats_url, "APP": app, "TRACE_ID": trace_id})
    return json.loads(out.strip().splitlines()[-1])


def check_trace(data: bytes, app: str, trace_id: str) -> None:
    trace = bus_pb2.MonitorTrace.FromString(data)
    assert (trace.trace_id, trace.app, trace.answer) == (trace_id, app, "4")
    assert [(m.role, m.content) for m in trace.messages] == [("user", "What is 2 + 2?"), ("assistant", "4")]
    assert dict(trace.labels) == {"lang": "typescript"} and trace.info["source"] == "ts"
    assert abs(trace.created_at.ToSeconds() - time.time()) < 60


async def test_traces_from_typescript_decode_as_monitor_trace_in_python(built: Path, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        # no stream on the subject: a plain publish, seen by a live subscriber
        app = f"ts-{uuid.uuid4().hex[:8]}"
        sub = await nc.subscribe(f"rollmesh.monitor.{app}")
        result = await asyncio.to_thread(publish_from_typescript, nats_url, app, "trace-plain")
        assert result["jetstream"] is False
        msg = await sub.next_msg(timeout=10)
        check_trace(msg.data, app, "trace-plain")
        assert msg.headers and msg.headers.get("Nats-Msg-Id") == "trace-plain"

        # rollmesh's MONITOR stream captures the subject: a JetStream publish, stored, deduplicated
        app = f"ts-{uuid.uuid4().hex[:8]}"
        js = nc.jetstream()
        await bus.ensure_streams(js)
        result = await asyncio.to_thread(publish_from_typescript, nats_url, app, "trace-js")
        assert (result["jetstream"], result["stream"]) == (True, "MONITOR")
        stored = await js.get_last_msg("MONITOR", bus.monitor_subject(app))
        check_trace(stored.data, app, "trace-js")
        await asyncio.to_thread(publish_from_typescript, nats_url, app, "trace-js")  # the same trace again
        info = await js.stream_info("MONITOR", subjects_filter=bus.monitor_subject(app))
        assert info.state.subjects == {bus.monitor_subject(app): 1}
    finally:
        await nc.close()
