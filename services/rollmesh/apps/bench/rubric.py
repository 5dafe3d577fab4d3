"""`rollmesh bench rubric`: live scoring end to end over a real nats-server, vs the same rubric
called in-process, side by side in one run.

- e2e: this process publishes N traces (TracePublisher: JetStream, acks awaited in batches) on
  rollmesh.monitor.<app>; the rubric service (`rollmesh rubric serve`, its own process unless
  --in-process) pulls them from its durable consumer, scores them, publishes MonitorScores and
  acknowledges; this process receives the scores. traces/s = N / (last score received - first
  publish); latency per trace = score received - its publish (one clock). A second, paced run
  offers half the measured rate, for the latency of a service that is not saturated.
- reference: CompiledRubric.score on the same traces (as Trajectories), in a loop, in this process.

The rubric is rule-based (exact_match on the last number, a regex, a length metric), so the
figures are the service's overhead, not a judge's.
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
import uuid
from pathlib import Path
from typing import Any

from ...natsd import EmbeddedNats
from ...proto.v1 import bus_pb2 as bus_pb
from .harness import percentile, stop

RUBRIC_TOML = """
[server]
port = 0

[dashboard]
port = 0

[monitor]
durable = "bench"
default = "bench-rules"

[[rubric]]
name = "bench-rules"

[[rubric.function]]
name = "correct"
function = "exact_match"
params = { extract = "last_number" }

[[rubric.function]]
name = "polite"
function = "regex"
weight = 0.2
params = { pattern = "(?i)\\\\b(thanks|please)\\\\b" }

