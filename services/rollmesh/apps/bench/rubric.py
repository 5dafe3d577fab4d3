"""`rollmesh bench rubric`: live scoring end to end over a real nats-server, vs the same rubric
called in-process, side by side in one run.

- e2e: this process publishes N traces (TracePublisher: JetStream, acks awaited in batches) on
  rollmesh.monitor.<app>; the rubric service (`rollmesh rubric serve`, its own process unless
  --in-process) pulls them from its durable consumer, scores them, publishes MonitorScores and
  acknowledges; this process receives the scores. traces/s = N / (last score received - first
  publish); latency per trace = score received - its publish (one clock). A second, paced run
  offers half the measured rate, for the latency of a service that is not saturated.
- reference: CompiledRubric.score on the same traces (as Trajectories), in a loop, in this process.
- the bus's limit: a bare JetStream pipeline (bare_jetstream.py, its own process) over the same
  nats-server, moving the same bytes: the serialized traces published on a stream, pulled in
  batches, a reply the size of a real score published on a second stream for each, then acked.
  `ratio_vs_bare_jetstream` = traces/s end to end / messages/s through that pipeline, measured
  the same way.

The rubric is rule-based (exact_match on the last number, a regex, a length metric), so the
figures are the service's overhead, not a judge's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...natsd import EmbeddedNats
from ...proto.v1 import bus_pb2 as bus_pb
from . import bare_jetstream
from .harness import cpu_s, percentile, stop

if TYPE_CHECKING:
    from ...rubric.config import RubricServiceConfig

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
    return start_process(cmd, READY_RE, "rubric service")


def start_bare(nats_url: str, reply: bytes, batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rollmesh.apps.bench.bare_jetstream", nats_url, reply.hex(), str(batch)]
    return start_process(cmd, re.compile(bare_jetstream.READY), "bare JetStream pipeline")


def running(proc: subprocess.Popen, what: str) -> bool:
    """True while `proc` runs; RuntimeError with the end of its stderr once it has exited."""
    if proc.poll() is None:
        return True
    tail = proc.stderr.read()[-2000:] if proc.stderr is not None else ""
    raise RuntimeError(f"the {what} exited with code {proc.returncode}:\n{tail}")


def start_process(cmd: list[str], ready: re.Pattern[str], what: str) -> subprocess.Popen:
    """`cmd` in its own process, returned once a line of its stderr matches `ready`."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(os.environ))
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if ready.search(line):
            return proc
    proc.kill()
    raise RuntimeError(f"{what} did not start:\n" + "".join(lines[-20:]))


async def run_e2e(nats_url: str, traces: list[bus_pb.MonitorTrace], *, rate: float | None = None) -> dict[str, Any]:
    """Publishes `traces` (as fast as possible, or at `rate`/s) and waits for every score."""
    from ... import bus
    from ...monitor.publish import TracePublisher

    async with await TracePublisher.connect(nats_url) as publisher:
        return await _pipeline(
            nats_url,
            traces,
            bus.scores_subject(traces[0].app),
            lambda msg: bus_pb.MonitorScore.FromString(msg.data).trace_id,
            publisher.publish_trace,
            publisher.flush,
            rate,
        )


