"""`rollmesh bench verifiers`: rollouts/s of a multi-turn verifiers environment hosted by rollmesh
versus the same environment under verifiers' own ZMQ env server, side by side in one run.

Environment: vf_envs/vf_guess.py next to this file (guess a number from "higher"/"lower" hints, up to 4
turns). Model: one `rollmesh inference serve --backend scripted` subprocess (guesses 50, 25, 75,
12), so both sides get the same replies and generation costs nothing; it serves gRPC to the
rollmesh side and its OpenAI facade to verifiers' model client.

(a) rollmesh: RolloutEngine in this process, the environment in `rollmesh env serve vf_guess.py`
    run by the verifiers interpreter (verifiers cannot live in this venv);
(b) verifiers: verifiers_driver.py run by that interpreter: ZMQEnvServer (one worker process) and
    a ZMQEnvClient sending `run_group` requests, as a prime-rl-style trainer does.

Both run groups of ROLLOUTS_PER_TASK rollouts, `rollouts` per repeat with `concurrency` rollouts
in flight, after a warm-up; neither publishes trajectories. Reported: the median rollouts/s of
each side over the repeats, the ratio rollmesh / verifiers, and CPU ms per rollout of each side's
processes (the orchestrator or client, the env server, the shared inference server).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import cpu_s, start_env_server, stop

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
DEFAULT_PYTHON = REPO / ".venv-verifiers" / "bin" / "python"
ENV_FILE = HERE / "vf_envs" / "vf_guess.py"
ENV = "vf-guess"
SCRIPT = "guess-number"
ROLLOUTS_PER_TASK = 4
MAX_TOKENS = 16
INFERENCE_RE = re.compile(r"rollmesh inference server on (\S+): (\S+) .*OpenAI API on (\S+)")


class MissingInterpreter(RuntimeError):
    pass


def resolve_python(python: str | None) -> str:
    """The verifiers interpreter: the given path, else the repository's .venv-verifiers."""
    path = Path(python) if python else DEFAULT_PYTHON
    if not path.is_file() or not os.access(path, os.X_OK):
        raise MissingInterpreter(
            f"no verifiers interpreter at {path}: `make setup` builds .venv-verifiers (verifiers 0.3.1 with "
            "rollmesh), or pass --verifiers-python"
        )
    return str(path)


