"""The TypeScript package (clients/typescript) end to end, against real processes only: it builds,
its generated code is fresh, its own tests pass, and it packs into a tarball that installs into an
empty project and plays an episode. Its Wordle server passes `rollmesh conformance`, plays with the
Python EnvClient, sends ErrorInfo reasons Python reads, registers in the NATS registry and exits 0
on SIGTERM. Its higher-lower harness plays RunEpisode through the orchestrator's interception
endpoint in front of a real inference server (conformance, and `rollmesh eval` recording every
model call as a turn). Its clients and examples work against the Python servers (environment, inference with
the tiny local model, rubric), and a trace published from TypeScript is scored live by the rubric
service and read back from TypeScript. With certificates of a development CA (pki.init), the
Wordle server serves mutual TLS and checks the caller's roles on every method, the TypeScript client
plays with the Python server over mutual TLS, and the registry and the bus work over TLS on a
nats-server that maps client certificates to users. nats-servers of this module's own: the
TypeScript tests make the MONITOR and SCORES streams themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from rollmesh import bus
from rollmesh.env.client import EnvClient
from rollmesh.errors import NotFoundError, PermissionDeniedError, UnavailableError
from rollmesh.inference.client import InferenceClient
from rollmesh.natsd import EmbeddedNats, free_port, nats_server_binary
from rollmesh.proto.v1 import bus_pb2
from rollmesh.rpc import create_channel
from rollmesh.security import pki

TS = Path(__file__).resolve().parents[1] / "clients" / "typescript"
BIN = Path(sys.executable).parent
WORDLE = TS / "dist" / "examples" / "wordle" / "server.js"
HIGHER_LOWER = TS / "dist" / "examples" / "higher-lower" / "server.js"
EXAMPLES = TS / "dist" / "examples"
SERVER_LINE = re.compile(r"server on (\S+:\d+)")
FEEDBACK = re.compile(r"^([A-Z]{5}): ([GY-]{5})\.")
SERVE_FLAGS = [
    "--host",
    "--port",
    "--max-episodes",
    "--idle-timeout",
    "--max-message-mb",
    "--grace",
    "--nats",
    "--advertise-host",
    "--tls-cert",
    "--tls-key",
    "--tls-ca",
    "--insecure",
]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are not installed: the TypeScript package cannot be built",
)


def run(*cmd: str | Path, timeout: float, env: dict[str, str] | None = None, cwd: Path = TS) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}:\n{output[-6000:]}"
    return output


def node_json(script: str, *, timeout: float = 60, cwd: Path = TS, **env: str) -> dict:
    """Runs a CommonJS script with node; returns the JSON object of its last stdout line."""
    out = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}, cwd=cwd
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def start(
    cmd: list[str | Path], log: Path, *, ready: str = "server on ", timeout_s: float = 90
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a server; returns it and the address of its "... server on HOST:PORT" line, once `ready` is logged."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if ready in text and (m := SERVER_LINE.search(text)):
            return proc, m.group(1)
        assert proc.poll() is None, f"{cmd} exited with {proc.returncode}: {text[-4000:]}"
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{cmd} did not start within {timeout_s} s: {log.read_text(errors='replace')[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with EmbeddedNats() as server:
        yield server.url


@pytest.fixture(scope="module")
def built() -> Path:
    run(TS / "setup.sh", timeout=600)
    return TS


@pytest.fixture(scope="module")
def wordle(built: Path, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("wordle") / "server.log"
    cmd = ["node", WORDLE, "--port", "0", "--max-episodes", "200", "--idle-timeout", "30", "--nats", nats_url]
    proc, address = start(cmd, log)
    try:
        yield address
    finally:
        assert stop(proc) == 0, log.read_text()


@pytest.fixture(scope="module")
def guess_number(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Python reference environment server with guess-number."""
    log = tmp_path_factory.mktemp("guess-number") / "server.log"
    proc, address = start([BIN / "rollmesh", "env", "serve", "guess-number", "--port", "0", "--grace", "1"], log)
    try:
        yield address
    finally:
        assert stop(proc) == 0, log.read_text()


@pytest.fixture(scope="module")
def inference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Python inference server on the tiny local model (hf backend, CPU, no downloads)."""
    log = tmp_path_factory.mktemp("inference") / "server.log"
    cmd = [BIN / "rollmesh", "inference", "serve", "--model", tiny_model_dir, "--backend", "hf", "--port", "0"]
    proc, address = start([*cmd, "--dtype", "float32", "--grace", "1"], log, timeout_s=180)
    try:
        yield address
    finally:
        assert stop(proc) == 0, log.read_text()


RUBRICS = """
[server]
port = 0

[monitor]
durable = "{durable}"
filter_subjects = ["rollmesh.monitor.{app}"]
apps = {{ {app} = "rules" }}

[[rubric]]
name = "rules"

[[rubric.function]]
name = "correct"
function = "exact_match"
params = {{ extract = "last_number" }}

[[rubric.function]]
name = "polite"
function = "regex"
weight = 0.5
params = {{ pattern = "(?i)thanks" }}
"""


@pytest.fixture(scope="module")
def rubric(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The rubric service, scoring the traces of its own app live; (address, app)."""
    app = f"ts-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("rubric")
    config = folder / "rubrics.toml"
    config.write_text(RUBRICS.format(app=app, durable=f"ts-{uuid.uuid4().hex[:8]}"))
    cmd = [BIN / "rollmesh", "rubric", "serve", "--config", config, "--nats", nats_url, "--port", "0", "--no-dashboard"]
    proc, address = start(cmd, folder / "server.log", ready="live scoring on ")
    try:
        yield address, app
    finally:
        assert stop(proc) == 0, (folder / "server.log").read_text()


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
    assert counts["pass"] == counts["tests"] >= 50, counts


