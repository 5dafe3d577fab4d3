"""One rollout is one trace: the orchestrator's episode against real environment and inference
servers, its scoring and its publish to JetStream, whose message carries the trace on (W3C
traceparent in the NATS headers) to whoever consumes it."""

from __future__ import annotations

import uuid

from opentelemetry.trace import SpanKind
from rollmesh import bus
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import RolloutEngine
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from span_capture import captured_spans, span_id_of, spans_when, trace_id_of, tree

from .local_servers import env, env_server, scripted_inference

ENV_SERVICE = "rollmesh.v1.EnvironmentService"
INFERENCE_SERVICE = "rollmesh.v1.InferenceService"


async def test_a_published_rollout_carries_its_episode_trace(nats_url: str) -> None:
    run_id = f"trace-{uuid.uuid4().hex[:8]}"
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    publisher = bus.Publisher(nc, js)
    try:
        with captured_spans() as exporter:
            async with (
                env_server(env("guess-number", max_turns=3)) as envs,
                scripted_inference("guess-number") as inference,
            ):
                cfg = RolloutConfig(run_id=run_id, env="guess-number", rollouts_per_task=2)
                async with RolloutEngine(
                    cfg, publisher=publisher, env_addresses=[envs.address], inference_addresses=[inference.address]
                ) as engine:
                    (group,) = [g async for g in engine.run(await engine.list_tasks(limit=1))]
                assert engine.stats.published == 2

                sub = await js.pull_subscribe(bus.rollouts_subject(run_id), durable=None)
                msgs = await sub.fetch(2, timeout=5)
                by_id = {traj_pb.Trajectory.FromString(m.data).trajectory_id: m for m in msgs}
                assert set(by_id) == {t.trajectory_id for t in group}
                trace_ids = {t.trajectory_id: trace_id_of(by_id[t.trajectory_id].headers["traceparent"]) for t in group}
                assert len(set(trace_ids.values())) == 2, "each rollout is a trace of its own"

                def complete(spans) -> bool:
                    names = {(s.context.trace_id, s.name, s.kind) for s in spans}
                    return all(
                        (tid, f"/{ENV_SERVICE}/Episode", SpanKind.SERVER) in names
                        and (tid, f"/{INFERENCE_SERVICE}/Generate", SpanKind.SERVER) in names
                        and (tid, "rollout", SpanKind.INTERNAL) in names
                        for tid in trace_ids.values()
                    )

                spans = await spans_when(exporter, complete)
    finally:
        await nc.close()

    for t in group:
        header = by_id[t.trajectory_id].headers["traceparent"]
        tid = trace_ids[t.trajectory_id]
        mine = [s for s in spans if s.context.trace_id == tid]
        (rollout,) = [s for s in mine if s.name == "rollout"]
        (publish,) = [s for s in mine if s.name == "publish"]
        # the provenance names the trace, and the message's traceparent is the rollout's publish span
        assert t.provenance.trace_id == format(tid, "032x")
        assert rollout.attributes["rollmesh.trajectory_id"] == t.trajectory_id
        assert publish.kind == SpanKind.PRODUCER and publish.parent.span_id == rollout.context.span_id
        assert span_id_of(header) == publish.context.span_id
        assert publish.attributes["rollmesh.publish_result"] == "published"
        # the publish happened inside the open rollout span
        assert rollout.start_time <= publish.start_time and publish.end_time <= rollout.end_time
        # env steps, model calls and the reward are in the same trace, on both sides of each call
        server = {s.name for s in mine if s.kind == SpanKind.SERVER}
        assert {f"/{ENV_SERVICE}/Episode", f"/{INFERENCE_SERVICE}/Generate"} <= server, tree(spans, tid)
        assert rollout.attributes["rollmesh.stop_reason"] == traj_pb.StopReason.Name(t.stop_reason)
        assert rollout.attributes["rollmesh.reward"] == t.reward
    assert "rollmesh.rollouts" in msgs[0].subject and msgs[0].headers[bus.MSG_ID] in by_id


async def test_a_rubric_scored_group_links_its_scoring_to_each_rollout() -> None:
    from rollmesh.rubric.config import RewardFunctionConfig, RubricConfig, RubricServiceConfig, ServerConfig
    from rollmesh.rubric.server import RubricServer

    brevity = RubricConfig(
        name="brevity",
        functions=[RewardFunctionConfig(name="short", function="length_penalty", params={"max": 1})],
    )
    rubric = RubricServer.from_config(RubricServiceConfig(server=ServerConfig(port=0), rubric=[brevity]))
    await rubric.start()
    try:
        with captured_spans() as exporter:
            async with env_server(env("arithmetic")) as envs, scripted_inference("arithmetic") as inference:
                cfg = RolloutConfig(
                    run_id=f"trace-{uuid.uuid4().hex[:8]}", env="arithmetic", rollouts_per_task=2, rubric="brevity"
                )
                async with RolloutEngine(
                    cfg,
                    env_addresses=[envs.address],
                    inference_addresses=[inference.address],
                    rubric_address=rubric.address,
                ) as engine:
                    (group,) = [g async for g in engine.run(await engine.list_tasks(limit=1))]
            rpc = "/rollmesh.v1.RubricService/ScoreGroup"
            spans = await spans_when(
                exporter, lambda spans: any(s.name == rpc and s.kind == SpanKind.SERVER for s in spans)
            )
    finally:
        await rubric.stop(0)

    rollouts = {s.attributes["rollmesh.trajectory_id"]: s for s in spans if s.name == "rollout"}
    assert set(rollouts) == {t.trajectory_id for t in group}
    (scoring,) = [s for s in spans if s.name == "score_group"]
    # one call scores both rollouts: it links to each rollout's trace instead of joining one
    assert {link.context.span_id for link in scoring.links} == {s.context.span_id for s in rollouts.values()}
    assert scoring.context.trace_id not in {s.context.trace_id for s in rollouts.values()}
    (server,) = [s for s in spans if s.name == rpc and s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.name == rpc and s.kind == SpanKind.CLIENT]
    assert client.parent.span_id == scoring.context.span_id and server.parent.span_id == client.context.span_id
    for t in group:
        assert rollouts[t.trajectory_id].attributes["rollmesh.reward"] == t.reward
