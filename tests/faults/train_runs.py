"""`rollmesh train` as a user runs it (a subprocess), with handles on its processes to kill, and an
audit of what it did from the JetStream store and the run's files (never from logs)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rollmesh.natsd import EmbeddedNats

RUN_ID = "faults"

CONFIG = """
run_id = "{run_id}"
steps = {steps}
max_ahead_steps = 1
seed = 0

[mesh]
max_restarts = 3

[mesh.nats]
{nats}
max_outage_s = {max_outage_s}

[mesh.inference]
model = "tiny"
backend = "hf"
replicas = {inference_replicas}

[[mesh.envs]]
target = "digits"
replicas = {env_replicas}

[rollout]
env = "digits"
split = "train"
rollouts_per_task = 4
max_concurrency = 16
max_off_policy_steps = 2
sampling = {{ temperature = 1.0, max_tokens = 8 }}
{rollout_extra}

[trainer]
lr = 5e-4

[trainer.batch]
rollouts_per_step = 16

[trainer.checkpoint]
every_n_steps = 3
"""


class TrainProcess:
    """One `rollmesh train` in `workdir`; the run's files are in workdir/run."""

    def __init__(self, workdir: Path, *, steps: int = 12, env_replicas: int = 2, inference_replicas: int = 1,
                 max_outage_s: float = 60.0, rollout: str = "", nats_url: str = "") -> None:  # fmt: skip
        self.workdir = workdir
        self.run = workdir / "run"
        (workdir / "run.toml").write_text(
            CONFIG.format(
                run_id=RUN_ID,
                steps=steps,
                env_replicas=env_replicas,
                inference_replicas=inference_replicas,
                max_outage_s=max_outage_s,
                rollout_extra=rollout,
                nats=f'url = "{nats_url}"' if nats_url else "port = 0",
            )
        )
        self.proc: subprocess.Popen[str] | None = None
        self.log = workdir / "train.out"

    def start(self) -> TrainProcess:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rollmesh.cli", "train", "run.toml", "--set", "dir=run"],
            cwd=self.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,
        )
        return self

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = self.output()[-4000:]
            raise AssertionError(f"rollmesh train did not end within {timeout_s:g} s:\n{tail}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.pids_all():  # what a SIGKILLed launcher left (its children die with it, but be sure)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def steps(self) -> list[dict]:
        path = self.run / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_for_step(self, step: int, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(r["step"] >= step for r in self.steps()):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"rollmesh train exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no step {step} within {timeout_s:g} s:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def mesh_state(self) -> dict:
        return json.loads((self.run / "mesh" / "mesh.json").read_text())

    def service_pid(self, prefix: str) -> int:
        return next(s["pid"] for s in self.mesh_state()["services"] if s["name"].startswith(prefix))

    def nats_pid(self) -> int:
        return self.mesh_state()["nats_pid"]

    def trainer_pid(self) -> int:
        for pid in self.pids_all():
            if " trainer run --config " in _cmdline(pid):
                return pid
        raise AssertionError("no trainer process")

    def pids_all(self) -> list[int]:
        """Processes of this run: started in its directory (or naming it)."""
        mine = []
        for pid in _pids():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if pid != os.getpid() and (cwd == str(self.workdir) or str(self.workdir) in _cmdline(pid)):
                mine.append(pid)
        return mine


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Audit:
    """What the run did, from the ROLLOUTS stream and metrics.jsonl."""

    steps: list[int]
    published: int  # distinct trajectories in the stream up to the last consumed sequence
    trained: int
    skipped: dict[str, int]  # reason -> count
    errored_in_stream: int
    trained_twice: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    errored_trained: list[str] = field(default_factory=list)

    def check(self, want_steps: int) -> None:
        assert self.steps == list(range(1, want_steps + 1)), f"steps not contiguous: {self.steps}"
        assert self.trained_twice == [], f"trained twice: {self.trained_twice[:5]}"
        assert self.unaccounted == [], f"published but neither trained nor skipped: {self.unaccounted[:5]}"
        assert self.errored_trained == [], f"errored rollouts trained as rewards: {self.errored_trained[:5]}"
        assert self.published == self.trained + sum(self.skipped.values())


def audit(run: Path, run_id: str = RUN_ID) -> Audit:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stream = asyncio.run(_stream(run / "mesh" / "nats", max(r["last_seq"] for r in records)))
    return audit_records(records, stream)


def audit_records(records: list[dict], stream: dict[str, bool]) -> Audit:
    """`records`: the trainer's metrics.jsonl; `stream`: trajectory id -> errored, for the ROLLOUTS
    messages up to the last sequence the trainer consumed."""
    seen: dict[str, int] = {}  # how many steps consumed each id (trained or skipped)
    trained: set[str] = set()
    reasons: dict[str, int] = {}
    for r in records:
        trained.update(r["trajectory_ids"])
        for tid in [*r["trajectory_ids"], *r["skipped"]]:
            seen[tid] = seen.get(tid, 0) + 1
        for why in r["skipped"].values():
            reasons[why] = reasons.get(why, 0) + 1
    errored = {tid for tid, is_error in stream.items() if is_error}
    return Audit(
        steps=[r["step"] for r in records],
        published=len(stream),
        trained=len(trained),
        skipped=reasons,
        errored_in_stream=len(errored),
        trained_twice=[t for t, n in seen.items() if n > 1],
        unaccounted=[t for t in stream if t not in seen],
        errored_trained=sorted(errored & trained),
    )


async def _stream(store: Path, last_seq: int) -> dict[str, bool]:
    """trajectory id -> errored, for the ROLLOUTS messages of the run up to `last_seq`."""
    import nats
    from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

    out: dict[str, bool] = {}
    async with EmbeddedNats(store_dir=store) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        info = await js.stream_info("ROLLOUTS")
        for seq in range(info.state.first_seq, min(last_seq, info.state.last_seq) + 1):
            try:
                msg = await js.get_msg("ROLLOUTS", seq)
            except nats.js.errors.NotFoundError:
                continue
            t = traj_pb.Trajectory.FromString(msg.data)
            out[t.trajectory_id] = t.stop_reason == traj_pb.STOP_REASON_ERROR
        await nc.close()
    return out
