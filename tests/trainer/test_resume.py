"""Kill and resume: the trainer runs as `rollmesh trainer run` in a subprocess on rollouts a real
inference server generated, is SIGKILLed after a checkpoint with an uncommitted step behind it,
and restarts: it resumes from the last complete checkpoint (ignoring half-written ones), replays
exactly the uncommitted rollouts, and in the committed history every trajectory was trained on
exactly once. Policy versions keep going up across the crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh import bus  # noqa: E402

from .rollouts import generate_trajectories, publish  # noqa: E402

STEPS = 6
PER_STEP = 2


def _trainer(config: Path, log: Path, command: str = "run") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    args = ["--max-steps", str(STEPS)] if command == "run" else []
    return subprocess.Popen(
        [sys.executable, "-m", "rollmesh.cli", "trainer", command, "--config", str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, log: Path, timeout_s: float = 120.0) -> None:
    """Polls without blocking the event loop: the inference server the trainer pushes to lives on it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in _records(metrics)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode}:\n{_tail(log)}")
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"trainer did not reach step {step}:\n{_tail(log)}")


async def test_kill_and_resume_trains_every_rollout_exactly_once(served, nats_url, tiny_model_dir, tmp_path) -> None:
    name, backend, client = served
    run_id = f"resume-{uuid.uuid4().hex[:8]}"
    trajectories = await generate_trajectories(client, run_id, groups=STEPS, group_size=PER_STEP, seed=11)
    all_ids = [t.trajectory_id for t in trajectories]
    ckpt = tmp_path / "ck"
    config = tmp_path / "trainer.toml"
    config.write_text(
        f"""
run_id = "{run_id}"
model = "{tiny_model_dir}"
nats_url = "{nats_url}"
lr = 1e-3
[batch]
rollouts_per_step = {PER_STEP}
[checkpoint]
dir = "{ckpt}"
every_n_steps = 2
keep = 3
[push]
model = "{name}"
"""
    )
    metrics = ckpt / "metrics.jsonl"

    # Run 1: rollouts for 3 steps only; it checkpoints step 2, trains step 3, then waits for more.
    await publish(nats_url, trajectories[: 3 * PER_STEP])
    log1 = tmp_path / "run1.log"
    first = _trainer(config, log1)
    try:
        await _wait_for_step(first, metrics, 3, log1)
        await asyncio.sleep(1.0)  # let it push version 3 and block on the empty stream
        assert (ckpt / "step-00000002" / "COMPLETE").is_file()
        assert not (ckpt / "step-00000003").exists()  # step 3 is trained but not committed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    killed = _records(metrics)
    assert [r["step"] for r in killed] == [1, 2, 3]
    assert backend.policy_version == 3

    # What a crash mid-write leaves behind: never picked up.
    with metrics.open("a") as f:
        f.write('{"step": 4, "trajectory_i')
    (ckpt / "step-00000004").mkdir()
    (ckpt / "step-00000004" / "trainer_state.json").write_text(json.dumps({"step": 4, "cursor": 10**9}))
    (ckpt / ".tmp-step-00000005").mkdir()

    # Run 2: the rest of the rollouts; it must redo step 3 with exactly the same rollouts.
    await publish(nats_url, trajectories[3 * PER_STEP :])
    log2 = tmp_path / "run2.log"
    second = _trainer(config, log2)
    try:
        assert await asyncio.to_thread(second.wait, 180) == 0, log2.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    assert "step-00000002" in log2.read_text() and "resumed from" in log2.read_text()

    history = _records(metrics)
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    assert history[:2] == killed[:2]  # committed steps are kept as they were
    assert history[2]["trajectory_ids"] == killed[2]["trajectory_ids"]  # the replay is exact
    assert history[2]["time"] != killed[2]["time"]  # ... and really happened again
    trained = [tid for r in history for tid in r["trajectory_ids"]]
    assert sorted(trained) == sorted(all_ids)  # nothing lost, nothing twice

    # The checkpoints say the same: their per-step records partition the rollouts.
    done = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert done == ["step-00000002", "step-00000004", "step-00000006"]
    committed = []
    for d in done:
        state = json.loads((ckpt / d / "trainer_state.json").read_text())
        assert (ckpt / d / "COMPLETE").is_file() and state["step"] == int(d[-8:])
        committed += [tid for s in state["steps"] for tid in s["trajectory_ids"]]
    assert sorted(committed) == sorted(all_ids)

    # Versions only go up: run 1 announced 3; run 2 re-pushed its checkpoint's (step 2) weights as 4,
    # then steps 3..6 made 5..8.
    nc = await bus.connect(nats_url)
    try:
        policy = await (await bus.PolicyStore.open(nc.jetstream())).get(run_id)
    finally:
        await nc.close()
    assert policy is not None and policy.version == 8 and policy.checkpoint.endswith("step-00000006")
    assert [r["policy_version"] for r in history] == [1, 2, 5, 6, 7, 8]
    assert backend.policy_version == 8


async def test_sigterm_checkpoints_the_uncommitted_steps_and_exits(nats_url, tiny_model_dir, tmp_path) -> None:
    from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

    run_id = f"term-{uuid.uuid4().hex[:8]}"
    trajectories = []
    for i in range(2):
        t = traj_pb.Trajectory(trajectory_id=f"{run_id}-{i}", run_id=run_id, advantage=1.0)
        t.task.env = "env"
        t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 6], completion_ids=[60 + i, 2], completion_logprobs=[-5, -5]))
        trajectories.append(t)
    await publish(nats_url, trajectories)
    ckpt = tmp_path / "ck"
    config = tmp_path / "trainer.toml"
    config.write_text(
        f'run_id = "{run_id}"\nmodel = "{tiny_model_dir}"\nnats_url = "{nats_url}"\n'
        f'[batch]\nrollouts_per_step = 1\n[checkpoint]\ndir = "{ckpt}"\nevery_n_steps = 100\n'
        "[push]\nenabled = false\ndiscover = false\n"
    )
    log = tmp_path / "serve.log"
    proc = _trainer(config, log, "serve")
    try:
        await _wait_for_step(proc, ckpt / "metrics.jsonl", 2, log)  # then it waits for more rollouts
        assert not (ckpt / "step-00000002").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, _tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads((ckpt / "step-00000002" / "trainer_state.json").read_text())
    assert [s["trajectory_ids"] for s in state["steps"]] == [
        [trajectories[0].trajectory_id],
        [trajectories[1].trajectory_id],
    ]
    assert "trainer stopped at step 2" in _tail(log)
