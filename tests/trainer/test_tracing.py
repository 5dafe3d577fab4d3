"""The trainer's side of a rollout's trace: each message's W3C trace context is read as the
consumer takes it off the stream, and the step that trains on it links to it (one step joins many
rollout traces); a refused rollout's dead letter stays in the rollout's trace."""

from __future__ import annotations

import uuid

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from opentelemetry import trace  # noqa: E402
from rollmesh import bus  # noqa: E402
from rollmesh.proto.v1 import bus_pb2  # noqa: E402
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.config import TrainerConfig  # noqa: E402
from rollmesh.trainer.loop import Trainer  # noqa: E402
from span_capture import captured_spans, trace_id_of  # noqa: E402


def _traj(run_id: str, i: int) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=f"{run_id}-{i}", run_id=run_id, advantage=1.0 if i % 2 else -1.0)
    t.task.env = "env"
    t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 40 + i, 6], completion_ids=[50 + i, 2], completion_logprobs=[-3, -4]))
    return t


async def test_a_trainer_step_links_to_the_traces_of_its_rollouts(nats_url, tiny_model_dir, tmp_path) -> None:
    run_id = f"traced-{uuid.uuid4().hex[:8]}"
    good = [_traj(run_id, i) for i in range(4)]
    no_logprobs = _traj(run_id, 4)
    del no_logprobs.turns[0].completion_logprobs[:]
    tracer = trace.get_tracer("test")
    published: dict[str, trace.SpanContext] = {}  # trajectory id -> the span it was published in

    with captured_spans() as exporter:
        nc = await bus.connect(nats_url)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            letters = await js.subscribe(
                bus.deadletter_subject(bus.rollouts_subject(run_id, "env")), ordered_consumer=True
            )
            publisher = bus.Publisher(nc, js)
            for t in [good[0], no_logprobs, *good[1:]]:
                with tracer.start_as_current_span("rollout") as span:  # each rollout a trace of its own
                    assert await publisher.publish_trajectory(t)
                published[t.trajectory_id] = span.get_span_context()

            cfg = TrainerConfig(
                run_id=run_id,
                model=str(tiny_model_dir),
                nats_url=nats_url,
                batch={"rollouts_per_step": 4},
                checkpoint={"dir": str(tmp_path)},
                push={"enabled": False},
            )
            trainer = await Trainer.create(cfg)
            assert (await trainer.run(max_steps=1)).steps == 1
            letter_msg = await letters.next_msg(timeout=10)
        finally:
            await nc.close()
        (step,) = [s for s in exporter.get_finished_spans() if s.name == "trainer.step"]

    assert step.attributes["rollmesh.step"] == 1 and step.attributes["rollmesh.rollouts"] == 4
    assert step.attributes["rollmesh.skipped"] == 1
    # every rollout the step consumed, the refused one too, is a link to the span that published it
    linked = {(link.context.trace_id, link.context.span_id) for link in step.links}
    assert linked == {(c.trace_id, c.span_id) for c in published.values()}
    assert len({c.trace_id for c in published.values()}) == 5
    assert step.context.trace_id not in {c.trace_id for c in published.values()}

    # the dead letter is in the refused rollout's trace and keeps the message's own headers
    refused = published[no_logprobs.trajectory_id]
    assert trace_id_of(letter_msg.headers["traceparent"]) == refused.trace_id
    letter = bus_pb2.DeadLetter.FromString(letter_msg.data)
    assert letter.reason.startswith("LOGPROBS_MISSING")
    assert letter.headers[bus.MSG_ID] == no_logprobs.trajectory_id
    assert trace_id_of(letter.headers["traceparent"]) == refused.trace_id
