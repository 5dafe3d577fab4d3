"""`rollmesh eval` end to end on real servers: a mesh (rollmesh.apps.launcher) with a real nats-server, an
environment server hosting guess-number and wiki-search, an inference server with the tiny model
(hf backend), a scripted inference server (known answers, so rewards are not all zero) and the
rubric service; the eval runs as the real command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from rollmesh.apps.export import read_bus
from rollmesh.apps.launcher import EnvServerConfig, InferenceConfig, Mesh, MeshConfig, MeshRubricConfig, NatsConfig
from rollmesh.apps.results import ResultsDir

TINY = "tiny-eval"  # the served model name (the model directory's name)
SCRIPTED = "scripted-wiki-search"  # searches, reads the Nile page, answers "Khartoum" (task q001)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from rollmesh.inference.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / TINY)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> AsyncIterator[Mesh]:
    from rollmesh.apps.launcher import ServiceProcess, inference_command

    base = tmp_path_factory.mktemp("mesh")
    rubric = {"rubric": [{"name": "answer", "function": [{"name": "correct", "function": "exact_match",
                                                          "params": {"extract": "answer"}}]}]}  # fmt: skip
    config = MeshConfig(
        dir=str(base),
        nats=NatsConfig(port=0),
        envs=[EnvServerConfig(target=["guess-number", "wiki-search"], args={"max_turns": 3})],
        inference=InferenceConfig(model=str(tiny_model), backend="hf", dtype="float32"),
        rubric=MeshRubricConfig(inline=rubric),
        grace_s=1.0,
    )
    async with Mesh(config) as m:
        # The evals this module runs are the mesh's orchestrator (security is on by default).
        credentials = pytest.MonkeyPatch()
        for key, value in m.identity("orchestrator").env().items():
            credentials.setenv(key, value)
        argv = inference_command(
            InferenceConfig(model="wiki-search", backend="scripted"), host="127.0.0.1", nats_url=m.nats_url, grace_s=1
        )
        scripted = ServiceProcess(
            "scripted", "inference", argv, base / "logs" / "scripted.log", tls=m.identity("inference")
        ).start()
        m.services.append(scripted)  # stopped with the mesh
        await scripted.wait_ready(120)
        yield m
        credentials.undo()


def eval_cmd(mesh: Mesh, *args: str, json_out: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "rollmesh.cli", "eval", "--nats", mesh.nats_url, "--no-progress", *args]
    return [*cmd, "--json"] if json_out else cmd


def run(cmd: list[str], timeout: float = 180, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_eval_guess_number_on_the_tiny_model(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "gn"
    r = run(eval_cmd(mesh, "--env", "guess-number", "--model", TINY, "-n", "3", "-r", "2", "--max-tokens", "6",
                     "--out", str(out), "--seed", "7", json_out=True))  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["run"]["run_id"] == "gn" and summary["run"]["model"] == TINY
    assert summary["counts"]["trajectories"] == 6 and summary["counts"]["expected"] == 6
    assert summary["counts"]["errored"] == 0 and summary["counts"]["tasks"] == 3
    assert set(summary["rewards"]) == {"solved", "efficiency"}
    assert set(summary["pass_at_k"]) == {"1", "2"} and summary["pass_at_k_tasks"] == {"1": 3, "2": 3}
    trajs = lines(out / "trajectories.jsonl")
    assert len({t["trajectory_id"] for t in trajs}) == 6
    assert summary["reward"]["mean"] == pytest.approx(sum(t.get("reward", 0.0) for t in trajs) / 6)
    for t in trajs:
        assert t["provenance"]["model"] == TINY and t["stop_reason"] != "STOP_REASON_ERROR"
        for turn in t["turns"]:  # the exact tokens are kept
            assert turn["prompt_ids"] and 0 < len(turn["completion_ids"]) <= 6
            assert len(turn["completion_logprobs"]) == len(turn["completion_ids"])
    assert summary["tokens"]["completion"] == sum(len(u["completion_ids"]) for t in trajs for u in t["turns"])
    html = (out / "report.html").read_text()
    assert "<svg" in html and "pass@2" in html and "g00000" in html
    assert "![reward histogram](reward_histogram.svg)" in (out / "report.md").read_text()
    assert (out / "reward_histogram.svg").read_text().startswith("<svg")
    # Published to JetStream too, under the run id.
    on_bus = await read_bus(mesh.nats_url, "gn")
    assert sorted(t.trajectory_id for t in on_bus) == sorted(t["trajectory_id"] for t in trajs)
    assert "guess-number" in r.stderr and "pass@1" in r.stderr  # the table (on stderr with --json)


def test_eval_wiki_search_by_address_needs_no_bus(mesh: Mesh, tmp_path: Path) -> None:
    env_address = mesh.addresses("environment")[0]
    tiny_address = mesh.addresses("inference")[0]
    r = run([sys.executable, "-m", "rollmesh.cli", "eval", "--env", "wiki-search", "--env-address", env_address,
             "--model", tiny_address, "-n", "2", "-r", "2", "--max-tokens", "8", "--no-publish", "--no-progress",
             "--nats", "nats://127.0.0.1:1", "--out", str(tmp_path / "ws")])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wiki-search" in r.stdout and "pass@2" in r.stdout  # the final table
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["counts"]["trajectories"] == 4 and summary["counts"]["errored"] == 0
    assert set(summary["rewards"]) == {"correct_answer", "used_tools"}


async def test_rubric_scored_eval_then_export(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "rubric-run"
    r = run(eval_cmd(mesh, "--env", "wiki-search", "--split", "train", "--model", SCRIPTED, "--rubric", "answer",
                     "-n", "3", "-r", "2", "--out", str(out), json_out=True))  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    # The scripted agent answers q001 right and the others wrong; the rubric service scores it.
    assert summary["rewards"] == {"correct": pytest.approx(1 / 3)}
    assert summary["pass_at_k"]["1"] == pytest.approx(1 / 3) and summary["pass_at_k"]["2"] == pytest.approx(1 / 3)
    by_task = {row["task_id"]: row for row in summary["tasks"]}
    assert by_task["q001"]["passed"] == 2 and by_task["q002"]["passed"] == 0

    # Export: parquet with --min-reward keeps q001's two rollouts, with their exact tokens.
    r = run([sys.executable, "-m", "rollmesh.cli", "export", "--run", str(out), "--format", "parquet",
             "--min-reward", "1", "--out", str(tmp_path / "sft.parquet")])  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(tmp_path / "sft.parquet").to_pylist()
    assert [row["task_id"] for row in rows] == ["q001", "q001"]
    stored = {t.trajectory_id: t for t in ResultsDir(out).trajectories()}
    for row in rows:
        t = stored[row["id"]]
        last = t.turns[-1]
        assert row["prompt_ids"] + row["completion_ids"] == list(last.prompt_ids) + list(last.completion_ids)
        assert sum(row["completion_mask"]) == sum(len(turn.completion_ids) for turn in t.turns)
        assert row["completion"][-1]["content"].endswith("ANSWER: Khartoum")
        assert [m["role"] for m in row["completion"][:2]] == ["assistant", "tool"]
    # jsonl of everything, read back from the bus by run id (no results directory by that name).
    r = run([sys.executable, "-m", "rollmesh.cli", "export", "--run", "rubric-run", "--nats", mesh.nats_url,
             "--out", str(tmp_path / "all.jsonl")], cwd=tmp_path / "..")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(row["id"] for row in lines(tmp_path / "all.jsonl")) == sorted(stored)
    assert "(nats://" in r.stderr


def test_a_rubric_that_cannot_score_is_a_clear_error(mesh: Mesh, tmp_path: Path) -> None:
    base = ["--env", "wiki-search", "--split", "train", "--model", SCRIPTED, "-n", "2", "-r", "1"]
    r = run(eval_cmd(mesh, *base, "--rubric", "no-such-rubric", "--out", str(tmp_path / "a")))
    assert r.returncode == 2, r.stderr
    assert "no rubric 'no-such-rubric'" in r.stderr and "known: answer" in r.stderr
    r = run(
        eval_cmd(mesh, *base, "--rubric", "answer", "--rubric-address", "127.0.0.1:1", "--out", str(tmp_path / "b"))
    )
    assert r.returncode == 2, r.stderr
    assert "rubric" in r.stderr and "127.0.0.1:1" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture
async def slow_guesser(mesh: Mesh) -> AsyncIterator[str]:
    """A scripted inference server in this process whose every model call takes 0.1 s, so that an
    eval is reliably still running when the test interrupts it."""
    from rollmesh.inference.backends.scripted import ScriptedBackend, load_script
    from rollmesh.inference.server import InferenceServer
    from rollmesh.security.tls import using

    with using(mesh.identity("inference")):  # a server of the mesh: its certificate, not the process's
        server = InferenceServer(ScriptedBackend(load_script("guess-number"), model="slow-guesser", delay_s=0.1))
    await server.start()
    yield server.address
    await server.stop(0)


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def wait_for_lines(path: Path, at_least: int, proc: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(120):
        while (n := count_lines(path)) < at_least:
            assert proc.returncode is None, f"eval ended early: {await proc.communicate()}"
            await asyncio.sleep(0.02)
    return n


async def start(cmd: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_resume_after_interrupt_and_kill(mesh: Mesh, slow_guesser: str, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    traj_file = out / "trajectories.jsonl"
    cmd = eval_cmd(mesh, "--env", "guess-number", "--model", slow_guesser, "-n", "10", "-r", "2",
                   "--concurrency", "2", "--out", str(out))  # fmt: skip
    # 1. ctrl-C: exit 130, partial results and a summary of them, a hint to resume.
    p = await start(cmd)
    try:
        await wait_for_lines(traj_file, 2, p)
        p.send_signal(signal.SIGINT)
        _, err_bytes = await asyncio.wait_for(p.communicate(), 60)
    finally:
        if p.returncode is None:
            p.kill()
    err = err_bytes.decode()
    assert p.returncode == 130, err
    assert "interrupted" in err and f"--out {out}" in " ".join(err.split())
    first = traj_file.read_text().splitlines()
    assert 2 <= len(first) < 20
    assert json.loads((out / "summary.json").read_text())["counts"]["trajectories"] == len(first)

    # 2. SIGKILL mid-run (only `--out` given: the rest comes from the stored run).
    p = await start(eval_cmd(mesh, "--out", str(out), "--model", slow_guesser))
    try:
        await wait_for_lines(traj_file, len(first) + 2, p)
    finally:
        p.kill()
        await p.wait()
    second = traj_file.read_text().splitlines()
    assert second[: len(first)] == first  # nothing finished was lost or rewritten
    whole = [line for line in second if line.endswith("}")]
    assert len(whole) < 20

    # 3. Finish: every rollout exactly once, the earlier ones untouched.
    p = await start(eval_cmd(mesh, "--out", str(out), "--model", slow_guesser, json_out=True))
    stdout, err_bytes = await asyncio.wait_for(p.communicate(), 120)
    assert p.returncode == 0, err_bytes.decode()
    final = traj_file.read_text().splitlines()
    ids = [json.loads(line)["trajectory_id"] for line in final]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert [json.loads(line)["trajectory_id"] for line in whole] == ids[: len(whole)]
    summary = json.loads(stdout)
    assert summary["counts"]["trajectories"] == 20 and summary["counts"]["missing"] == 0
    assert summary["run"]["sessions"] == 3 and summary["run"]["wall_s"] > 0
    assert summary["reward"]["mean"] is not None and summary["counts"]["errored"] == 0
    meta = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in meta["sessions"]] == ["interrupted", "running", "finished"]  # the kill left "running"
    assert meta["sessions"][-1]["new_trajectories"] == 20 - len(whole)
    # A rerun of a finished evaluation runs nothing and changes nothing.
    p = await start(eval_cmd(mesh, "--out", str(out), "--model", slow_guesser))
    await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0 and traj_file.read_text().splitlines() == final


def test_bad_input_is_a_clear_error(mesh: Mesh, tmp_path: Path) -> None:
    cases = [
        (["--env", "nope", "--model", TINY], "no environment server for 'nope' (known: guess-number, wiki-search)"),
        (["--env", "guess-number", "--model", "no-such-model"], "no inference server for model 'no-such-model'"),
        (["--env", "guess-number", "--model", "127.0.0.1:1"], "cannot reach the inference server at 127.0.0.1:1"),
        (["--env", "guess-number", "--model", TINY, "--rollouts", "0"], "rollouts_per_task"),
        (
            ["--env", "guess-number", "--model", TINY, "--split", "nope"],
            "environment 'guess-number' has no split 'nope'; splits: ['test', 'train']",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "x"
        r = run(eval_cmd(mesh, *args, "-n", "1", "--out", str(out)))
        assert r.returncode == 2, (args, r.stderr)
        assert message in " ".join(r.stderr.split()), (args, r.stderr)
        assert not out.exists()  # nothing ran: no results directory left behind
        if args[:2] == ["--env", "nope"]:
            assert "start it with `rollmesh up`" in " ".join(r.stderr.split())
    # The bus is down: said before anything starts.
    down = ["--nats", "nats://127.0.0.1:1", "--out", str(tmp_path / "y")]
    r = run([sys.executable, "-m", "rollmesh.cli", "eval", "--env", "guess-number", "--model", TINY, "-n", "1", *down],
            env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert r.returncode == 2
    assert "cannot reach NATS at nats://127.0.0.1:1" in r.stderr and "to find the environment by name" in r.stderr
    assert r.stderr.count("Connect call failed") == 0  # one clear error, not one line per attempt