[[rubric.function]]
name = "length"
function = "length_penalty"
weight = 0.0
params = { max = 200 }
"""
READY_RE = re.compile(r"live scoring on")


def build_traces(app: str, n: int) -> list[bus_pb.MonitorTrace]:
    from ...monitor.traces import make_trace

    traces = []
    for i in range(n):
        a, b = i % 97, (i * 7) % 89
        answer = a + b if i % 4 else a + b + 1  # three in four correct
        messages = [
            {"role": "system", "content": "You are a helpful calculator."},
            {"role": "user", "content": f"What is {a} + {b}? Please answer with a number."},
            {"role": "assistant", "content": f"Thanks for asking! {a} + {b} = {answer}"},
        ]
        traces.append(make_trace(app, messages, answer=str(a + b), labels={"bench": "1"}))
    return traces


def start_service(config: Path, nats_url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rollmesh.cli", "rubric", "serve", "--config", str(config), "--nats", nats_url]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(os.environ))
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if READY_RE.search(line):
            return proc
    proc.kill()
    raise RuntimeError("rubric service did not start:\n" + "".join(lines[-20:]))


async def run_e2e(nats_url: str, traces: list[bus_pb.MonitorTrace], *, rate: float | None = None) -> dict[str, Any]:
    """Publishes `traces` (as fast as possible, or at `rate`/s) and waits for every score."""
    from ... import bus
    from ...monitor.publish import TracePublisher

    app = traces[0].app
    published: dict[str, float] = {}
    received: dict[str, float] = {}
    done = asyncio.Event()

    async def on_score(msg: Any) -> None:
        now = time.perf_counter()
        trace_id = bus_pb.MonitorScore.FromString(msg.data).trace_id
        received.setdefault(trace_id, now)
        if len(received) >= len(traces):
            done.set()

    nc = await bus.connect(nats_url, name="bench-scores")
    await nc.subscribe(bus.scores_subject(app), cb=on_score)
    await nc.flush()
    async with await TracePublisher.connect(nats_url) as publisher:
        t0 = time.perf_counter()
        for i, trace in enumerate(traces):
            if rate is not None and (ahead := t0 + i / rate - time.perf_counter()) > 0:
                await asyncio.sleep(ahead)
            published[trace.trace_id] = time.perf_counter()
            await publisher.publish_trace(trace)
        await publisher.flush()
        publish_s = time.perf_counter() - t0
    try:
        await asyncio.wait_for(done.wait(), timeout=60 + len(traces) / 200)
    except TimeoutError:
        raise RuntimeError(f"only {len(received)} of {len(traces)} scores arrived; is the rubric service up?") from None
    finally:
        await nc.close()
    latencies = sorted(received[t] - published[t] for t in published)
    elapsed = max(received.values()) - min(published.values())
    return {
        "traces": len(traces),
        "traces_per_s": len(traces) / elapsed,
        "publish_per_s": len(traces) / publish_s,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


async def run_inprocess(traces: list[bus_pb.MonitorTrace]) -> float:
    from ...config import load_config
    from ...monitor.traces import to_trajectory
    from ...rubric.config import RubricServiceConfig
    from ...rubric.scoring import RubricBook

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rubrics.toml"
        path.write_text(RUBRIC_TOML)
        cfg = load_config(RubricServiceConfig, path)
    book = RubricBook.from_config(cfg)
    try:
        rubric = book.get("bench-rules")
        trajectories = [to_trajectory(t) for t in traces]
        for t in trajectories[:50]:
            await rubric.score(t)
        t0 = time.perf_counter()
        for t in trajectories:
            await rubric.score(t)
        return len(trajectories) / (time.perf_counter() - t0)
    finally:
        await book.close()


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_async(nats_url: str, n: int, config: Path, service_pid: int | None) -> dict[str, Any]:
    warm = build_traces(f"bench-{uuid.uuid4().hex[:8]}", min(500, max(20, n // 10)))
    main = build_traces(f"bench-{uuid.uuid4().hex[:8]}", n)
    paced = build_traces(f"bench-{uuid.uuid4().hex[:8]}", max(20, n // 4))
    service = None
    if service_pid is None:
        from ...config import load_config
        from ...monitor.service import RubricService
        from ...rubric.config import RubricServiceConfig

        service = await RubricService(load_config(RubricServiceConfig, config), nats_url=nats_url).start()
    try:
        await run_e2e(nats_url, warm)
        cpu0 = cpu_s(service_pid or os.getpid())
        e2e = await run_e2e(nats_url, main)
        cpu1 = cpu_s(service_pid or os.getpid())
        slow = await run_e2e(nats_url, paced, rate=e2e["traces_per_s"] / 2)
    finally:
        if service is not None:
            await service.stop(5)
    inproc = await run_inprocess(main)
    return {
        **e2e,
        "paced_rate_per_s": e2e["traces_per_s"] / 2,
        "paced_p50_ms": slow["p50_ms"],
        "paced_p99_ms": slow["p99_ms"],
        "inproc_traces_per_s": inproc,
        "ratio": e2e["traces_per_s"] / inproc,
        # The service's CPU per trace (with the bench's own client too when in-process).
        "service_cpu_ms_per_trace": (cpu1 - cpu0) * 1e3 / n if cpu0 is not None and cpu1 is not None else None,
    }


def measure(n: int, in_process: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats() as nats_server:
        config = Path(tmp) / "rubrics.toml"
        config.write_text(RUBRIC_TOML)
        proc = None if in_process else start_service(config, nats_server.url)
        try:
            result = asyncio.run(measure_async(nats_server.url, n, config, None if proc is None else proc.pid))
        finally:
            if proc is not None:
                stop(proc)
    return {
        "service": "in-process" if in_process else "subprocess",
        "rubric": "exact_match + regex + length_penalty (metric)",
        "cpus": os.cpu_count(),
        **result,
    }


def main(*, as_json: bool, traces: int, in_process: bool = False) -> None:
    r = measure(traces, in_process)
    if as_json:
        print(json.dumps(r))
        return
    print(f"live scoring over NATS ({r['service']} rubric service, {r['cpus']} CPUs, rubric {r['rubric']})")
    lat = "p50 {:.1f} ms   p99 {:.1f} ms"
    print(f"  traces                     {r['traces']}")
    print(f"  published                  {r['publish_per_s']:10.0f} traces/s")
    print(f"  end to end                 {r['traces_per_s']:10.0f} traces/s   " + lat.format(r["p50_ms"], r["p99_ms"]))
    print(
        f"  paced at {r['paced_rate_per_s']:6.0f} traces/s                       "
        + lat.format(r["paced_p50_ms"], r["paced_p99_ms"])
    )
    print(f"  in-process CompiledRubric  {r['inproc_traces_per_s']:10.0f} traces/s")
    print(f"  ratio e2e / in-process     {r['ratio']:10.2f}")
    if r["service_cpu_ms_per_trace"] is not None:
        print(f"  service CPU                {r['service_cpu_ms_per_trace']:10.3f} ms per trace")
