"""`rollmesh bench env-step`: one environment stepped in-process and through its gRPC server on
loopback, side by side in one run.

The environment is guess-number with a policy that always guesses below the range, so every step
runs the real environment logic (parse the guess, answer "Higher.") and no episode ends during a
measurement. The server runs in its own process, as in production; the client in this one.

A second server with mutual TLS and role checks (credentials from a fresh `rollmesh certs init`)
runs the same steps, and both servers answer new connections (a channel plus its first Describe),
so the cost of security is measured side by side: per step, and per handshake.

The transport's limit is measured beside each: a bare grpc.aio bidirectional echo (bare_grpc.py,
its own process) exchanging the same bytes as a real step (the serialized EpisodeRequest and
EpisodeResponse), over as many streams, with the same options and TLS settings, just before and
just after the environment server's concurrent run (the mean of the two).
`ratio_vs_bare_grpc` = steps/s through the environment server / exchanges/s through the echo, at
the same concurrency: what rollmesh's server, client and environment leave of what gRPC can do.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ... import convert
from ...env.client import EnvClient
from ...env.loader import load_environments
from ...proto.v1 import environment_pb2 as env_pb
from ...security import pki
from ...security import tls as security_tls
from ...security.tls import TlsConfig
from ...telemetry import tracing_enabled
from . import bare_grpc
from .harness import cpu_s, percentile, start_env_server, start_server, stop

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


async def step_bytes() -> tuple[bytes, bytes]:
    """The serialized request and response of one real step of the measured environment."""
    env = load_environments(TARGET, ENV_ARGS)[0]
    episode = env.episode(env.tasks()[0])
    await episode.start()
    result = await episode.step(ACTION)
    await episode.close()
    request = env_pb.EpisodeRequest(action=env_pb.Action(message=convert.message_to_pb(ACTION)))
    response = env_pb.EpisodeResponse(step=convert.step_to_pb(result))
    return request.SerializeToString(), response.SerializeToString()


def start_bare(reply: bytes, tls: TlsConfig) -> tuple[subprocess.Popen, str]:
    """The bare echo in its own process, with `tls`'s server settings."""
    cmd = [sys.executable, "-m", "rollmesh.apps.bench.bare_grpc", reply.hex()]
    return start_server(cmd, env={**dict.fromkeys(security_tls.ENV_NAMES, ""), **tls.env()})


@dataclass
class Run:
    rate: float  # steps (exchanges) per second
    latencies: list[float]
    cpu_us: float | None  # per step: the server's process and this one (the client) together


def timed(run: Callable[[], Awaitable[tuple[float, list[float]]]], server_pid: int, seconds: float) -> Run:
    server0, client0 = cpu_s(server_pid), time.process_time()
    rate, lat = asyncio.run(run())
    server1, client1 = cpu_s(server_pid), time.process_time()
    cpu = None if server0 is None or server1 is None else server1 - server0 + client1 - client0
    return Run(rate, lat, None if cpu is None else cpu * 1e6 / max(1.0, rate * seconds))


