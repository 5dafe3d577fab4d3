"""Live scoring through a real nats-server: replicas sharing the durable consumer, dead letters with
reasons, redelivery after a replica dies, bounded deliveries, retries of unacknowledged publishes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from rollmesh import bus
from rollmesh.monitor import traces as tr
from rollmesh.monitor.live import STREAM
from rollmesh.monitor.service import RubricService
from rollmesh.natsd import EmbeddedNats, free_port
from rollmesh.proto.v1 import bus_pb2

from .conftest import Collector, publish, service_config, traces, uid

TESTS_DIR = Path(__file__).resolve().parents[1]


async def wait_until(check, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def settled(nats_url: str, durable: str) -> None:
    """Every delivered trace of the durable is acknowledged and none is waiting."""
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        for _ in range(200):
            info = await js.consumer_info(STREAM, durable)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"consumer {durable} not settled: {info}")
    finally:
        await nc.close()


async def test_two_replicas_share_the_durable_and_score_each_trace_once(nats_url: str) -> None:
    app = uid("shared")
    cfg = service_config({app: "rules"}, fetch_batch=16, max_in_flight=32)
    scores = await Collector(bus_pb2.MonitorScore).start(nats_url, bus.scores_subject(app))
    a = await RubricService(cfg, nats_url=nats_url).start()
    b = await RubricService(cfg, nats_url=nats_url).start()
    try:
        sent = traces(app, 400)
        await publish(nats_url, sent)
        got = await scores.wait_for(400)
        await wait_until(lambda: a.live.stats.scored + b.live.stats.scored >= 400, what="acknowledged scores")
        await settled(nats_url, cfg.monitor.durable)
        await asyncio.sleep(0.2)  # a duplicate would show up on the core subscription by now
        assert len(scores.items) == 400 and {s.trace_id for s in got} == {t.trace_id for t in sent}
        assert a.live.stats.scored > 0 and b.live.stats.scored > 0, (a.live.stats, b.live.stats)
        assert a.live.stats.scored + b.live.stats.scored == 400
        for s in got:
            i = int(s.trace_id.rsplit("-", 1)[1])
            assert dict(s.rewards) == {"correct": float(i % 2 == 0), "polite": 1.0}, s
            assert s.reward == float(i % 2 == 0) + 0.5 and s.rubric == "rules" and s.labels["i"] == str(i)
            assert s.metrics["length"] == 0.0 and not s.errors and s.latency_s > 0
    finally:
        await a.stop(1)
        await b.stop(1)
        await scores.close()


async def test_untraceable_payloads_are_dead_lettered_with_their_reason(nats_url: str) -> None:
    known, exact, unknown = uid("known"), uid("exact"), uid("unknown")
    cfg = service_config(
        {known: "rules", exact: "strict"},
        filter_subjects=[bus.monitor_subject(a) for a in (known, exact, unknown)],
    )
    letters = await Collector(bus_pb2.DeadLetter).start(nats_url, "rollmesh.deadletter.monitor.>")
    scores = await Collector(bus_pb2.MonitorScore).start(nats_url, "rollmesh.scores.>")
    service = await RubricService(cfg, nats_url=nats_url).start()
    try:
        (good,) = traces(known, 1)
        no_messages = bus_pb2.MonitorTrace(trace_id=uid("nomsg"), app=known)
        user_only = traces(known, 1, start=10)[0]
        del user_only.messages[1:]
        no_id = traces(known, 1, start=20)[0]
        no_id.trace_id = ""
        (elsewhere,) = traces(unknown, 1)
        (failing,) = traces(exact, 1)  # strict rubric, no reference answer: its only function fails
        failing.answer = ""
        (partial,) = traces(known, 1, start=30)  # rules: exact_match fails, the regex scores
        partial.answer = ""
        mismatch = traces(known, 1, start=40)[0]
        expected = {
            no_messages.trace_id: tr.NO_MESSAGES,
            user_only.trace_id: tr.NO_ASSISTANT_MESSAGE,
            elsewhere.trace_id: tr.NO_RUBRIC,
            failing.trace_id: tr.SCORING_FAILED,
            mismatch.trace_id: tr.APP_MISMATCH,
        }
        nc = await bus.connect(nats_url)
        js = nc.jetstream()
        await js.publish(bus.monitor_subject(known), b"\xff\x00 not protobuf")
        await js.publish(bus.monitor_subject(known), b'{"trace_id": "json"}')
        for t in (good, no_messages, user_only, no_id, elsewhere, failing, partial):
            await js.publish(bus.monitor_subject(t.app or known), t.SerializeToString())
        await js.publish(bus.monitor_subject(exact), mismatch.SerializeToString())  # says app=known
        await nc.close()

        got = await letters.wait_for(8)
        await scores.wait_for(2)
        await wait_until(lambda: service.live.stats.scored == 2, what="acknowledged scores")
        await wait_until(lambda: service.live.stats.dead_lettered == 8, what="acknowledged dead letters")
        await settled(nats_url, cfg.monitor.durable)
        by_reason = {}
        for letter in got:
            code = tr.reason_code(letter.reason)
            trace_id = ""
            if code not in (tr.UNPARSEABLE,):
                trace_id = bus_pb2.MonitorTrace.FromString(letter.payload).trace_id
            by_reason.setdefault(code, []).append((trace_id, letter))
            assert letter.service == "rollmesh-rubric" and letter.HasField("failed_at")
        for trace_id, code in expected.items():
            assert [t for t, _ in by_reason[code]] == [trace_id], (code, by_reason.get(code))
        assert len(by_reason[tr.UNPARSEABLE]) == 2 and len(by_reason[tr.MISSING_TRACE_ID]) == 1
        json_letter = next(letter for _, letter in by_reason[tr.UNPARSEABLE] if letter.payload.startswith(b"{"))
        assert "looks like JSON" in json_letter.reason and json_letter.subject == bus.monitor_subject(known)
        assert "no reference answer" in by_reason[tr.SCORING_FAILED][0][1].reason
        assert by_reason[tr.NO_RUBRIC][0][1].subject == bus.monitor_subject(unknown)

        scored = {s.trace_id: s for s in scores.items}
        assert set(scored) == {good.trace_id, partial.trace_id}
        assert "no reference answer" in scored[partial.trace_id].errors["correct"]
        assert dict(scored[partial.trace_id].rewards) == {"polite": 1.0}
        assert scored[partial.trace_id].metrics["rubric/partial"] == 1.0
        assert service.metrics.dead_lettered[(unknown, tr.NO_RUBRIC)] == 1
        assert service.metrics.dead_lettered[(known, tr.UNPARSEABLE)] == 2
        assert service.metrics.function_errors[(known, "correct")] == 1
    finally:
        await service.stop(1)
        await letters.close()
        await scores.close()


async def test_a_trace_delivered_too_often_is_dead_lettered_not_redelivered_forever(nats_url: str) -> None:
    app = uid("flaky")
    cfg = service_config({app: "rules"}, ack_wait_s=0.5, max_deliveries=2)
    service = RubricService(cfg, nats_url=nats_url)
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await js.add_consumer(STREAM, service.live.consumer_config())
    letters = await Collector(bus_pb2.DeadLetter).start(nats_url, bus.deadletter_subject(bus.monitor_subject(app)))
    try:
        (t,) = traces(app, 1)
        await publish(nats_url, [t])
        # Two replicas take it and die without acknowledging (nothing acks; ack_wait expires).
        sub = await js.pull_subscribe_bind(cfg.monitor.durable, stream=STREAM)
        for delivery in (1, 2):
            (msg,) = await sub.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == delivery
        await sub.unsubscribe()
        await service.start()
        (letter,) = await letters.wait_for(1, timeout_s=10)
        assert letter.reason.startswith(tr.TOO_MANY_DELIVERIES) and "3 times" in letter.reason
        assert bus_pb2.MonitorTrace.FromString(letter.payload).trace_id == t.trace_id
        await settled(nats_url, cfg.monitor.durable)
        info = await js.consumer_info(STREAM, cfg.monitor.durable)
        assert info.config.max_deliver == 3 and info.num_redelivered == 0
        assert service.live.stats.scored == 0 and service.live.stats.redelivered == 1
    finally:
        await service.stop(1)
        await letters.close()
        await nc.close()


async def test_an_unacknowledged_score_publish_is_retried_not_lost() -> None:
    # Its own nats-server: the test deletes the SCORES stream.
    async with EmbeddedNats() as server:
        app = uid("retry")
        cfg = service_config({app: "rules"}, retry_delay_s=0.2, publish_timeout_s=0.5)
        service = await RubricService(cfg, nats_url=server.url).start()
        scores = await Collector(bus_pb2.MonitorScore).start(server.url, bus.scores_subject(app))
        nc = await bus.connect(server.url)
        js = nc.jetstream()
        try:
            await js.delete_stream(bus.SCORES.name)  # score publishes now go unacknowledged
            (t,) = traces(app, 1)
            await publish(server.url, [t])
            await wait_until(lambda: service.live.stats.retried >= 2, what="retries")
            assert service.live.stats.scored == 0 and service.live.stats.dead_lettered == 0
            await bus.ensure_streams(js)
            await wait_until(lambda: service.live.stats.scored == 1, what="the score")
            # every attempt went out (a core subscriber sees them all); JetStream stored the last one
            assert len(scores.items) >= 3 and {s.trace_id for s in scores.items} == {t.trace_id}
            sub = await js.pull_subscribe(bus.scores_subject(app), durable=None, stream=bus.SCORES.name)
            (stored,) = await sub.fetch(1, timeout=5)
            assert bus_pb2.MonitorScore.FromString(stored.data).trace_id == t.trace_id
            assert (await js.stream_info(bus.SCORES.name)).state.messages == 1
            assert service.live.stats.redelivered >= 2
            await settled(server.url, cfg.monitor.durable)
        finally:
            await nc.close()
            await scores.close()
            await service.stop(1)


async def test_a_score_too_large_to_publish_is_dead_lettered(nats_url: str) -> None:
    app = uid("large")
    cfg = service_config({app: "rules"})
    cfg.rubric[0].functions[1].function = "monitor.score_functions:long_failure"
    cfg.rubric[0].functions[1].params = {}
    letters = await Collector(bus_pb2.DeadLetter).start(nats_url, bus.deadletter_subject(bus.monitor_subject(app)))
    service = await RubricService(cfg, nats_url=nats_url).start()
    try:
        (t,) = traces(app, 1)
        max_payload = letters.nc.max_payload
        # the trace fits; its score echoes the labels and adds a (truncated) 1000-character error
        t.labels["pad"] = "p" * (max_payload - t.ByteSize() - 600)
        assert t.ByteSize() < max_payload - 500
        await publish(nats_url, [t])
        (letter,) = await letters.wait_for(1)
        assert letter.reason.startswith(tr.SCORE_TOO_LARGE) and "max_payload" in letter.reason
        await settled(nats_url, cfg.monitor.durable)
    finally:
        await service.stop(1)
        await letters.close()


async def test_scoring_resumes_after_the_nats_server_restarts(tmp_path: Path) -> None:
    port = free_port()
    server = await EmbeddedNats(port=port, store_dir=tmp_path / "js").__aenter__()
    app = uid("restart")
    service = await RubricService(service_config({app: "rules"}), nats_url=server.url).start()
    try:
        await publish(server.url, traces(app, 5))
        await wait_until(lambda: service.live.stats.scored == 5, what="scores before the restart")
        await server.__aexit__(None, None, None)
        server = await EmbeddedNats(port=port, store_dir=tmp_path / "js").__aenter__()
        await publish(server.url, traces(app, 5, start=5))  # the durable and its position survived
        await wait_until(lambda: service.live.stats.scored == 10, timeout_s=30, what="scores after the restart")
        assert service.health()["ok"] and service.live.stats.dead_lettered == 0
    finally:
        await service.stop(1)
        await server.__aexit__(None, None, None)


def replica_toml(app: str, durable: str, delay_s: float) -> str:
    return f"""
