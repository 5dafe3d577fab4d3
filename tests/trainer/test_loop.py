"""The Trainer loop in-process: bad rollouts on the bus are skipped, counted and dead-lettered
(never trained, never a crash); SFT on exported trajectory files lowers the loss and ends with the
data; configuration errors are clear."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh import bus  # noqa: E402
from rollmesh.errors import InvalidArgumentError  # noqa: E402
from rollmesh.proto.v1 import bus_pb2  # noqa: E402
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.config import TrainerConfig, load_trainer_config  # noqa: E402
from rollmesh.trainer.loop import Trainer  # noqa: E402

from .rollouts import publish  # noqa: E402


def _traj(run_id: str, i: int, **kw) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=f"{run_id}-{i}", run_id=run_id, advantage=1.0 if i % 2 else -1.0, **kw)
    t.task.env = "env"
    t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 40 + i, 6], completion_ids=[50 + i, 2], completion_logprobs=[-3, -4]))
    return t


async def _dead_letters(nats_url: str, run_id: str) -> list[bus_pb2.DeadLetter]:
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(bus.deadletter_subject(bus.rollouts_subject(run_id, "env")), ordered_consumer=True)
        out = []
        try:
            while True:
                out.append(bus_pb2.DeadLetter.FromString((await sub.next_msg(timeout=1.0)).data))
        except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 (nats raises its own subclass)
            return out
    finally:
        await nc.close()


async def test_bad_rollouts_are_skipped_counted_and_dead_lettered(nats_url, tiny_model_dir, tmp_path) -> None:
    run_id = f"bad-{uuid.uuid4().hex[:8]}"
    good = [_traj(run_id, i) for i in range(3)]
    errored = _traj(run_id, 3, stop_reason=traj_pb.STOP_REASON_ERROR)
    errored.error.message = "environment crashed"
    no_logprobs = _traj(run_id, 4)
    del no_logprobs.turns[0].completion_logprobs[:]
    await publish(nats_url, [good[0], errored, no_logprobs, good[1], good[2]])
    nc = await bus.connect(nats_url)
    await nc.jetstream().publish(bus.rollouts_subject(run_id, "env"), b"\xff\x00 not a protobuf")
    await nc.close()
    good.append(_traj(run_id, 5))
    await publish(nats_url, good[3:])

    cfg = TrainerConfig(
        run_id=run_id,
        model=str(tiny_model_dir),
        nats_url=nats_url,
        batch={"rollouts_per_step": 4},
        checkpoint={"dir": str(tmp_path)},
        push={"enabled": False},
    )
    trainer = await Trainer.create(cfg)
    summary = await trainer.run(max_steps=1)
    assert summary.steps == 1
    (record,) = [json.loads(line) for line in cfg.metrics_file.read_text().splitlines()]
    assert sorted(record["trajectory_ids"]) == sorted(t.trajectory_id for t in good)
    assert record["skipped_error"] == 1 and record["skipped_invalid"] == 2
    reasons = sorted(d.reason.split(":")[0] for d in await _dead_letters(nats_url, run_id))
    assert reasons == ["LOGPROBS_MISSING", "UNDECODABLE"]
    state = json.loads((tmp_path / "step-00000001" / "trainer_state.json").read_text())
    assert state["steps"][0]["skipped"] == {
        errored.trajectory_id: "error",
        no_logprobs.trajectory_id: "invalid",
        "seq:" + str(state["steps"][0]["last_seq"] - 1): "invalid",
    }


async def test_sft_on_exported_rows_lowers_the_loss_and_ends_with_the_data(tiny_model_dir, tmp_path) -> None:
    from google.protobuf import json_format

    rows = tmp_path / "sft.jsonl"
    target = [60, 61, 62, 63, 2]
    lines = [
        json.dumps({"id": f"r{i}", "prompt_ids": [1, 5, 40, 6], "completion_ids": target, "reward": 1.0})
        for i in range(8)
    ]
    for i in range(8, 12):  # `rollmesh eval`'s trajectories.jsonl: Trajectory protos in JSON
        t = traj_pb.Trajectory(trajectory_id=f"r{i}")
        t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 40, 6], completion_ids=target))
        lines.append(json.dumps(json_format.MessageToDict(t, preserving_proto_field_name=True)))
    rows.write_text("".join(line + "\n" for line in lines))
    cfg = TrainerConfig(
        run_id="sft",
        model=str(tiny_model_dir),
        lr=3e-3,
        source="files",
        files=[str(rows)],
        loss={"kind": "sft"},
        batch={"rollouts_per_step": 4},
        checkpoint={"dir": str(tmp_path / "ck"), "every_n_steps": 2, "export_hf": False},
        push={"enabled": False, "discover": False},
    )
    trainer = await Trainer.create(cfg)
    summary = await trainer.run()
    records = [json.loads(line) for line in cfg.metrics_file.read_text().splitlines()]
    assert summary.steps == 3 and [r["step"] for r in records] == [1, 2, 3]
    assert [t for r in records for t in r["trajectory_ids"]] == [f"r{i}" for i in range(12)]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5  # NLL of the target completion drops
    assert (tmp_path / "ck" / "step-00000003").is_dir()  # the last, partial interval is checkpointed too


def test_example_config_is_valid_and_holds_the_defaults() -> None:
    from pathlib import Path

    example = Path(__file__).parents[2] / "deploy" / "trainer.example.toml"
    cfg = load_trainer_config(example)
    defaults = TrainerConfig(run_id=cfg.run_id, model=cfg.model, checkpoint={"dir": cfg.checkpoint.dir})
    assert cfg == defaults


def test_config_file_overrides_and_errors(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[trainer]\nrun_id = "r"\nmodel = "m"\n[trainer.loss]\nclip_high = 0.3\n')
    cfg = load_trainer_config(path, ["trainer.deepspeed.zero_stage=3", "batch.rollouts_per_step=2"])
    assert cfg.loss.clip_high == 0.3 and cfg.deepspeed.zero_stage == 3 and cfg.batch.rollouts_per_step == 2
    assert cfg.durable_name == "trainer-r" and cfg.metrics_file.name == "metrics.jsonl"
    with pytest.raises(InvalidArgumentError, match="offload_params"):
        load_trainer_config(path, ["deepspeed.offload_params=true"])
    with pytest.raises(InvalidArgumentError, match=r"run\.toml.*lossy"):
        load_trainer_config(path, ["lossy=1"])
    with pytest.raises(InvalidArgumentError, match="run_id"):
        load_trainer_config(None, ['run_id="a.b"', 'model="m"'])


async def test_a_checkpoint_of_another_run_is_refused(tiny_model_dir, tmp_path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "prompt_ids": [1, 5, 6], "completion_ids": [60, 2]}) + "\n")
    common = {
        "model": str(tiny_model_dir),
        "source": "files",
        "files": [str(rows)],
        "loss": {"kind": "sft"},
        "batch": {"rollouts_per_step": 1},
        "checkpoint": {"dir": str(tmp_path / "ck"), "export_hf": False},
        "push": {"enabled": False, "discover": False},
    }
    assert (await (await Trainer.create(TrainerConfig(run_id="one", **common))).run()).steps == 1
    other = await Trainer.create(TrainerConfig(run_id="two", **common))
    with pytest.raises(InvalidArgumentError, match="belongs to run_id 'one'"):
        await other.run()
