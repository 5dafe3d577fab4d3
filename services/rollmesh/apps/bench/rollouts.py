"""`rollmesh bench rollouts`: whole rollouts of a multi-turn tool environment through the mesh
versus the same environment logic in-process, side by side in one run.

Environment: wiki-search (FTS5 search and page reads as tools). Policy: the scripted
search-read-answer agent (three model calls, two tool calls per episode), so generation costs
nothing and what is measured is the mesh itself.

(a) in-process: the transport-free `Episode` driven directly by the scripted actions;
(b) the mesh: RolloutEngine in this process, the environment in 1 and in 2 `rollmesh env serve`
    subprocesses, the scripted backend in a `rollmesh inference serve` subprocess (chat
    template, token ids, Tokenize for each environment reply), every trajectory published to
    JetStream on an embedded nats-server (dedup, acks), groups of 4 rollouts per task.

Both run `episodes` episodes with `concurrency` in flight after a warm-up. Reported: episodes/s,
the ratio mesh / in-process, and CPU per episode: this process's CPU time / episodes (the
orchestrator, or the in-process runner), plus the CPU of the mesh's other processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ...env.loader import load_environments
from ...inference.backends.scripted import load_script
from ...natsd import EmbeddedNats
from ...telemetry import tracing_enabled
from .harness import cpu_s, start_env_server, start_server, stop

TARGET = "rollmesh.examples.wiki_search"
ENV = "wiki-search"
SCRIPT = "wiki-search"
ROLLOUTS_PER_TASK = 4
INFERENCE_RE = re.compile(r"rollmesh inference server on (\S+):")


def _cpu_s(pid: int) -> float:
    return cpu_s(pid) or 0.0


def start_scripted_inference(script: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "rollmesh.cli", "inference", "serve", "--backend", "scripted"]
    cmd += ["--model", script, "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := INFERENCE_RE.search(line):
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"inference server did not start: {' '.join(cmd)}")


# ---- (a) in-process ------------------------------------------------------------------------------


def _scripted_actions() -> list[dict[str, Any]]:
    """The scripted replies as the assistant messages the orchestrator would send."""
    from ... import convert
    from ...inference.backends.scripted import load_script
    from ...orchestrator.toolcalls import assistant_message

    return [
        convert.message_from_pb(assistant_message(r, call_prefix=f"call_{i}"))
        for i, r in enumerate(load_script(SCRIPT))
    ]


async def inprocess(episodes: int, concurrency: int) -> tuple[float, float]:
    """(episodes/s, CPU seconds of this process) for `episodes` episodes."""
    env = load_environments(TARGET, {})[0]
    tasks = env.tasks("test")
    actions = _scripted_actions()
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            episode = env.episode(tasks[i % len(tasks)], seed=i)
            await episode.start()
            try:
                for action in actions:
                    if (await episode.step(action)).done:
                        break
            finally:
                await episode.close()

    await asyncio.gather(*(one(i) for i in range(min(episodes, 64))))  # warm-up (index, imports)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(episodes)))
    return episodes / (time.perf_counter() - t0), time.process_time() - cpu0


# ---- (b) the mesh --------------------------------------------------------------------------------


async def mesh(
    env_addresses: Sequence[str], inference_address: str, nats_url: str | None, episodes: int, concurrency: int
) -> dict[str, Any]:
    from ... import bus
    from ...orchestrator.config import RolloutConfig
    from ...orchestrator.engine import RolloutEngine

    publisher = None
    nc = None
    if nats_url:
        nc = await bus.connect(nats_url)
        publisher = bus.Publisher(nc, nc.jetstream())
    try:
        cfg = RolloutConfig(
            run_id=f"bench-{os.getpid()}-{len(env_addresses)}",
            env=ENV,
            rollouts_per_task=ROLLOUTS_PER_TASK,
            max_concurrency=concurrency,
        )
        async with RolloutEngine(
            cfg, env_addresses=env_addresses, inference_addresses=[inference_address], publisher=publisher
        ) as engine:
            tasks = await engine.list_tasks()

            def stream(n: int):
                return [tasks[i % len(tasks)] for i in range(-(-n // ROLLOUTS_PER_TASK))]

            async for _ in engine.run(stream(min(episodes, 64))):  # warm-up: connections, chat template
                pass
            before = engine.stats.snapshot()
            cpu0, t0 = time.process_time(), time.perf_counter()
            done = 0
            sample = None
            async for group in engine.run(stream(episodes)):
                done += len(group)
                sample = sample or group[0]
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            after = engine.stats.snapshot()
    finally:
        if nc is not None:
            await nc.close()
    errors = after["errored"] - before["errored"]
    return {"episodes": done, "eps": done / wall, "cpu_s": cpu, "errors": errors, "wall_s": wall, "sample": sample}


# ---- (c) the bare transport ------------------------------------------------------------------


def bare(sample: Any, nats: EmbeddedNats, episodes: int, concurrency: int) -> dict[str, Any]:
    """The messages of `sample` (a trajectory of the mesh run) for `episodes` episodes over bare
    grpc.aio and JetStream, in the same process layout (bare_rollout.py): episodes/s and each
    process's CPU per episode."""
    from . import bare_rollout

    messages = asyncio.run(bare_rollout.record(TARGET, sample, load_script(SCRIPT)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "messages.json")
        messages.save(path)
        module = [sys.executable, "-m", "rollmesh.apps.bench.bare_rollout"]
        servers = {role: start_server([*module, role, path]) for role in ("env", "inference")}
        try:
            pids = {role: p.pid for role, (p, _) in servers.items()}
            if nats.proc is not None:
                pids["nats"] = nats.proc.pid
            before = {role: _cpu_s(pid) for role, pid in pids.items()}
            r = asyncio.run(
                bare_rollout.run(servers["env"][1], servers["inference"][1], nats.url, messages, episodes, concurrency)
            )
            spent = {role: _cpu_s(pid) - before[role] for role, pid in pids.items()}
        finally:
            for p, _ in servers.values():
                stop(p)
    cpu = {"client": r["cpu_s"], **spent}
    return {"eps": r["eps"], "cpu_ms_per_episode": {role: round(c / episodes * 1e3, 3) for role, c in cpu.items()}}


def measure(episodes: int, concurrency: int, replicas: Sequence[int], publish: bool) -> dict[str, Any]:
    inproc_eps, inproc_cpu = asyncio.run(inprocess(episodes, concurrency))
    result: dict[str, Any] = {
        "env": ENV,
        "episodes": episodes,
        "concurrency": concurrency,
        "rollouts_per_task": ROLLOUTS_PER_TASK,
        "model_calls_per_episode": len(_scripted_actions()),
        "cpus": os.cpu_count(),
        "tracing": tracing_enabled(),
        "publish": publish,
        "inproc_eps": round(inproc_eps, 1),
        "mesh_eps": {},
        "ratio": {},
        "overhead_pct": {},
        "cpu_ms_per_episode": {"inproc": round(inproc_cpu / episodes * 1e3, 3)},
        "mesh_other_cpu_ms_per_episode": {},
        "total_cpu_ms_per_episode": {"inproc": round(inproc_cpu / episodes * 1e3, 3)},
        "cpu_vs_inproc": {},
        "errors": {},
    }
    nats = EmbeddedNats().start() if publish else None
    inference, inference_address = start_scripted_inference(SCRIPT)
    sample = None
    try:
        for n in replicas:
            servers = [start_env_server(TARGET) for _ in range(n)]
            try:
                roles = {"inference": [inference.pid], "env": [p.pid for p, _ in servers]}
                if nats is not None and nats.proc is not None:
                    roles["nats"] = [nats.proc.pid]
                before = {role: sum(map(_cpu_s, pids)) for role, pids in roles.items()}
                r = asyncio.run(
                    mesh([a for _, a in servers], inference_address, nats.url if nats else None, episodes, concurrency)
                )
                spent = {role: sum(map(_cpu_s, pids)) - before[role] for role, pids in roles.items()}
            finally:
                for p, _ in servers:
                    stop(p)
            key = str(n)
            result["mesh_eps"][key] = round(r["eps"], 1)
            result["ratio"][key] = round(r["eps"] / inproc_eps, 4)
            result["overhead_pct"][key] = round((inproc_eps / r["eps"] - 1) * 100, 1)
            result["cpu_ms_per_episode"][key] = round(r["cpu_s"] / r["episodes"] * 1e3, 3)
            result["mesh_other_cpu_ms_per_episode"][key] = {
                role: round(cpu / r["episodes"] * 1e3, 3) for role, cpu in spent.items()
            }
            result["errors"][key] = r["errors"]
            total = result["cpu_ms_per_episode"][key] + sum(result["mesh_other_cpu_ms_per_episode"][key].values())
            result["total_cpu_ms_per_episode"][key] = round(total, 3)
            result["cpu_vs_inproc"][key] = round(total / result["cpu_ms_per_episode"]["inproc"], 2)
            sample = sample or r["sample"]
        if nats is not None and sample is not None:
            ref = bare(sample, nats, episodes, concurrency)
            result["bare_eps"] = round(ref["eps"], 1)
            result["bare_cpu_ms_per_episode"] = ref["cpu_ms_per_episode"]
            result["total_cpu_ms_per_episode"]["bare"] = round(sum(ref["cpu_ms_per_episode"].values()), 3)
            result["ratio_vs_bare_transport"] = {k: round(eps / ref["eps"], 4) for k, eps in result["mesh_eps"].items()}
    finally:
        stop(inference)
        if nats is not None:
            nats.stop()
    return result


def main(
    as_json: bool,
    *,
    episodes: int = 1024,
    concurrency: int = 256,
    replicas: Sequence[int] = (1, 2),
    publish: bool = True,
) -> dict[str, Any]:
    result = measure(episodes, concurrency, replicas, publish)
    if as_json:
        print(json.dumps(result))
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"rollouts: {ENV}, scripted policy ({result['model_calls_per_episode']} model calls/episode), "
        f"{episodes} episodes, {concurrency} in flight, {result['cpus']} CPUs"
    )
    columns = ("path", "episodes/s", "vs in-process", "vs bare transport", "CPU ms/episode, all processes", "of which")
    for col in columns:
        table.add_column(col, justify="left" if col in ("path", "of which") else "right")
    total = result["total_cpu_ms_per_episode"]
    table.add_row("in-process Episode", f"{result['inproc_eps']:,.0f}", "1.00", "", f"{total['inproc']:.2f}", "")
    for key, eps in result["mesh_eps"].items():
        others = result["mesh_other_cpu_ms_per_episode"][key]
        bare_ratio = result.get("ratio_vs_bare_transport", {}).get(key)
        table.add_row(
            f"mesh, {key} env replica{'s' if key != '1' else ''}",
            f"{eps:,.0f}",
            f"{result['ratio'][key]:.3f}",
            "" if bare_ratio is None else f"{bare_ratio:.3f}",
            f"{total[key]:.2f} ({result['cpu_vs_inproc'][key]:.1f}x)",
            ", ".join(
                f"{role} {ms:.2f}" for role, ms in {"orchestrator": result["cpu_ms_per_episode"][key], **others}.items()
            ),
        )
    if "bare_eps" in result:
        table.add_row(
            "bare transport, same messages",
            f"{result['bare_eps']:,.0f}",
            f"{result['bare_eps'] / result['inproc_eps']:.3f}",
            "1.00",
            f"{total['bare']:.2f}",
            ", ".join(f"{role} {ms:.2f}" for role, ms in result["bare_cpu_ms_per_episode"].items()),
        )
    Console().print(table)
    return result
