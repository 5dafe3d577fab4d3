"""Load held for a while: 1,000 concurrent episodes on one environment server and 256 concurrent
Generate calls on one hf inference server; no errors, memory bounded. `make test` holds each for
ROLLMESH_LOAD_HOLD_S seconds (20 by default); `make test-load` for a minute."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

from rollmesh.env.client import EnvClient
from rollmesh.inference.client import InferenceClient

from .served import ROLLMESH, Served

HOLD_S = float(os.environ.get("ROLLMESH_LOAD_HOLD_S", "20"))


async def _hold_episodes(address: str, workers: int, hold_s: float) -> tuple[Counter, int]:
    outcomes: Counter = Counter()
    open_now = peak = 0
    async with await EnvClient.connect(address, timeout_s=60) as client:
        tasks = await client.tasks("guess-number", "train")
        deadline = time.monotonic() + hold_s
        start = asyncio.Event()

        async def worker(i: int) -> None:
            nonlocal open_now, peak
            first = True
            while time.monotonic() < deadline:
                try:
                    async with client.episode("guess-number", tasks[i % len(tasks)].task_id, split="train") as ep:
                        open_now += 1
                        peak = max(peak, open_now)
                        try:
                            if first:  # every worker holds its first episode open until all are
                                first = False
                                if open_now == workers:
                                    start.set()
                                await asyncio.wait_for(start.wait(), 60)
                            while not (await ep.step("50")).done:
                                pass
                        finally:
                            open_now -= 1
                    outcomes["finished"] += 1
                except Exception as e:  # counted, and the test fails on any
                    outcomes[f"{type(e).__name__}: {str(e)[:100]}"] += 1

        await asyncio.gather(*(worker(i) for i in range(workers)))
    return outcomes, peak


def test_a_thousand_concurrent_episodes_held(tmp_path: Path) -> None:
    server = Served([*ROLLMESH, "env", "serve", "guess-number", "--port", "0"], tmp_path / "env.log")
    try:
        baseline = server.rss_mb()
        outcomes, peak = asyncio.run(_hold_episodes(server.address, 1000, HOLD_S))
        after = server.rss_mb()
    finally:
        server.stop()
    print(f"episodes: {dict(outcomes)}, peak open {peak}, server RSS {baseline:.0f} -> {after:.0f} MB")
    assert peak == 1000
    assert set(outcomes) == {"finished"}, outcomes
    assert after < baseline + 500


async def _hold_generate(address: str, workers: int, hold_s: float) -> tuple[Counter, list[float]]:
    outcomes: Counter = Counter()
    latencies: list[float] = []
    async with await InferenceClient.connect(address, timeout_s=120) as client:
        deadline = time.monotonic() + hold_s

        async def worker(i: int) -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    await client.generate([{"role": "user", "content": f"count to {i}"}], max_tokens=16, seed=i)
                    outcomes["ok"] += 1
                    latencies.append(time.perf_counter() - t0)
                except Exception as e:
                    outcomes[f"{type(e).__name__}: {str(e)[:100]}"] += 1

        await asyncio.gather(*(worker(i) for i in range(workers)))
    return outcomes, sorted(latencies)


def test_256_concurrent_generate_calls_held(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Served(
        [*ROLLMESH, "inference", "serve", "--model", str(tiny_model_dir), "--backend", "hf", "--port", "0"],
        tmp_path / "inference.log",
    )
    try:
        baseline = server.rss_mb()
        outcomes, latencies = asyncio.run(_hold_generate(server.address, 256, HOLD_S))
        after = server.rss_mb()
    finally:
        server.stop()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"generate: {dict(outcomes)}, p50 {p50:.2f} s, p99 {p99:.2f} s, RSS {baseline:.0f} -> {after:.0f} MB")
    assert set(outcomes) == {"ok"}, outcomes
    assert outcomes["ok"] >= 256
    assert after < baseline + 1000