def launch_inference() -> subprocess.Popen:
    """The scripted model with its OpenAI facade (started first: it boots while the env server does)."""
    cmd = [sys.executable, "-m", "rollmesh.cli", "inference", "serve", "--backend", "scripted"]
    cmd += ["--model", SCRIPT, "--port", "0", "--openai-port", "0"]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def wait_inference(proc: subprocess.Popen) -> tuple[str, str, str]:
    """(gRPC address, model name, OpenAI API root) once the server listens."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := INFERENCE_RE.search(line):
            return m.group(1), m.group(2), m.group(3)
    raise RuntimeError("the scripted inference server did not start")


async def rollmesh_side(
    env_address: str, inference_address: str, rollouts: int, concurrency: int, repeats: int, pids: dict[str, int]
) -> list[dict[str, Any]]:
    from ...orchestrator.config import RolloutConfig
    from ...orchestrator.engine import RolloutEngine

    cfg = RolloutConfig(
        run_id=f"bench-vf-{os.getpid()}",
        env=ENV,
        split="train",
        rollouts_per_task=ROLLOUTS_PER_TASK,
        max_concurrency=concurrency,
        sampling={"max_tokens": MAX_TOKENS},
    )
    async with RolloutEngine(cfg, env_addresses=[env_address], inference_addresses=[inference_address]) as engine:
        tasks = await engine.list_tasks()

        async def batch(n: int) -> None:
            async for _ in engine.run([tasks[i % len(tasks)] for i in range(-(-n // ROLLOUTS_PER_TASK))]):
                pass

        await batch(min(rollouts, 64))  # warm-up: connections, chat template
        out = []
        for _ in range(repeats):
            before = engine.stats.snapshot()
            cpu0 = time.process_time()
            others0 = {role: cpu_s(pid) or 0.0 for role, pid in pids.items()}
            t0 = time.perf_counter()
            await batch(rollouts)
            wall = time.perf_counter() - t0
            after = engine.stats.snapshot()
            finished = after["finished"] - before["finished"]
            reward = after["by_env"][ENV]["reward_sum"] - before["by_env"].get(ENV, {}).get("reward_sum", 0.0)
            out.append(
                {
                    "rollouts": finished,
                    "failed": after["errored"] - before["errored"],
                    "rollouts_per_s": (finished + after["errored"] - before["errored"]) / wall,
                    "wall_s": wall,
                    "reward_mean": reward / max(1, finished),
                    "model_calls": after["model_calls"] - before["model_calls"],
                    "cpu_s": {
                        "orchestrator": time.process_time() - cpu0,
                        **{role: (cpu_s(pid) or 0.0) - others0[role] for role, pid in pids.items()},
                    },
                }
            )
        return out


def launch_verifiers_side(
    python: str, rollouts: int, concurrency: int, repeats: int, openai_url: str, model: str, inference_pid: int
) -> subprocess.Popen:
    """The driver boots (imports, server, worker) while the rollmesh side runs, then waits for "go"."""
    cmd = [python, str(HERE / "verifiers_driver.py"), "--openai-url", openai_url, "--model", model]
    cmd += ["--rollouts", str(rollouts), "--concurrency", str(concurrency), "--repeats", str(repeats)]
    cmd += ["--group-size", str(ROLLOUTS_PER_TASK), "--max-tokens", str(MAX_TOKENS)]
    cmd += ["--inference-pid", str(inference_pid), "--wait-for-go"]
    log = tempfile.TemporaryFile("w+")  # its logs and progress bars, read back on a failure
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)


def wait_ready(driver: subprocess.Popen) -> None:
    """Both sides boot at once, but neither measures while the other is still booting."""
    assert driver.stdout is not None
    if driver.stdout.readline().strip() != "ready":  # EOF: its server failed to start
        driver.wait(30)
        assert driver.stderr is not None
        driver.stderr.seek(0)
        raise RuntimeError(f"the verifiers side failed (exit {driver.returncode}): {driver.stderr.read()[-2000:]}")


def run_verifiers_side(driver: subprocess.Popen) -> list[dict[str, Any]]:
    out, _ = driver.communicate("go\n", timeout=600)
    lines = out.strip().splitlines()
    if driver.returncode != 0 or not lines:
        assert driver.stderr is not None
        driver.stderr.seek(0)
        raise RuntimeError(f"the verifiers side failed (exit {driver.returncode}): {driver.stderr.read()[-2000:]}")
    return json.loads(lines[-1])["repeats"]


def _summary(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(r["rollouts"] + r["failed"] for r in repeats)
    roles = repeats[0]["cpu_s"].keys()
    return {
        "rollouts_per_s": round(statistics.median(r["rollouts_per_s"] for r in repeats), 1),
        "repeats_rollouts_per_s": [round(r["rollouts_per_s"], 1) for r in repeats],
        "completed": sum(r["rollouts"] for r in repeats),
        "failed": sum(r["failed"] for r in repeats),
        "reward_mean": round(statistics.fmean(r["reward_mean"] for r in repeats), 4),
        "model_calls_per_rollout": round(sum(r["model_calls"] for r in repeats) / max(1, total), 3),
        "cpu_ms_per_rollout": {
            role: round(sum(r["cpu_s"][role] for r in repeats) / max(1, total) * 1e3, 3) for role in roles
        },
    }


def measure(python: str, rollouts: int, concurrency: int, repeats: int) -> dict[str, Any]:
    inference = launch_inference()
    driver = None
    try:
        inference_address, model, openai_url = wait_inference(inference)
        driver = launch_verifiers_side(python, rollouts, concurrency, repeats, openai_url, model, inference.pid)
        env, env_address = start_env_server(str(ENV_FILE), python=python)
        try:
            wait_ready(driver)
            pids = {"env": env.pid, "inference": inference.pid}
            mesh = asyncio.run(rollmesh_side(env_address, inference_address, rollouts, concurrency, repeats, pids))
        finally:
            stop(env)
        ref = run_verifiers_side(driver)
    finally:
        if driver is not None and driver.poll() is None:
            stop(driver)
        stop(inference)
    result: dict[str, Any] = {
        "env": ENV,
        "rollouts": rollouts,
        "concurrency": concurrency,
        "repeats": repeats,
        "rollouts_per_task": ROLLOUTS_PER_TASK,
        "cpus": os.cpu_count(),
        "rollmesh": _summary(mesh),
        "verifiers": _summary(ref),
    }
    result["ratio"] = round(result["rollmesh"]["rollouts_per_s"] / result["verifiers"]["rollouts_per_s"], 3)
    return result


def main(
    as_json: bool, *, python: str | None = None, rollouts: int = 256, concurrency: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Raises MissingInterpreter when the verifiers interpreter is absent."""
    result = measure(resolve_python(python), rollouts, concurrency, repeats)
    if as_json:
        print(json.dumps(result))
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"verifiers env {ENV}: {rollouts} rollouts x {repeats} repeats (median), {concurrency} in flight, "
        f"scripted model, {result['cpus']} CPUs"
    )
    for col in ("host", "rollouts/s", "vs verifiers", "completed/failed", "reward", "CPU ms/rollout"):
        table.add_column(col, justify="left" if col == "host" else "right")
    for side, label in (("rollmesh", "rollmesh"), ("verifiers", "verifiers ZMQ server")):
        s = result[side]
        table.add_row(
            label,
            f"{s['rollouts_per_s']:,.1f}",
            f"{result['ratio']:.3f}" if side == "rollmesh" else "1.000",
            f"{s['completed']}/{s['failed']}",
            f"{s['reward_mean']:.3f}",
            ", ".join(f"{role} {ms:.2f}" for role, ms in s["cpu_ms_per_rollout"].items()),
        )
    Console().print(table)
    return result