def test_the_package_is_publishable() -> None:
    pkg = json.loads((TS / "package.json").read_text())
    assert "private" not in pkg
    assert re.fullmatch(r"1\.\d+\.\d+", pkg["version"]), "1.x speaks protocol rollmesh.v1"
    assert pkg["exports"]["."] == {
        "types": "./dist/src/index.d.ts",
        "require": "./dist/src/index.js",
        "import": "./dist/src/index.js",
    }
    assert "dist/src" in pkg["files"] and "CHANGELOG.md" in pkg["files"]
    assert pkg["repository"]["directory"] == "clients/typescript" and "rollmesh" in pkg["keywords"]
    assert "build" in pkg["scripts"]["prepack"]
    assert f"## {pkg['version']}" in (TS / "CHANGELOG.md").read_text()
    lock = json.loads((TS / "package-lock.json").read_text())
    assert lock["version"] == lock["packages"][""]["version"] == pkg["version"]


def test_the_code_is_formatted(built: Path) -> None:
    run("npm", "run", "--silent", "format:check", timeout=120)


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`npm pack` (its prepack builds) of a copy of the package, installed into an empty project."""
    work = tmp_path_factory.mktemp("pack")
    copy = work / "typescript"
    shutil.copytree(TS, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
    (copy / "node_modules").symlink_to(TS / "node_modules")
    run("npm", "pack", "--pack-destination", work, timeout=300, cwd=copy)
    (tarball,) = work.glob("rollmesh-client-*.tgz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"package/package.json", "package/README.md", "package/CHANGELOG.md"} <= names
    assert {
        "package/dist/src/index.js",
        "package/dist/src/index.d.ts",
        "package/dist/src/gen/rollmesh/v1/environment.js",
    } <= names
    assert not [
        n for n in names if n.startswith(("package/dist/test", "package/dist/examples", "package/node_modules"))
    ]
    project = work / "project"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "scratch", "version": "0.0.0", "private": True}))
    run("npm", "install", "--prefer-offline", "--no-audit", "--no-fund", tarball, timeout=300, cwd=project)
    return project


PLAY = """
const { EnvClient } = require("@rollmesh/client");
(async () => {
  const client = new EnvClient(process.env.ADDRESS, { timeoutS: 10 });
  const { environments } = await client.describe();
  const tasks = [];
  for await (const t of client.listTasks("guess-number", { limit: 3 })) tasks.push(t);
  const episode = await client.episode("guess-number", { taskId: tasks[2].taskId });
  let [low, high] = [episode.task.info.low, episode.task.info.high];
  const guesses = [];
  while (!episode.done) {
    const guess = Math.floor((low + high) / 2);
    guesses.push(guess);
    const reply = (await episode.act(String(guess))).messages[0].content;
    if (reply.startsWith("Higher")) low = guess + 1;
    if (reply.startsWith("Lower")) high = guess - 1;
  }
  await episode.close();
  const last = episode.last;
  let error;
  try { await client.episode("guess-number", { taskId: "no-such-task" }); }
  catch (e) { error = [e.codeName, e.reason]; }
  console.log(JSON.stringify({ env: environments[0], answer: episode.task.answer, guesses, last, error }));
  client.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""

ESM = """
import { EnvClient, RollmeshError, publishMonitorTrace, VERSION } from "@rollmesh/client";
console.log(JSON.stringify({ EnvClient: typeof EnvClient, RollmeshError: typeof RollmeshError,
                             publish: typeof publishMonitorTrace, VERSION }));
"""

TYPED = """
import { EnvClient, type StepResult } from "@rollmesh/client";
export async function firstStep(address: string): Promise<StepResult> {
  const episode = await new EnvClient(address).episode("guess-number", { taskId: "g00100" });
  return episode.act("50");
}
"""


def test_the_packed_tarball_installs_and_plays_an_episode(installed: Path, guess_number: str) -> None:
    got = node_json(PLAY, cwd=installed, ADDRESS=guess_number)
    env, last = got["env"], got["last"]
    assert (env["name"], env["defaultSplit"], env["hasScore"], env["hasRunEpisode"]) == (
        "guess-number",
        "train",
        True,
        False,
    )
    assert last["done"] and last["stopReason"] == "done" and last["rewards"]["solved"] == 1
    assert str(got["guesses"][-1]) == got["answer"] and last["turn"] == len(got["guesses"]) <= 7
    assert last["reward"] == pytest.approx(1 + 0.2 / len(got["guesses"]))
    assert got["error"] == ["NOT_FOUND", "UNKNOWN_TASK"]
    # ES modules import it too, and its types check
    (installed / "esm.mjs").write_text(ESM)
    esm = json.loads(run("node", "esm.mjs", timeout=30, cwd=installed).strip().splitlines()[-1])
    version = json.loads((TS / "package.json").read_text())["version"]
    assert esm == {"EnvClient": "function", "RollmeshError": "function", "publish": "function", "VERSION": version}
    (installed / "typed.ts").write_text(TYPED)
    options = {"module": "node16", "moduleResolution": "node16", "strict": True, "noEmit": True, "skipLibCheck": True}
    (installed / "tsconfig.json").write_text(
        json.dumps({"compilerOptions": {**options, "types": []}, "files": ["typed.ts"]})
    )
    run(TS / "node_modules" / ".bin" / "tsc", "-p", "tsconfig.json", timeout=120, cwd=installed)


def test_the_readme_snippets_type_check_against_the_installed_package(installed: Path) -> None:
    """Every TypeScript block of the README compiles (strict) against the package as published."""
    blocks = re.findall(r"^```ts\n(.*?)^```", (TS / "README.md").read_text(), re.S | re.M)
    assert len(blocks) >= 6
    files = []
    for i, block in enumerate(blocks):
        assert 'from "@rollmesh/client"' in block
        (installed / f"readme-{i}.mts").write_text(block)
        files.append(f"readme-{i}.mts")
    options = {
        "module": "node16",
        "moduleResolution": "node16",
        "target": "es2022",
        "strict": True,
        "noEmit": True,
        "skipLibCheck": True,
        "types": ["node"],
        "typeRoots": [str(TS / "node_modules" / "@types")],
    }
    (installed / "tsconfig.readme.json").write_text(json.dumps({"compilerOptions": options, "files": files}))
    run(TS / "node_modules" / ".bin" / "tsc", "-p", "tsconfig.readme.json", timeout=120, cwd=installed)


# --- the Wordle server ----------------------------------------------------------------------------


async def test_wordle_server_passes_every_conformance_check(built: Path, tmp_path: Path) -> None:
    """Every check, none skipped: a short idle timeout, and the drain check may SIGTERM the server."""
    from rollmesh.apps.conformance import CHECKS, Options, Status, run_conformance

    log = tmp_path / "server.log"
    proc, address = start(["node", WORDLE, "--port", "0", "--idle-timeout", "2", "--grace", "10"], log)
    try:
        report = await run_conformance(address, options=Options(timeout_s=20, max_wait_s=15, drain_pid=proc.pid))
        rc = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert report.passed, report.to_dict()
    assert {c.name: c.status for c in report.checks} == {
        **{c.name: Status.PASS for c in CHECKS if not c.per_env},
        "episode:wordle": Status.PASS,
    }, report.to_dict()
    assert rc == 0, log.read_text()


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
        version = json.loads((TS / "package.json").read_text())["version"]
        assert (
            describe.server.language == "typescript" and describe.server.sdk_version == f"rollmesh-typescript {version}"
        )
        env = describe.environments[0]
        assert (env.default_split, env.has_run_episode) == ("train", False)
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


async def test_python_reads_the_error_reasons_of_the_typescript_server(wordle: str) -> None:
    async with await EnvClient.connect(wordle) as client:
        with pytest.raises(NotFoundError) as unknown:
            async with client.episode("wordle", "no-such-task"):
                pass
        assert unknown.value.reason == "UNKNOWN_TASK"
        with pytest.raises(NotFoundError) as env:
            async with client.episode("no-such-env", "w0001"):
                pass
        assert (env.value.reason, env.value.metadata) == ("UNKNOWN_ENVIRONMENT", {"environments": "wordle"})


async def test_the_server_is_found_through_the_registry(wordle: str, nats_url: str) -> None:
    async with await EnvClient.connect(name="wordle", nats_url=nats_url) as client:
        assert client.address.endswith(":" + wordle.rsplit(":", 1)[1])
        assert (await client.describe()).environments[0].name == "wordle"


def test_the_command_line_flags(built: Path, tmp_path: Path) -> None:
    usage = run("node", WORDLE, "--help", timeout=30)
    assert all(flag in usage for flag in SERVE_FLAGS), usage
    bad = subprocess.run(["node", WORDLE, "--max-message-bytes", "100"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "max-message-bytes" in bad.stderr
    proc, address = start(
        ["node", WORDLE, "--port", "0", "--max-message-mb", "0.5", "--idle-timeout", "0"], tmp_path / "log"
    )
    try:
        limits = node_json(
            'const { EnvClient } = require("./dist/src/index.js"); new EnvClient(process.env.A).describe()'
            ".then((d) => { console.log(JSON.stringify(d.limits)); process.exit(0); })",
            A=address,
        )
    finally:
        assert stop(proc) == 0
    assert (limits["maxMessageBytes"], limits["episodeIdleTimeoutS"]) == (512 * 1024, 0)


async def test_sigterm_mid_episode_exits_0_after_the_grace(built: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc, address = start(["node", WORDLE, "--port", "0", "--grace", "0.5"], log)
    try:
        async with await EnvClient.connect(address) as client:
            task = (await client.tasks("wordle", limit=1))[0]
            async with client.episode("wordle", task.task_id) as ep:
                await ep.step("??")
                proc.send_signal(signal.SIGTERM)
                begin = time.monotonic()
                rc = await asyncio.to_thread(proc.wait, 15)
                elapsed = time.monotonic() - begin
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    assert 0.4 <= elapsed < 5, f"the open episode should hold the shutdown for the 0.5 s grace, took {elapsed:.2f} s"
    assert "SIGTERM: shutting down, 1 episode(s) in flight" in log.read_text()


# --- the clients and examples against the Python servers -------------------------------------------


def test_the_play_episode_example_against_python_guess_number(built: Path, guess_number: str) -> None:
    out = run("node", EXAMPLES / "play-episode.js", guess_number, timeout=60)
    assert "user: I am thinking of an integer between 1 and 100." in out
    assert re.search(r"user: Correct! The number was \d+\.", out) and "stop reason: done" in out
    m = re.search(r"reward: (\S+) (\{.*\})", out)
    assert m, out
    rewards = json.loads(m.group(2))
    assert rewards["solved"] == 1 and 0 < rewards["efficiency"] <= 1 and set(rewards) == {"solved", "efficiency"}
    assert float(m.group(1)) == pytest.approx(1 + 0.2 * rewards["efficiency"])


GENERATE = """
const { InferenceClient } = require("./dist/src/index.js");
(async () => {
  const llm = new InferenceClient(process.env.ADDRESS, { timeoutS: 60 });
  const messages = [{ role: "user", content: "What is 2 + 2?" }];
  const out = await llm.generate({ messages, sampling: { maxTokens: 8, temperature: 0, logprobs: true } });
  const tokens = await llm.tokenize({ messages, addGenerationPrompt: true });
  const info = await llm.modelInfo();
  let error;
  try { await llm.generate({ messages, model: "no-such-model" }); } catch (e) { error = [e.codeName, e.reason]; }
  console.log(JSON.stringify({ out, tokens, info, error }));
  llm.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_the_inference_client_is_token_exact_with_the_python_client(built: Path, inference: str) -> None:
    got = await asyncio.to_thread(node_json, GENERATE, ADDRESS=inference)
    out = got["out"]
    async with InferenceClient.open(inference) as client:
        reference = await client.generate(
            [{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8, temperature=0.0, logprobs=True
        )
    sample = reference.samples[0]
    assert out["promptIds"] == list(reference.prompt_ids) == got["tokens"]["tokenIds"]
    assert out["completionIds"] == list(sample.completion_ids) and len(out["completionIds"]) == 8
    assert out["logprobs"] == pytest.approx(list(sample.logprobs), abs=1e-4)
    assert all(lp <= 0 for lp in out["logprobs"]) and len(out["logprobs"]) == 8
    assert (out["text"], out["finishReason"], out["policyVersion"]) == (sample.text, "length", 0)
    assert out["samples"][0]["completionIds"] == out["completionIds"] and out["usage"]["completionTokens"] == 8
    assert (got["info"]["backend"], got["info"]["policyVersion"]) == ("hf", 0) and got["info"]["contextLength"] > 0
    assert got["error"] == ["NOT_FOUND", "UNKNOWN_MODEL"]
    example = run("node", EXAMPLES / "generate.js", inference, timeout=120)
    assert "from token ids: same completion = true" in example and "(hf)" in example


RUBRIC = """
const { RubricClient } = require("./dist/src/index.js");
(async () => {
  const rubrics = new RubricClient(process.env.ADDRESS);
  const names = (await rubrics.listRubrics()).map((r) => r.name);
  const rollout = (reply) => ({ task: { answer: "4" }, messages: [
    { role: "user", content: "What is 2 + 2?" }, { role: "assistant", content: reply }] });
  const named = await rubrics.scoreTrajectory("rules", rollout("Thanks! It is 4"));
  const group = await rubrics.scoreGroup("rules", [rollout("4"), rollout("5")]);
  let error;
  try { await rubrics.scoreTrajectory("no-such-rubric", rollout("4")); }
  catch (e) { error = [e.codeName, e.reason, e.metadata]; }
  console.log(JSON.stringify({ names, named, group, error }));
  rubrics.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


# --- RunEpisode: the TypeScript harness against the Python caller -----------------------------------


async def test_the_run_episode_harness_passes_the_conformance_check_through_a_real_interception_endpoint(
    built: Path, inference: str, tmp_path: Path
) -> None:
    """Conformance's run-episode check puts the orchestrator's interception endpoint in front of the
    tiny model's inference server: the harness's agent.chat calls go through it with the session key
    (a wrong key or URL would fail the episode), and every answer is in the returned conversation.
    The other checks are the Wordle server's test."""
    from rollmesh.apps.conformance.checks import check_run_episode
    from rollmesh.apps.conformance.probe import Options, Probe

    log = tmp_path / "server.log"
    proc, address = start(["node", HIGHER_LOWER, "--port", "0", "--grace", "1"], log)
    probe = Probe(address, Options(timeout_s=60, inference=inference))
    try:
        detail = await check_run_episode(probe)
    finally:
        await probe.close()
        assert stop(proc) == 0, log.read_text()
    m = re.fullmatch(r"higher-lower: (\d+) model calls, (\d+) messages, reward [01]", detail)
    # one call per guess, each answered by a feedback message after the prompt
    assert m and 2 <= int(m.group(1)) <= 7 and int(m.group(2)) == 1 + 2 * int(m.group(1)), detail


def test_rollmesh_eval_records_every_model_call_of_the_typescript_harness(
    built: Path, inference: str, tmp_path: Path
) -> None:
    """`rollmesh eval` plays the harness by RunEpisode (has_run_episode): each agent.chat is one
    recorded turn with the inference server's token ids and logprobs, in the conversation's order."""
    proc, address = start(["node", HIGHER_LOWER, "--port", "0", "--grace", "1"], tmp_path / "server.log")
    try:
        out = tmp_path / "eval"
        cmd = [BIN / "rollmesh", "eval", "--env", "higher-lower", "--env-address", address, "--model", inference,
               "-n", "2", "-r", "1", "--max-tokens", "4", "--seed", "3", "--no-publish", "--no-progress",
               "--nats", "nats://127.0.0.1:1", "--out", out]  # fmt: skip
        run(*cmd, timeout=180)
    finally:
        assert stop(proc) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["trajectories"] == 2 and summary["counts"]["errored"] == 0, summary["counts"]
    assert set(summary["rewards"]) == {"solved"}
    trajectories = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    for t in trajectories:
        messages, turns = t["messages"], t["turns"]
        assert t["stop_reason"] in ("STOP_REASON_DONE", "STOP_REASON_MAX_TURNS"), t.get("error")
        assert messages[0]["content"].startswith("I am thinking of an integer between 1 and 100.")
        # the harness's conversation: a guess, then its feedback, once per model call
        assert [m["role"] for m in messages[1:]] == ["assistant", "user"] * len(turns)
        assert 2 <= len(turns) <= 7 and t["metrics"]["model_calls"] == len(turns)
        assert (t["stop_reason"] == "STOP_REASON_DONE") == (t["rewards"]["solved"] == 1.0)
        prompt_lengths = [len(u["prompt_ids"]) for u in turns]
        assert prompt_lengths == sorted(set(prompt_lengths)), "each call's prompt holds the previous ones"
        for u in turns:
            assert 0 < len(u["completion_ids"]) <= 4 and len(u["completion_logprobs"]) == len(u["completion_ids"])


def test_the_rubric_client_against_the_rubric_service(built: Path, rubric: tuple[str, str]) -> None:
    address, _ = rubric
    got = node_json(RUBRIC, ADDRESS=address)
    assert got["names"] == ["rules"]
    assert (got["named"]["reward"], got["named"]["rewards"]) == (1.5, {"correct": 1.0, "polite": 1.0})
    assert got["named"]["errors"] == {} and got["named"]["metrics"]["rubric/failed"] == 0
    assert [r["reward"] for r in got["group"]["results"]] == [1.0, 0.0] and len(got["group"]["advantages"]) == 2
    assert got["group"]["advantages"][0] > got["group"]["advantages"][1]
    assert got["error"] == ["NOT_FOUND", "UNKNOWN_RUBRIC", {"rubrics": "rules"}]
    example = run("node", EXAMPLES / "score.js", address, timeout=60)
    assert 'one: reward 1 {"correct":1}' in example and "group: rewards [1,0,1]" in example


# --- traces and scores on the bus -----------------------------------------------------------------


def check_trace(data: bytes, app: str, trace_id: str) -> None:
    trace = bus_pb2.MonitorTrace.FromString(data)
    assert (trace.trace_id, trace.app, trace.answer) == (trace_id, app, "4")
    assert [(m.role, m.content) for m in trace.messages] == [
        ("user", "What is 2 + 2?"),
        ("assistant", "Thanks for asking: 4"),
    ]
    assert dict(trace.labels) == {"source": "example"}
    assert abs(trace.created_at.ToSeconds() - time.time()) < 60


async def test_a_trace_from_typescript_is_scored_live_and_read_back(
    built: Path, nats_url: str, rubric: tuple[str, str]
) -> None:
    _, app = rubric
    out = await asyncio.to_thread(run, "node", EXAMPLES / "trace-and-score.js", nats_url, app, "30", timeout=90)
    m = re.search(r"trace ([0-9a-f]{32}) stored in MONITOR #\d+", out)
    assert m, out
    assert 'scored by rubric rules: reward 1.5 {"' in out and '"correct":1' in out and '"polite":1' in out, out
    assert '"rubric/failed":0' in out and "errors {}" in out
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stored = await js.get_last_msg("MONITOR", bus.monitor_subject(app))
        check_trace(stored.data, app, m.group(1))
        assert stored.headers and stored.headers.get("Nats-Msg-Id") == m.group(1)
        score = bus_pb2.MonitorScore.FromString((await js.get_last_msg("SCORES", bus.scores_subject(app))).data)
        assert (score.trace_id, score.rubric, score.reward) == (m.group(1), "rules", 1.5)
    finally:
        await nc.close()


NO_STREAM = """
const { connect } = require("nats");
const { publishMonitorTrace, readScores } = require("./dist/src/index.js");
(async () => {
  const nc = await connect({ servers: process.env.NATS_URL });
  const trace = { messages: [{ role: "user", content: "hi" }], answer: "4" };
  const out = {};
  try { await publishMonitorTrace(nc, "shop", trace); out.publish = "published"; }
  catch (e) { out.publish = e.message; }
  try { await readScores(nc, "shop"); out.scores = "reading"; } catch (e) { out.scores = e.message; }
  out.created = await publishMonitorTrace(nc, "shop", trace, { createStream: true });
  await (await readScores(nc, "shop", { createStream: true })).close();
  console.log(JSON.stringify(out));
  await nc.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_without_a_stream_publishing_fails_clearly_or_creates_monitor_as_specified(built: Path) -> None:
    with EmbeddedNats() as server:  # a bus with no streams yet
        nc = await nats.connect(server.url)
        try:
            sub = await nc.subscribe("rollmesh.monitor.>")
            await nc.flush()
            got = await asyncio.to_thread(node_json, NO_STREAM, NATS_URL=server.url)
            assert 'no JetStream stream stores "rollmesh.monitor.shop"' in got["publish"]
            assert "create the MONITOR stream" in got["publish"] and "createStream: true" in got["publish"]
            assert 'no JetStream stream stores "rollmesh.scores.shop"' in got["scores"] and "SCORES" in got["scores"]
            assert (got["created"]["stream"], got["created"]["seq"], got["created"]["duplicate"]) == (
                "MONITOR",
                1,
                False,
            )
            # the failed publish sent nothing: the only message is the stored one
            first = await sub.next_msg(timeout=5)
            assert bus_pb2.MonitorTrace.FromString(first.data).trace_id == got["created"]["traceId"]
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.3)
            js = nc.jetstream()
            for spec in (bus.MONITOR, bus.SCORES):
                made = (await js.stream_info(spec.name)).config
                want = spec.config()
                assert made.subjects == want.subjects and made.storage == want.storage
                assert (made.retention, made.discard) == (want.retention, want.discard)
                assert (made.max_age, made.duplicate_window) == (want.max_age, want.duplicate_window)
        finally:
            await nc.close()


# --- TLS, mutual TLS and roles ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA and the mesh's certificates (rollmesh certs init)."""
    return pki.init(tmp_path_factory.mktemp("pki"))


def tls_flags(certs: Path, name: str) -> list[str | Path]:
    return ["--tls-cert", certs / f"{name}.pem", "--tls-key", certs / f"{name}-key.pem", "--tls-ca", certs / "ca.pem"]


def tls_env(certs: Path, name: str | None) -> dict[str, str]:
    """ROLLMESH_TLS_* for identity `name` (None: the CA only, no client certificate)."""
    env = {"ROLLMESH_TLS_CA": str(certs / "ca.pem"), "ROLLMESH_TLS_CERT": "", "ROLLMESH_TLS_KEY": ""}
    if name:
        env |= {"ROLLMESH_TLS_CERT": str(certs / f"{name}.pem"), "ROLLMESH_TLS_KEY": str(certs / f"{name}-key.pem")}
    return env


def env_client(address: str, certs: Path, name: str) -> EnvClient:
    """The Python EnvClient with the certificate of `name` (checks the server's for env.rollmesh)."""
    channel = create_channel(address, kind="env", tls=pki.member_config(certs, name))
    return EnvClient(channel, address, timeout_s=10, step_timeout_s=10)


@pytest.fixture(scope="module")
def secure_wordle(built: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The Wordle server with mutual TLS: (address, its log)."""
    log = tmp_path_factory.mktemp("secure-wordle") / "server.log"
    proc, address = start(["node", WORDLE, "--port", "0", *tls_flags(certs, "env")], log)
    try:
        yield address, log
    finally:
        assert stop(proc) == 0, log.read_text()


def test_tls_wordle_server_passes_conformance_with_the_orchestrator_certificate(
    built: Path, certs: Path, tmp_path: Path
) -> None:
    """Every check, none skipped, over mutual TLS: the server's certificate names env.rollmesh."""
    log = tmp_path / "server.log"
    proc, address = start(
        ["node", WORDLE, "--port", "0", "--idle-timeout", "2", "--grace", "10", *tls_flags(certs, "env")], log
    )
    try:
        cmd = [BIN / "rollmesh", "conformance", "--json", "--max-wait", "15", *tls_flags(certs, "orchestrator")]
        out = subprocess.run(
            [str(c) for c in [*cmd, "--drain-pid", str(proc.pid), address]],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert out.returncode == 0 and set(statuses.values()) == {"PASS"}, out.stdout[-6000:] + out.stderr[-2000:]
    assert "episode:wordle" in statuses and "drain" in statuses and "reflection" in statuses
    assert rc == 0, log.read_text()
    assert "access denied" not in log.read_text()


async def test_tls_a_reader_describes_but_may_not_play(secure_wordle: tuple[str, Path], certs: Path) -> None:
    address, log = secure_wordle
    async with env_client(address, certs, "reader") as client:
        assert (await client.describe()).environments[0].name == "wordle"
        task = (await client.tasks("wordle", limit=1))[0]
        with pytest.raises(PermissionDeniedError) as refused:
            async with client.episode("wordle", task.task_id):
                pass
    assert refused.value.reason == "MISSING_ROLE"
    assert refused.value.metadata == {"identity": "reader", "required": "orchestrator"}
    assert "'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles orchestrator" in (
        str(refused.value)
    )
    deadline = time.monotonic() + 5
    while "access denied: /rollmesh.v1.EnvironmentService/Episode by reader" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if "Episode by reader" in x)
    assert re.fullmatch(
        r"access denied: /rollmesh\.v1\.EnvironmentService/Episode by reader from \S+ \(MISSING_ROLE\)", line
    )
    async with env_client(address, certs, "orchestrator") as client:
        async with client.episode("wordle", task.task_id) as ep:
            step = await ep.step("crane")
        assert step.turn == 1


async def test_tls_no_client_certificate_or_one_of_another_ca_is_refused(
    secure_wordle: tuple[str, Path], certs: Path, tmp_path: Path
) -> None:
    address, log = secure_wordle
    other = pki.init(tmp_path / "other-ca")
    attempts = {
        "no client certificate": grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes()),
        "another CA's certificate": grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes(),
            private_key=(other / "orchestrator-key.pem").read_bytes(),
            certificate_chain=(other / "orchestrator.pem").read_bytes(),
        ),
    }
    before = log.read_text()
    for what, creds in attempts.items():
        channel = grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "env.rollmesh")])
        client = EnvClient(channel, address, timeout_s=5)
        try:
            with pytest.raises(UnavailableError):
                await client.describe()
        finally:
            await client.close()
        assert log.read_text() == before, what  # refused in the handshake: no call reached the server
    # the TypeScript client the same way, and with the right certificate it plays
    got = await asyncio.to_thread(node_json, TLS_PLAY, ADDRESS=address, **tls_env(certs, None))
    assert got["describe"] == ["UNAVAILABLE", ""]


TLS_PLAY = """
const { EnvClient } = require("./dist/src/index.js");
(async () => {
  const client = new EnvClient(process.env.ADDRESS, { timeoutS: 10 });  // TLS from ROLLMESH_TLS_*
  const env = process.env.ENV_NAME || "wordle";
  const out = {};
  const attempt = async (what, fn) => {
    try { out[what] = await fn(); } catch (e) {
      out[what] = [e.codeName, e.reason, ...(Object.keys(e.metadata ?? {}).length ? [e.metadata] : [])];
    }
  };
  await attempt("describe", async () => (await client.describe()).environments.map((e) => e.name));
  await attempt("episode", async () => {
    const [task] = (await client.tasksPage(env, { pageSize: 1 })).tasks;
    const episode = await client.episode(env, { taskId: task.taskId });
    const step = await episode.act(task.answer);
    await episode.close();
    const prompt = episode.prompt.map((m) => m.content).join(" ");
    return { prompt, answer: task.answer, rewards: step.rewards, done: step.done };
  });
  console.log(JSON.stringify(out));
  client.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_tls_the_typescript_client_plays_with_the_python_server_over_mutual_tls(
    built: Path, certs: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    cmd = [BIN / "rollmesh", "env", "serve", "arithmetic", "--port", "0", "--grace", "1", *tls_flags(certs, "env")]
    proc, address = start(cmd, log)
    try:
        play = await asyncio.to_thread(
            node_json, TLS_PLAY, ADDRESS=address, ENV_NAME="arithmetic", **tls_env(certs, "orchestrator")
        )
        reader = await asyncio.to_thread(
            node_json, TLS_PLAY, ADDRESS=address, ENV_NAME="arithmetic", **tls_env(certs, "reader")
        )
        anonymous = await asyncio.to_thread(node_json, TLS_PLAY, ADDRESS=address, **tls_env(certs, None))
    finally:
        assert stop(proc) == 0, log.read_text()
    assert play["describe"] == ["arithmetic"]
    episode = play["episode"]
    assert episode["done"] and episode["rewards"]["correct"] == 1 and "What is" in episode["prompt"], play
    assert reader["describe"] == ["arithmetic"]
    assert reader["episode"] == [
        "PERMISSION_DENIED",
        "MISSING_ROLE",
        {"identity": "reader", "required": "orchestrator"},
    ]
    assert anonymous["describe"] == ["UNAVAILABLE", ""]


RUBRIC_TLS = """
const { RubricClient } = require("./dist/src/index.js");
(async () => {
  const rubrics = new RubricClient(process.env.ADDRESS, { timeoutS: 10 });  // TLS from ROLLMESH_TLS_*
  const rollout = { task: { answer: "4" }, messages: [
    { role: "user", content: "What is 2 + 2?" }, { role: "assistant", content: "4" }] };
  const out = {};
  const attempt = async (what, fn) => {
    try { out[what] = await fn(); } catch (e) { out[what] = [e.codeName, e.reason, e.metadata]; }
  };
  await attempt("list", async () => (await rubrics.listRubrics()).map((r) => r.name));
  await attempt("score", async () => (await rubrics.scoreTrajectory("rules", rollout)).reward);
  console.log(JSON.stringify(out));
  rubrics.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_tls_the_rubric_client_checks_rubric_rollmesh_and_presents_its_certificate(
    built: Path, certs: Path, tmp_path: Path
) -> None:
    config = tmp_path / "rubrics.toml"
    config.write_text(
        '[server]\nport = 0\n\n[[rubric]]\nname = "rules"\n\n[[rubric.function]]\nname = "correct"\n'
        'function = "exact_match"\nparams = { extract = "last_number" }\n'
    )
    cmd = [BIN / "rollmesh", "rubric", "serve", "--config", config, "--port", "0", "--no-dashboard"]
    proc, address = start([*cmd, *tls_flags(certs, "rubric")], tmp_path / "server.log")
    try:
        orchestrator = await asyncio.to_thread(node_json, RUBRIC_TLS, ADDRESS=address, **tls_env(certs, "orchestrator"))
        reader = await asyncio.to_thread(node_json, RUBRIC_TLS, ADDRESS=address, **tls_env(certs, "reader"))
    finally:
        assert stop(proc) == 0, (tmp_path / "server.log").read_text()
    assert orchestrator == {"list": ["rules"], "score": 1}
    assert reader == {
        "list": ["rules"],
        "score": ["PERMISSION_DENIED", "MISSING_ROLE", {"identity": "reader", "required": "orchestrator"}],
    }


def test_tls_a_non_loopback_host_needs_tls_and_a_ca_or_insecure(built: Path, certs: Path, tmp_path: Path) -> None:
    refused = subprocess.run(["node", WORDLE, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "refusing to serve environments on 0.0.0.0 without TLS" in refused.stderr
    no_ca = ["--tls-cert", certs / "env.pem", "--tls-key", certs / "env-key.pem"]
    refused = subprocess.run(
        ["node", WORDLE, "--host", "0.0.0.0", *map(str, no_ca)], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2 and "without caller authentication (--tls-ca)" in refused.stderr
    missing = subprocess.run(
        ["node", WORDLE, "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none-key.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "cannot read the certificate" in missing.stderr
    for flags, warned in (([*tls_flags(certs, "env")], False), (["--insecure"], True)):
        log = tmp_path / f"server-{warned}.log"
        proc, _ = start(["node", WORDLE, "--host", "0.0.0.0", "--port", "0", *flags], log)
        assert stop(proc) == 0, log.read_text()
        assert ("warning: serving environments on 0.0.0.0 without TLS" in log.read_text()) == warned, log.read_text()


@pytest.fixture(scope="module")
def secure_nats(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with JetStream that speaks TLS only and maps client certificates to users
    (DIR/nats-auth.conf, included by a path relative to the config file: nats-server resolves
    every include against the including file's folder)."""
    folder = tmp_path_factory.mktemp("secure-nats")
    for attempt in range(3):  # the free port may be taken before nats-server binds it
        port = free_port()
        conf = folder / f"nats-{attempt}.conf"
        include = os.path.relpath(certs / "nats-auth.conf", folder)
        conf.write_text(
            f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{folder / "js"}" }}\ninclude "{include}"\n'
        )
        log = folder / f"nats-{attempt}.log"
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log.open("wb")
        )
        deadline = time.monotonic() + 20
        while proc.poll() is None and "Server is ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and "Server is ready" in log.read_text():
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError(f"nats-server did not start: {log.read_text()[-4000:]}")
    assert "TLS required for client connections" in log.read_text()
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


async def nats_as(url: str, certs: Path, name: str) -> nats.aio.client.Client:
    return await nats.connect(url, tls=pki.member_config(certs, name).client_ssl_context(), allow_reconnect=False)


async def test_tls_the_server_registers_in_a_secured_nats(
    built: Path, certs: Path, secure_nats: str, tmp_path: Path
) -> None:
    """The env identity writes its record over TLS; an orchestrator reads it and plays at that address."""
    log = tmp_path / "server.log"
    proc, address = start(["node", WORDLE, "--port", "0", *tls_flags(certs, "env"), "--nats", secure_nats], log)
    try:
        nc = await nats_as(secure_nats, certs, "orchestrator")
        try:
            kv = await nc.jetstream().key_value("rollmesh-registry")
            keys = [k for k in await kv.keys() if k.startswith("environment.wordle.")]
            assert len(keys) == 1, keys
            record = bus_pb2.ServiceRecord.FromString((await kv.get(keys[0])).value)
            assert (record.name, record.address, record.labels["language"]) == ("wordle", address, "typescript")
        finally:
            await nc.close()
        async with env_client(record.address, certs, "orchestrator") as client:
            assert (await client.describe()).server.language == "typescript"
    finally:
        assert stop(proc) == 0, log.read_text()


BUS_TLS = """
const { connectBus, publishMonitorTrace, readScores } = require("./dist/src/index.js");
(async () => {
  const [what, app] = [process.env.WHAT, process.env.APP];
  if (what === "anonymous") {
    try { await connectBus(process.env.NATS_URL); console.log(JSON.stringify({ connected: true })); }
    catch (e) { console.log(JSON.stringify({ connected: false, error: String(e.message || e) })); }
    return;
  }
  const nc = await connectBus(process.env.NATS_URL);  // TLS and the certificate from ROLLMESH_TLS_*
  let out;
  if (what === "publish") {
    out = await publishMonitorTrace(nc, app, { messages: [{ role: "user", content: "2 + 2?" }], answer: "4" });
  } else {
    const scores = await readScores(nc, app, { deliver: "all" });
    const score = await scores.next(15000);
    await scores.close();
    out = { traceId: score.traceId, rubric: score.rubric, reward: score.reward };
  }
  console.log(JSON.stringify(out));
  await nc.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_tls_traces_and_scores_over_a_secured_nats(built: Path, certs: Path, secure_nats: str) -> None:
    """A publisher's trace is stored in MONITOR; a reader reads a score from SCORES; no certificate, no connection."""
    app = f"tls-{uuid.uuid4().hex[:8]}"
    nc = await nats_as(secure_nats, certs, "operator")
    try:
        js = nc.jetstream()
        for spec in (bus.MONITOR, bus.SCORES):
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_stream(spec.config())
        published = await asyncio.to_thread(
            node_json, BUS_TLS, WHAT="publish", APP=app, NATS_URL=secure_nats, **tls_env(certs, "publisher")
        )
        assert (published["stream"], published["duplicate"]) == ("MONITOR", False)
        stored = await js.get_last_msg("MONITOR", bus.monitor_subject(app))
        trace = bus_pb2.MonitorTrace.FromString(stored.data)
        assert (trace.trace_id, trace.app, trace.answer) == (published["traceId"], app, "4")
        score = bus_pb2.MonitorScore(trace_id=trace.trace_id, app=app, rubric="rules", reward=1.0)
        await js.publish(bus.scores_subject(app), score.SerializeToString(), stream="SCORES")
    finally:
        await nc.close()
    read = await asyncio.to_thread(
        node_json, BUS_TLS, WHAT="read", APP=app, NATS_URL=secure_nats, **tls_env(certs, "reader")
    )
    assert read == {"traceId": published["traceId"], "rubric": "rules", "reward": 1}
    anonymous = await asyncio.to_thread(
        node_json, BUS_TLS, WHAT="anonymous", NATS_URL=secure_nats, **tls_env(certs, None)
    )
    assert anonymous["connected"] is False, anonymous