[server]
port = 0

[dashboard]
port = 0
source = "local"

[monitor]
durable = "{durable}"
filter_subjects = ["rollmesh.monitor.{app}"]
apps = {{ {app} = "slow" }}
ack_wait_s = 2.0
max_in_flight = 64

[[rubric]]
name = "slow"

[[rubric.function]]
name = "one"
function = "monitor.score_functions:slow_one"
params = {{ delay_s = {delay_s} }}
"""


async def test_a_stopping_replica_hands_its_unfinished_traces_back_at_once(nats_url: str, tmp_path: Path) -> None:
    from rollmesh.config import load_config
    from rollmesh.rubric.config import RubricServiceConfig

    app, durable = uid("handback"), uid("durable")
    for name, delay in (("slow", 60.0), ("fast", 0.01)):
        (tmp_path / f"{name}.toml").write_text(replica_toml(app, durable, delay_s=delay).replace("2.0", "30.0"))
    slow = await RubricService(load_config(RubricServiceConfig, tmp_path / "slow.toml"), nats_url=nats_url).start()
    fast = None
    try:
        await publish(nats_url, traces(app, 10))
        await wait_until(lambda: slow.live.in_flight == 10, what="the slow replica to hold the traces")
        started = time.monotonic()
        await slow.stop(0.2)
        fast = await RubricService(load_config(RubricServiceConfig, tmp_path / "fast.toml"), nats_url=nats_url).start()
        await wait_until(lambda: fast.live.stats.scored == 10, what="the handed-back traces")
        assert time.monotonic() - started < 10  # not the ack_wait of 30 s
        assert fast.live.stats.redelivered == 10 and slow.live.stats.scored == 0
    finally:
        if fast is not None:
            await fast.stop(1)


async def test_traces_of_a_replica_killed_before_acking_are_scored_by_another(nats_url: str, tmp_path: Path) -> None:
    app, durable = uid("killed"), uid("durable")
    config = tmp_path / "replica.toml"
    config.write_text(replica_toml(app, durable, delay_s=60.0))  # never finishes before the kill
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "rollmesh.cli", "rubric", "serve", "--config", str(config), "--nats", nats_url]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env
    )
    scores = await Collector(bus_pb2.MonitorScore).start(nats_url, bus.scores_subject(app))
    survivor = None
    try:
        dashboard = ""
        while not dashboard:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, f"replica exited: {await proc.wait()}"
            if "dashboard on " in line:
                dashboard = line.split("dashboard on ")[1].split()[0]
        sent = traces(app, 40)
        await publish(nats_url, sent)
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                text = await (await http.get(f"{dashboard}/metrics")).text()
                if "rollmesh_monitor_in_flight 40.0" in text:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the replica never held the 40 traces:\n{text[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), timeout=10)

        fast = tmp_path / "survivor.toml"
        fast.write_text(replica_toml(app, durable, delay_s=0.01))
        from rollmesh.config import load_config
        from rollmesh.rubric.config import RubricServiceConfig

        survivor = await RubricService(load_config(RubricServiceConfig, fast), nats_url=nats_url).start()
        got = await scores.wait_for(40, timeout_s=30)
        assert {s.trace_id for s in got} == {t.trace_id for t in sent} and len(got) == 40
        await wait_until(lambda: survivor.live.stats.scored == 40, what="acknowledged scores")
        assert survivor.live.stats.redelivered == 40
        await settled(nats_url, durable)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await scores.close()
        if survivor is not None:
            await survivor.stop(1)