async def run_bare(
    nats_url: str, traces: list[bus_pb.MonitorTrace], alive: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """The same traces, as bytes, through the bare pipeline: JetStream publishes with acks
    awaited in batches of TracePublisher's size, each reply matched by its Nats-Msg-Id."""
    import nats

    from ... import bus

    app = traces[0].app
    nc = await nats.connect(nats_url, name="bench-bare-publisher")
    js = nc.jetstream()
    pending: list[asyncio.Future[Any]] = []

    async def flush() -> None:
        await asyncio.gather(*pending)
        pending.clear()

    async def publish(trace: bus_pb.MonitorTrace) -> None:
        subject, data = bare_jetstream.in_subject(app), trace.SerializeToString()
        pending.append(asyncio.ensure_future(js.publish(subject, data, headers={bus.MSG_ID: trace.trace_id})))
        if len(pending) >= PUBLISH_BATCH:
            await flush()

    try:
        return await _pipeline(
            nats_url,
            traces,
            bare_jetstream.out_subject(app),
            lambda msg: msg.headers[bus.MSG_ID],
            publish,
            flush,
            None,
            alive,
        )
    finally:
        await nc.close()


PUBLISH_BATCH = 512  # TracePublisher's max_pending


async def _pipeline(
    nats_url: str,
    traces: list[bus_pb.MonitorTrace],
    out_subject: str,
    trace_id_of: Callable[[Any], str],
    publish: Callable[[bus_pb.MonitorTrace], Awaitable[Any]],
    flush: Callable[[], Awaitable[None]],
    rate: float | None,
    alive: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Listens on `out_subject`, publishes every trace, waits for every answer; the figures."""
    from ... import bus

    published: dict[str, float] = {}
    received: dict[str, float] = {}
    done = asyncio.Event()

    async def on_answer(msg: Any) -> None:
        now = time.perf_counter()
        received.setdefault(trace_id_of(msg), now)
        if len(received) >= len(traces):
            done.set()

    nc = await bus.connect(nats_url, name="bench-scores")
    try:
        await nc.subscribe(out_subject, cb=on_answer)
        await nc.flush()
        t0 = time.perf_counter()
        for i, trace in enumerate(traces):
            if rate is not None and (ahead := t0 + i / rate - time.perf_counter()) > 0:
                await asyncio.sleep(ahead)
            published[trace.trace_id] = time.perf_counter()
            await publish(trace)
        await flush()
        publish_s = time.perf_counter() - t0
        deadline = time.monotonic() + 60 + len(traces) / 200
        while not done.is_set() and time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError(f"the consumer exited with {len(received)} of {len(traces)} answers sent")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)
        if not done.is_set():
            raise TimeoutError
    except TimeoutError:
        raise RuntimeError(f"only {len(received)} of {len(traces)} answers arrived on {out_subject}") from None
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


def bench_config() -> RubricServiceConfig:
    from ...config import load_config
    from ...rubric.config import RubricServiceConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rubrics.toml"
        path.write_text(RUBRIC_TOML)
        return load_config(RubricServiceConfig, path)


async def score_bytes(trace: bus_pb.MonitorTrace) -> bytes:
    """The serialized MonitorScore the rubric service publishes for `trace`."""
    from ... import bus
    from ...monitor.traces import TraceScorer
    from ...rubric.scoring import RubricBook

    cfg = bench_config()
    book = RubricBook.from_config(cfg)
    try:
        scorer = TraceScorer(book, cfg.monitor.apps, cfg.monitor.default)
        scored = await scorer.score(bus.monitor_subject(trace.app), trace.SerializeToString())
        return scored.score.SerializeToString()
    finally:
        await book.close()


async def run_inprocess(traces: list[bus_pb.MonitorTrace]) -> float:
    from ...monitor.traces import to_trajectory
    from ...rubric.scoring import RubricBook

    book = RubricBook.from_config(bench_config())
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


async def measure_async(nats_url: str, n: int, config: Path, service_pid: int | None) -> dict[str, Any]:
    warm = build_traces(f"bench-{uuid.uuid4().hex[:8]}", min(500, max(20, n // 10)))
    main = build_traces(f"bench-{uuid.uuid4().hex[:8]}", n)
    paced = build_traces(f"bench-{uuid.uuid4().hex[:8]}", max(20, n // 4))
    # The bare pipeline's runs just before and just after the end-to-end one, on traces of the
    # same sizes (new ids: a repeated one would be dropped as a duplicate).
    bare_before, bare_after = (build_traces(f"bench-{uuid.uuid4().hex[:8]}", n) for _ in range(2))
    reply = await score_bytes(main[0])
    service = None
    if service_pid is None:
        from ...config import load_config
        from ...monitor.service import RubricService
        from ...rubric.config import RubricServiceConfig

        service = await RubricService(load_config(RubricServiceConfig, config), nats_url=nats_url).start()
    try:
        async with bare_pipeline(nats_url, reply, in_process=service_pid is None) as consumer:
            bare_pid = os.getpid() if consumer is None else consumer.pid
            alive = None if consumer is None else functools.partial(running, consumer, "bare JetStream consumer")
            await run_bare(nats_url, warm, alive)
            bare_cpu0 = cpu_s(bare_pid)
            before = await run_bare(nats_url, bare_before, alive)
            bare_cpu1 = cpu_s(bare_pid)
            await run_e2e(nats_url, warm)
            cpu0 = cpu_s(service_pid or os.getpid())
            e2e = await run_e2e(nats_url, main)
            cpu1 = cpu_s(service_pid or os.getpid())
            bare_cpu2 = cpu_s(bare_pid)
            after = await run_bare(nats_url, bare_after, alive)
            bare_cpu3 = cpu_s(bare_pid)
        slow = await run_e2e(nats_url, paced, rate=e2e["traces_per_s"] / 2)
    finally:
        if service is not None:
            await service.stop(5)
    inproc = await run_inprocess(main)
    bare_rate = (before["traces_per_s"] + after["traces_per_s"]) / 2
    return {
        **e2e,
        "bare_jetstream_traces_per_s": bare_rate,
        "ratio_vs_bare_jetstream": e2e["traces_per_s"] / bare_rate,
        "trace_bytes": sum(t.ByteSize() for t in main) / len(main),
        "score_bytes": len(reply),
        "paced_rate_per_s": e2e["traces_per_s"] / 2,
        "paced_p50_ms": slow["p50_ms"],
        "paced_p99_ms": slow["p99_ms"],
        "inproc_traces_per_s": inproc,
        "ratio": e2e["traces_per_s"] / inproc,
        # The service's CPU per trace (with the bench's own client too when in-process).
        "service_cpu_ms_per_trace": (cpu1 - cpu0) * 1e3 / n if cpu0 is not None and cpu1 is not None else None,
        # The bare consumer's, over its two runs (the mean).
        "bare_consumer_cpu_ms_per_trace": (bare_cpu3 - bare_cpu2 + bare_cpu1 - bare_cpu0) * 1e3 / (2 * n)
        if None not in (bare_cpu0, bare_cpu1, bare_cpu2, bare_cpu3)
        else None,
    }


@contextlib.asynccontextmanager
async def bare_pipeline(nats_url: str, reply: bytes, *, in_process: bool) -> AsyncIterator[subprocess.Popen | None]:
    """The bare pipeline's consumer, like the service's: its own process (yielded) unless the
    service is in-process, batches as large as the service takes traces in flight."""
    from ...rubric.config import MonitorConfig

    batch = MonitorConfig().max_in_flight
    if not in_process:
        proc = await asyncio.to_thread(start_bare, nats_url, reply, batch)
        try:
            yield proc
        finally:
            stop(proc)
        return
    ready = asyncio.Event()
    task = asyncio.create_task(bare_jetstream.consume(nats_url, reply, batch, ready))
    try:
        await ready.wait()
        yield None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
    print(
        f"  bare JetStream pipeline    {r['bare_jetstream_traces_per_s']:10.0f} msgs/s     "
        f"(same bytes: {r['trace_bytes']:.0f} in, {r['score_bytes']} out)"
    )
    print(f"  ratio e2e / bare           {r['ratio_vs_bare_jetstream']:10.2f}")
    if r["service_cpu_ms_per_trace"] is not None:
        print(f"  service CPU                {r['service_cpu_ms_per_trace']:10.3f} ms per trace")
    if r["bare_consumer_cpu_ms_per_trace"] is not None:
        print(f"  bare consumer CPU          {r['bare_consumer_cpu_ms_per_trace']:10.3f} ms per trace")
