"""`rollmesh bench env-step`: one environment stepped in-process and through its gRPC server on
loopback, side by side in one run.

The environment is guess-number with a policy that always guesses below the range, so every step
runs the real environment logic (parse the guess, answer "Higher.") and no episode ends during a
measurement. The server runs in its own process, as in production; the client in this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from ...env.client import EnvClient
from ...env.loader import load_environments
from .harness import percentile, start_env_server, stop

TARGET = "rollmesh.examples.guess_number"
ENV_ARGS = {"max_turns": 100_000_000, "num_tasks": 50}
ACTION = {"role": "assistant", "content": "0"}


async def inprocess(seconds: float) -> tuple[float, list[float]]:
    env = load_environments(TARGET, ENV_ARGS)[0]
    episode = env.episode(env.tasks()[0])
    await episode.start()
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        await episode.step(ACTION)
        lat.append(time.perf_counter() - t0)
    return len(lat) / seconds, lat


async def grpc_run(address: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    async with await EnvClient.connect(address) as client:
        tasks = await client.tasks("guess-number")
        lat: list[list[float]] = [[] for _ in range(concurrency)]
        go = asyncio.Event()
        end = 0.0

        async def player(i: int) -> None:
            async with client.episode("guess-number", tasks[i % len(tasks)].task_id) as ep:
                await ep.step(ACTION)  # warm up the stream
                await go.wait()
                while (t0 := time.perf_counter()) < end:
                    await ep.step(ACTION)
                    lat[i].append(time.perf_counter() - t0)

        players = [asyncio.create_task(player(i)) for i in range(concurrency)]
        await asyncio.sleep(0.5)
        end = time.perf_counter() + seconds
        go.set()
        await asyncio.gather(*players)
    flat = [x for xs in lat for x in xs]
    return len(flat) / seconds, flat


def measure(concurrency: int, seconds: float) -> dict[str, Any]:
    inproc_sps, inproc_lat = asyncio.run(inprocess(seconds))
    args = [a for k, v in ENV_ARGS.items() for a in ("--arg", f"{k}={v}")]
    proc, address = start_env_server(TARGET, args)
    try:
        _, seq_lat = asyncio.run(grpc_run(address, 1, seconds))
        grpc_sps, conc_lat = asyncio.run(grpc_run(address, concurrency, seconds))
    finally:
        stop(proc)
    inproc_lat.sort()
    seq_lat.sort()
    conc_lat.sort()
    us = 1e6
    return {
        "env": "guess-number",
        "concurrency": concurrency,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "tracing": os.environ.get("ROLLMESH_TRACING", "1") not in ("0", "false"),
        "inproc_steps_per_s": round(inproc_sps, 1),
        "inproc_p50_us": round(percentile(inproc_lat, 0.5) * us, 1),
        "grpc_steps_per_s": round(grpc_sps, 1),
        "grpc_p50_us": round(percentile(seq_lat, 0.5) * us, 1),
        "grpc_p99_us": round(percentile(seq_lat, 0.99) * us, 1),
        "grpc_sequential_steps_per_s": round(len(seq_lat) / seconds, 1),
        "grpc_concurrent_p50_us": round(percentile(conc_lat, 0.5) * us, 1),
        "grpc_concurrent_p99_us": round(percentile(conc_lat, 0.99) * us, 1),
        "ratio_grpc_vs_inproc": round(grpc_sps / inproc_sps, 4),
    }


def main(*, as_json: bool, concurrency: int = 64, seconds: float = 3.0) -> dict[str, Any]:
    result = measure(concurrency, seconds)
    if as_json:
        print(json.dumps(result))
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"env-step: guess-number, {result['cpus']} CPUs, {seconds:g} s per run")
    for col in ("path", "steps/s", "p50 µs", "p99 µs"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row("in-process", f"{result['inproc_steps_per_s']:,.0f}", f"{result['inproc_p50_us']:.1f}", "")
    table.add_row(
        "gRPC, 1 episode",
        f"{result['grpc_sequential_steps_per_s']:,.0f}",
        f"{result['grpc_p50_us']:.1f}",
        f"{result['grpc_p99_us']:.1f}",
    )
    table.add_row(
        f"gRPC, {concurrency} episodes",
        f"{result['grpc_steps_per_s']:,.0f}",
        f"{result['grpc_concurrent_p50_us']:.1f}",
        f"{result['grpc_concurrent_p99_us']:.1f}",
    )
    Console().print(table)
    Console().print(f"ratio gRPC / in-process throughput: {result['ratio_grpc_vs_inproc']:.4f}")
    return result
