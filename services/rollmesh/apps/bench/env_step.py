"""`rollmesh bench env-step`: one environment stepped in-process and through its gRPC server on
loopback, side by side in one run.

The environment is guess-number with a policy that always guesses below the range, so every step
runs the real environment logic (parse the guess, answer "Higher.") and no episode ends during a
measurement. The server runs in its own process, as in production; the client in this one.

A second server with mutual TLS and role checks (credentials from a fresh `rollmesh certs init`)
runs the same steps, and both servers answer new connections (a channel plus its first Describe),
so the cost of security is measured side by side: per step, and per handshake.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from typing import Any

from ...env.client import EnvClient
from ...env.loader import load_environments
from ...security import pki
from ...security import tls as security_tls
from ...security.tls import TlsConfig
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


async def connections(address: str, count: int) -> list[float]:
    """Seconds to open a new channel and get its first Describe answer (TCP, TLS handshake, HTTP/2
    setup, the role check), `count` times."""
    lat = []
    for _ in range(count):
        t0 = time.perf_counter()
        async with EnvClient.open(address, timeout_s=10) as client:
            await client.describe()
        lat.append(time.perf_counter() - t0)
    return sorted(lat)


def measure(concurrency: int, seconds: float, *, mtls: bool = True, handshakes: int = 50) -> dict[str, Any]:
    inproc_sps, inproc_lat = asyncio.run(inprocess(seconds))
    args = [a for k, v in ENV_ARGS.items() for a in ("--arg", f"{k}={v}")]
    # The plaintext server must not pick up TLS settings from this process's environment.
    plain_env = dict.fromkeys(security_tls.ENV_NAMES, "")
    with security_tls.using(TlsConfig()):
        proc, address = start_env_server(TARGET, args, env=plain_env)
        try:
            _, seq_lat = asyncio.run(grpc_run(address, 1, seconds))
            grpc_sps, conc_lat = asyncio.run(grpc_run(address, concurrency, seconds))
            plain_conn = asyncio.run(connections(address, handshakes))
        finally:
            stop(proc)
    secure: dict[str, Any] = {}
    if mtls:
        with tempfile.TemporaryDirectory(prefix="rollmesh-bench-pki-") as tmp:
            certs = pki.init(tmp)
            server = pki.member_config(certs, "env")
            tls_args = ["--tls-cert", server.cert, "--tls-key", server.key, "--tls-ca", server.ca]
            with security_tls.using(pki.member_config(certs, "orchestrator")):
                proc, address = start_env_server(TARGET, [*args, *tls_args])
                try:
                    _, tls_seq = asyncio.run(grpc_run(address, 1, seconds))
                    tls_sps, tls_conc = asyncio.run(grpc_run(address, concurrency, seconds))
                    tls_conn = asyncio.run(connections(address, handshakes))
                finally:
                    stop(proc)
        tls_seq.sort()
        tls_conc.sort()
        secure = {
            "mtls_steps_per_s": round(tls_sps, 1),
            "mtls_p50_us": round(percentile(tls_seq, 0.5) * 1e6, 1),
            "mtls_p99_us": round(percentile(tls_seq, 0.99) * 1e6, 1),
            "mtls_sequential_steps_per_s": round(len(tls_seq) / seconds, 1),
            "mtls_concurrent_p50_us": round(percentile(tls_conc, 0.5) * 1e6, 1),
            "mtls_connect_p50_ms": round(percentile(tls_conn, 0.5) * 1e3, 2),
            "plain_connect_p50_ms": round(percentile(plain_conn, 0.5) * 1e3, 2),
            "ratio_mtls_vs_plain": round(tls_sps / grpc_sps, 4),
            "ratio_mtls_vs_plain_sequential": round(len(tls_seq) / max(1, len(seq_lat)), 4),
            "ratio_mtls_vs_plain_connect": round(percentile(tls_conn, 0.5) / percentile(plain_conn, 0.5), 3),
        }
    inproc_lat.sort()
    seq_lat.sort()
    conc_lat.sort()
    us = 1e6
    return {
        **secure,
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


def main(*, as_json: bool, concurrency: int = 64, seconds: float = 3.0, mtls: bool = True) -> dict[str, Any]:
    result = measure(concurrency, seconds, mtls=mtls)
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
    if mtls:
        table.add_row(
            "gRPC + mTLS, 1 episode",
            f"{result['mtls_sequential_steps_per_s']:,.0f}",
            f"{result['mtls_p50_us']:.1f}",
            f"{result['mtls_p99_us']:.1f}",
        )
        table.add_row(
            f"gRPC + mTLS, {concurrency} episodes",
            f"{result['mtls_steps_per_s']:,.0f}",
            f"{result['mtls_concurrent_p50_us']:.1f}",
            "",
        )
    Console().print(table)
    Console().print(f"ratio gRPC / in-process throughput: {result['ratio_grpc_vs_inproc']:.4f}")
    if mtls:
        Console().print(
            f"ratio mTLS / plaintext throughput: {result['ratio_mtls_vs_plain']:.4f} "
            f"({concurrency} episodes), {result['ratio_mtls_vs_plain_sequential']:.4f} (1 episode); "
            f"new connection p50 {result['mtls_connect_p50_ms']:.2f} ms vs {result['plain_connect_p50_ms']:.2f} ms "
            f"(ratio {result['ratio_mtls_vs_plain_connect']:.2f})"
        )
    return result
