"""`rollmesh train` under faults, one at a time, each SIGKILL or SIGSTOP at a step: the run recovers
(or stops within a bound with a clear message and resumes when rerun), and the audit from the
ROLLOUTS stream and metrics.jsonl finds every published rollout trained exactly once or skipped
with a reason, no errored rollout trained as a reward, and contiguous steps."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .train_runs import TrainProcess, audit

pytest.importorskip("deepspeed")

STEPS = 12


@pytest.fixture
def run(tmp_path: Path):
    runs: list[TrainProcess] = []

    def make(**kw) -> TrainProcess:
        runs.append(TrainProcess(tmp_path, **kw))
        return runs[-1]

    yield make
    for r in runs:
        r.kill()


def _finish(train: TrainProcess, steps: int = STEPS) -> None:
    rc = train.wait(420)
    assert rc == 0, train.output()[-4000:]
    result = audit(train.run)
    print(result)
    result.check(steps)


def test_nats_server_killed_mid_run_is_restarted_and_nothing_is_lost(run) -> None:
    train = run().start()
    train.wait_for_step(4)
    os.kill(train.nats_pid(), signal.SIGKILL)
    t0 = time.monotonic()
    train.wait_for_step(6)
    print(f"recovered in {time.monotonic() - t0:.1f} s")
    _finish(train)


def test_trainer_killed_stops_the_run_clearly_and_a_rerun_resumes(run) -> None:
    train = run().start()
    train.wait_for_step(5)
    os.kill(train.trainer_pid(), signal.SIGKILL)
    t0 = time.monotonic()
    rc = train.wait(120)
    print(f"stopped in {time.monotonic() - t0:.1f} s")
    assert rc == 2, train.output()[-3000:]
    assert "the trainer exited with code -9" in train.output()
    assert "Traceback" not in train.output()
    again = run().start()  # the same directory: the trainer resumes from its last checkpoint
    _finish(again)


@pytest.mark.parametrize("victim", ["env-", "inference-"])
def test_a_killed_server_is_started_again_and_the_run_goes_on(run, victim: str) -> None:
    train = run().start()
    train.wait_for_step(3)
    os.kill(train.service_pid(victim), signal.SIGKILL)
    t0 = time.monotonic()
    train.wait_for_step(6)
    print(f"{victim} recovered in {time.monotonic() - t0:.1f} s")
    _finish(train)


@pytest.mark.parametrize("victim", ["env-", "inference-"])
def test_a_frozen_server_times_out_and_its_work_goes_elsewhere(run, victim: str) -> None:
    """SIGSTOP: the process is alive (nothing restarts it) but answers nothing; its calls time out
    and go to the other replica, and it serves again after SIGCONT."""
    train = run(inference_replicas=2, rollout="step_timeout_s = 5.0\ninference_timeout_s = 5.0").start()
    train.wait_for_step(3)
    pid = train.service_pid(victim)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        train.wait_for_step(6)
        print(f"{victim} frozen: 3 more steps in {time.monotonic() - t0:.1f} s")
    finally:
        os.kill(pid, signal.SIGCONT)
    _finish(train)


def test_the_orchestrator_killed_then_rerun_resumes_where_the_trainer_stopped(run) -> None:
    """SIGKILL of `rollmesh train` itself: its servers and trainer go with it (the trainer
    checkpoints on the way out), and the same command again finishes the run."""
    train = run().start()
    train.wait_for_step(5)
    os.killpg(train.proc.pid, signal.SIGKILL)
    train.proc.wait()
    deadline = time.monotonic() + 60
    while train.pids_all() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert train.pids_all() == [], "the run's processes outlived it"
    again = run().start()
    _finish(again)


def test_an_external_nats_that_stays_down_stops_the_run_within_the_bound(run, tmp_path: Path) -> None:
    """A NATS server the mesh does not own cannot be restarted by it: after mesh.nats.max_outage_s
    the run stops with NATS_DOWN instead of waiting forever."""
    from rollmesh.natsd import EmbeddedNats

    nats = EmbeddedNats(store_dir=tmp_path / "external-nats").start()
    try:
        train = run(nats_url=nats.url, max_outage_s=5.0).start()
        train.wait_for_step(3)
        nats.proc.kill()
        t0 = time.monotonic()
        rc = train.wait(240)
        stopped_s = time.monotonic() - t0
    finally:
        nats.stop()
    print(f"stopped {stopped_s:.1f} s after NATS died")
    assert rc == 2, train.output()[-3000:]
    assert "has been unreachable for 5 s" in train.output()
    assert "Traceback" not in train.output()