def side_by_side(
    server: tuple[subprocess.Popen, str],
    bare: tuple[subprocess.Popen, str],
    request: bytes,
    concurrency: int,
    seconds: float,
) -> tuple[Run, Run]:
    """Concurrent runs through the environment server and the bare echo, the echo's just before
    and just after (their mean), so that load from elsewhere weighs on both alike."""
    tls = security_tls.current()
    (proc, address), (bare_proc, bare_address) = server, bare

    def echo() -> Run:
        return timed(lambda: bare_grpc.run(bare_address, request, concurrency, seconds, tls), bare_proc.pid, seconds)

    before = echo()
    real = timed(lambda: grpc_run(address, concurrency, seconds), proc.pid, seconds)
    after = echo()
    cpus = [r.cpu_us for r in (before, after) if r.cpu_us is not None]
    return real, Run((before.rate + after.rate) / 2, [], sum(cpus) / len(cpus) if cpus else None)


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
    request, reply = asyncio.run(step_bytes())
    args = [a for k, v in ENV_ARGS.items() for a in ("--arg", f"{k}={v}")]
    # The plaintext server must not pick up TLS settings from this process's environment.
    plain_env = dict.fromkeys(security_tls.ENV_NAMES, "")
    with security_tls.using(TlsConfig()):
        proc, address = start_env_server(TARGET, args, env=plain_env)
        bare, bare_address = start_bare(reply, TlsConfig())
        try:
            _, seq_lat = asyncio.run(grpc_run(address, 1, seconds))
            real, echo = side_by_side((proc, address), (bare, bare_address), request, concurrency, seconds)
            grpc_sps, conc_lat, bare_sps = real.rate, real.latencies, echo.rate
            plain_conn = asyncio.run(connections(address, handshakes))
        finally:
            stop(proc)
            stop(bare)
    secure: dict[str, Any] = {}
    if mtls:
        with tempfile.TemporaryDirectory(prefix="rollmesh-bench-pki-") as tmp:
            certs = pki.init(tmp)
            server = pki.member_config(certs, "env")
            tls_args = ["--tls-cert", server.cert, "--tls-key", server.key, "--tls-ca", server.ca]
            with security_tls.using(pki.member_config(certs, "orchestrator")):
                proc, address = start_env_server(TARGET, [*args, *tls_args])
                bare, bare_address = start_bare(reply, server)
                try:
                    _, tls_seq = asyncio.run(grpc_run(address, 1, seconds))
                    tls_real, tls_echo = side_by_side(
                        (proc, address), (bare, bare_address), request, concurrency, seconds
                    )
                    tls_sps, tls_conc, bare_tls_sps = tls_real.rate, tls_real.latencies, tls_echo.rate
                    tls_conn = asyncio.run(connections(address, handshakes))
                finally:
                    stop(proc)
                    stop(bare)
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
            "bare_mtls_steps_per_s": round(bare_tls_sps, 1),
            "ratio_mtls_vs_bare_grpc": round(tls_sps / bare_tls_sps, 4),
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
        "tracing": tracing_enabled(),
        "inproc_steps_per_s": round(inproc_sps, 1),
        "inproc_p50_us": round(percentile(inproc_lat, 0.5) * us, 1),
        "grpc_steps_per_s": round(grpc_sps, 1),
        "grpc_p50_us": round(percentile(seq_lat, 0.5) * us, 1),
        "grpc_p99_us": round(percentile(seq_lat, 0.99) * us, 1),
        "grpc_sequential_steps_per_s": round(len(seq_lat) / seconds, 1),
        "grpc_concurrent_p50_us": round(percentile(conc_lat, 0.5) * us, 1),
        "grpc_concurrent_p99_us": round(percentile(conc_lat, 0.99) * us, 1),
        "ratio_grpc_vs_inproc": round(grpc_sps / inproc_sps, 4),
        "step_request_bytes": len(request),
        "step_response_bytes": len(reply),
        "bare_grpc_steps_per_s": round(bare_sps, 1),
        "ratio_vs_bare_grpc": round(grpc_sps / bare_sps, 4),
        # CPU per step of server + client, a figure that other work on the cores moves less.
        "cpu_us_per_step": _rounded(real.cpu_us),
        "bare_cpu_us_per_step": _rounded(echo.cpu_us),
        "ratio_cpu_bare_vs_grpc": round(echo.cpu_us / real.cpu_us, 4) if real.cpu_us and echo.cpu_us else None,
    }


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


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
    table.add_row(f"bare gRPC echo, {concurrency} streams", f"{result['bare_grpc_steps_per_s']:,.0f}", "", "")
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
        table.add_row(
            f"bare gRPC echo + mTLS, {concurrency} streams", f"{result['bare_mtls_steps_per_s']:,.0f}", "", ""
        )
    Console().print(table)
    Console().print(f"ratio gRPC / in-process throughput: {result['ratio_grpc_vs_inproc']:.4f}")
    Console().print(
        f"ratio gRPC / bare gRPC echo throughput ({concurrency} streams, "
        f"{result['step_request_bytes']} / {result['step_response_bytes']} bytes): {result['ratio_vs_bare_grpc']:.4f}"
        + (f", with mTLS {result['ratio_mtls_vs_bare_grpc']:.4f}" if mtls else "")
    )
    if mtls:
        Console().print(
            f"ratio mTLS / plaintext throughput: {result['ratio_mtls_vs_plain']:.4f} "
            f"({concurrency} episodes), {result['ratio_mtls_vs_plain_sequential']:.4f} (1 episode); "
            f"new connection p50 {result['mtls_connect_p50_ms']:.2f} ms vs {result['plain_connect_p50_ms']:.2f} ms "
            f"(ratio {result['ratio_mtls_vs_plain_connect']:.2f})"
        )
    return result
