"""`rollmesh train run.toml`: the end-to-end RL loop on one machine or against given servers.

The mesh (NATS, environment servers, inference servers, optionally the rubric service) comes up
as subprocesses, the DeepSpeed trainer runs as its own process (its steps must not stall the
rollout loop), and the orchestrator runs here: it streams groups of rollouts to JetStream while
the trainer consumes them, steps, and pushes weights back to the inference servers. The
orchestrator keeps at most `max_ahead_steps` trainer steps of rollouts in flight beyond what the
trainer has used, so samples stay near-on-policy however slow the trainer is.

Outputs in the run directory: metrics.jsonl (one line per trainer step), reward_curve.png,
summary.json, trainer.toml (the trainer's full config), logs/ and checkpoints/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from ..config import Section, apply_overrides, read_toml
from ..errors import FailedPreconditionError, InvalidArgumentError, RollmeshError, UnavailableError
from ..orchestrator import mixture
from ..orchestrator.config import RolloutConfig
from ..proto.v1 import messages_pb2 as msg_pb
from ..telemetry import get_logger
from .launcher import (
    EnvServerConfig,
    InferenceConfig,
    Mesh,
    MeshConfig,
    ServiceProcess,
    resolve_model_path,
    rollmesh_command,
)
from .reward_curve import plot_reward_curve, reward_summary

log = get_logger(__name__)

RUN_ID_PATTERN = r"^[A-Za-z0-9_\-=]+$"
QUICKSTART = str(Path(__file__).resolve().parent.parent / "configs" / "train-quickstart.toml")


class TrainRunConfig(Section):
    run_id: str = Field("run", pattern=RUN_ID_PATTERN)
    """Names the bus subjects, the trainer's durable consumer and the run directory (letters, digits, `-_=`)."""
    dir: str = ""
    """Run directory ("" = runs/<run_id>). A rerun with the same directory resumes the trainer from its last complete
    checkpoint.
    """
    steps: int = Field(30, ge=1)
    """Trainer steps (optimizer updates)."""
    max_ahead_steps: int = Field(1, ge=0)
    """Rollouts scheduled beyond what the trainer has consumed, in trainer steps."""
    seed: int = 0
    """Task order per epoch, and the trainer's seed."""
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    """Services: an embedded mesh by default; give addresses or a NATS URL there to use running ones.
    Here `mesh.dir` defaults to <dir>/mesh."""
    rollout: dict[str, Any] = Field(default_factory=dict)
    """The orchestrator's settings (run_id comes from the top; env defaults to the first environment of
    the mesh, split to "train"; `[[rollout.envs]]` entries train on several environments at once)."""
    trainer: dict[str, Any] = Field(default_factory=dict)
    """The trainer's settings (run_id, model, NATS URL, checkpoint and metrics paths and max_steps are
    filled in from the run)."""
    external_trainer: bool = False
    """The trainer runs elsewhere (other machines, e.g. `torchrun --nnodes N` per node) from this run's
    <dir>/trainer.toml: this process writes that file, runs the rollouts and follows the trainer's
    metrics.jsonl, so the run directory must be on storage every trainer node and this host share, at the
    same path."""


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainRunConfig:
    data = read_toml(path) if path is not None else {}
    apply_overrides(data, overrides)
    try:
        cfg = TrainRunConfig.model_validate(data)
    except Exception as e:  # pydantic's message names the key
        raise InvalidArgumentError(f"{path or 'train config'}: {e}", reason="BAD_CONFIG") from e
    if not cfg.mesh.envs and not cfg.rollout.get("env") and not cfg.rollout.get("envs"):
        raise InvalidArgumentError(
            'name an environment: rollout.env = "arithmetic" (and [[mesh.envs]] target = ... to serve it here), '
            'or several as [[rollout.envs]] entries with name = "..."',
            reason="BAD_CONFIG",
        )
    if cfg.mesh.nats.url:
        # A running mesh (`rollmesh up`, a cluster): servers come from its registry; start only what
        # the file names.
        if cfg.mesh.inference is None and not cfg.trainer.get("model"):
            raise InvalidArgumentError(
                "with mesh.nats.url and no [mesh.inference], set trainer.model to the Hugging Face directory "
                "of the model the inference servers serve",
                reason="BAD_CONFIG",
            )
    else:
        if not cfg.mesh.envs:
            # one server process hosting every environment of the run
            cfg.mesh.envs = [EnvServerConfig(target=rollout_config(cfg).env_names)]
        if cfg.mesh.inference is None:
            cfg.mesh.inference = InferenceConfig(model="tiny")
    if not cfg.mesh.dir or cfg.mesh.dir == MeshConfig().dir:
        cfg.mesh.dir = str(run_dir(cfg) / "mesh")
    if cfg.mesh.inference is not None and cfg.trainer.get("push", {}).get("mode") == "path":
        # LoadWeights reads only under its roots: the mesh's servers may load the run's checkpoints.
        checkpoints = cfg.trainer.get("checkpoint", {}).get("dir") or str(run_dir(cfg) / "checkpoints")
        model = cfg.mesh.inference.model
        roots = [Path(checkpoints).resolve(), *([Path(model).resolve()] if Path(model).exists() else [])]
        for root in roots:
            cfg.mesh.inference.extra_args += ["--weights-root", str(root)]
    return cfg


def run_dir(cfg: TrainRunConfig) -> Path:
    return Path(cfg.dir or f"runs/{cfg.run_id}")


def rollout_config(cfg: TrainRunConfig) -> RolloutConfig:
    data = {"split": "train", **cfg.rollout, "run_id": cfg.run_id}
    if cfg.mesh.envs and not data.get("envs"):
        data.setdefault("env", cfg.mesh.envs[0].targets[0])
    try:
        return RolloutConfig.model_validate(data)
    except Exception as e:
        raise InvalidArgumentError(f"[rollout]: {e}", reason="BAD_CONFIG") from e


def trainer_config(cfg: TrainRunConfig, *, nats_url: str, model_path: str) -> dict[str, Any]:
    """The trainer's TOML content: the user's [trainer] table with the run's wiring filled in."""
    from ..trainer.config import TrainerConfig

    out = run_dir(cfg).resolve()
    data = json.loads(json.dumps(cfg.trainer))
    data.update(run_id=cfg.run_id, nats_url=nats_url, max_steps=cfg.steps, metrics_path=str(out / "metrics.jsonl"))
    data.setdefault("model", model_path)
    data.setdefault("seed", cfg.seed)
    data.setdefault("checkpoint", {}).setdefault("dir", str(out / "checkpoints"))
    # The trainer checks a whole group's advantages against its rewards once it has them all; in a
    # mixture whose environments' group sizes differ it checks what holds for any part of a group (0).
    sizes = {share.config.rollouts_per_task for share in rollout_config(cfg).shares()}
    data.setdefault("batch", {}).setdefault("group_size", sizes.pop() if len(sizes) == 1 else 0)
    try:
        TrainerConfig.model_validate(data)  # fail here, not in the subprocess
    except Exception as e:
        raise InvalidArgumentError(f"[trainer]: {e}", reason="BAD_CONFIG") from e
    return data


class TrainerProgress:
    """Follows the trainer's metrics file (the committed history of its steps).

    A resumed trainer replaces the file (cut back to its checkpoint, by rename), so a new inode
    or a shorter file means: read it again from the start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._inode: int | None = None

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self._inode or st.st_size < self._offset:
                    self._inode, self._offset = st.st_ino, 0
                    self.records = []
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue  # torn by a kill: the trainer drops it when it resumes
            # A resumed trainer cuts the file back to its checkpoint: keep the latest record per step.
            while self.records and self.records[-1]["step"] >= step:
                self.records.pop()
            self.records.append(record)
        self._offset += end

    @property
    def consumed(self) -> int:
        """Rollouts the trainer has taken off the stream, trained on or skipped, except errored ones
        (the orchestrator counts those itself as they finish: a batch may wait for more while they
        are in hand)."""
        return sum(
            r.get("rollouts", 0) + sum(1 for why in (r.get("skipped") or {}).values() if why != "error")
            for r in self.records
        )

    @property
    def step(self) -> int:
        return self.records[-1]["step"] if self.records else 0


class TrainRun:
    def __init__(self, cfg: TrainRunConfig, console: Any) -> None:
        self.cfg = cfg
        self.console = console
        self.dir = run_dir(cfg)
        self.rollout = rollout_config(cfg)
        self.progress = TrainerProgress(self.dir / "metrics.jsonl")
        self.mesh: Mesh | None = None
        self.trainer: ServiceProcess | None = None
        self.scheduled = 0  # rollouts handed to the engine
        self.finished = 0
        self.errored = 0
        self.started = time.monotonic()
        self.engine: Any = None

    # ---- life cycle --------------------------------------------------------------------------

    async def run(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self._start()
            return await self._loop(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self._shutdown()
            self._write_outputs()

    async def _start(self) -> None:
        cfg = self.cfg
        self.console.print(f"[bold]rollmesh train[/] run [cyan]{cfg.run_id}[/] in {self.dir}")
        self.mesh = Mesh(cfg.mesh)
        await self.mesh.start()
        model_path = cfg.trainer.get("model") or await asyncio.to_thread(
            resolve_model_path, cfg.mesh.inference.model, cfg.mesh.inference.backend
        )
        trainer_toml = self.dir / "trainer.toml"
        from ..config import to_toml

        # Whole or not at all: trainer nodes elsewhere may be waiting for it on shared storage.
        staged = trainer_toml.with_suffix(".toml.tmp")
        staged.write_text(to_toml(trainer_config(cfg, nats_url=self.mesh.nats_url, model_path=model_path)))
        staged.replace(trainer_toml)
        self.console.print(
            f"mesh up: NATS {self.mesh.nats_url}, " + ", ".join(f"{s.name} {s.address}" for s in self.mesh.services)
        )
        if cfg.external_trainer:
            self.console.print(
                f"waiting for the trainer, started elsewhere on every node with its config {trainer_toml.resolve()}:\n"
                f"  torchrun --nnodes N --node_rank R --master_addr HOST --master_port PORT "
                f"-m rollmesh.cli trainer run --config {trainer_toml.resolve()}"
            )
            return
        self.trainer = ServiceProcess(
            "trainer",
            "trainer",
            rollmesh_command("trainer", "run", "--config", str(trainer_toml)),
            self.dir / "logs" / "trainer.log",
            env=self.mesh.bus_env(),
            tls=self.mesh.identity("trainer"),
        ).start()

    async def _shutdown(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.close()
        if self.trainer is not None and self.trainer.running():
            await self.trainer.stop(grace_s=120.0)  # SIGTERM: finish the step, checkpoint, exit
        if self.mesh is not None:
            await self.mesh.stop()

    # ---- the loop ----------------------------------------------------------------------------

    async def _loop(self, stop: asyncio.Event) -> int:
        from .. import bus
        from ..orchestrator.engine import RolloutEngine

        assert self.mesh is not None
        nc = await bus.connect(self.mesh.nats_url, name=f"rollmesh-train-{self.cfg.run_id}")
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            publisher = bus.Publisher(nc, js)
            policy = await bus.PolicyStore.open(js)
            self.engine = RolloutEngine(self.rollout, nats_url=self.mesh.nats_url, publisher=publisher, policy=policy)
            await self.engine.start()
            refuse_untrainable(self.engine.inference_pool.active)
            tasks = await self.engine.tasks_by_env()
            for name, found in tasks.items():
                if not found:
                    raise InvalidArgumentError(
                        f"environment {name!r} has no tasks in split {self.engine.lane(name).config.split!r}",
                        reason="NO_TASKS",
                    )
            producer = asyncio.create_task(self._produce(tasks))
            waiters = [producer, asyncio.create_task(stop.wait()), asyncio.create_task(self._watch_trainer(nc))]
            display = asyncio.create_task(self._display())
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in [*waiters, display]:
                    t.cancel()
                await asyncio.gather(*waiters, display, return_exceptions=True)
            for task in done:  # the producer's or the watcher's error ends the run with its message
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error
            self.progress.poll()
            if stop.is_set():
                self.console.print("[yellow]stopped by signal[/]; the trainer checkpoints and exits")
                return 130
            rc = self.trainer.proc.poll() if self.trainer is not None and self.trainer.proc else None
            if self.trainer is not None and rc not in (0, None):
                raise UnavailableError(
                    f"the trainer exited with code {rc}; its log ({self.trainer.log_path}) ends with:\n"
                    f"{self.trainer.log_tail()}",
                    reason="TRAINER_FAILED",
                )
            return 0
        finally:
            with contextlib.suppress(Exception):  # NATS may be gone: nothing left to flush
                await asyncio.wait_for(nc.close(), 5.0)

    def _trainer_running(self) -> bool:
        if self.trainer is not None:
            return self.trainer.running()
        # Started elsewhere: it may stop and be started again (resuming from its checkpoint); the run
        # is over when its metrics reach the last step.
        self.progress.poll()
        return self.progress.step < self.cfg.steps

    async def _watch_trainer(self, nc: Any) -> None:
        """Returns when the trainer exits (or, started elsewhere, reaches the last step). Restarts
        what died in the mesh (Mesh.supervise); raises when that fails, or when NATS stays unreachable
        longer than nats.max_outage_s."""
        assert self.mesh is not None
        max_outage_s = self.cfg.mesh.nats.max_outage_s
        down_since: float | None = None
        while self._trainer_running():
            await self.mesh.supervise()
            if nc.is_connected:
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > max_outage_s:
                raise UnavailableError(
                    f"NATS at {self.mesh.nats_url} has been unreachable for {max_outage_s:g} s "
                    "(mesh.nats.max_outage_s); the run stops here and resumes from the trainer's last "
                    "checkpoint when rerun",
                    reason="NATS_DOWN",
                )
            await asyncio.sleep(0.5)

    async def _gate(self, tasks: Iterator[tuple[msg_pb.Task, int]]) -> AsyncIterator[tuple[msg_pb.Task, int]]:
        """Hands (task, epoch) pairs to the engine while the rollouts in flight stay within max_ahead_steps."""
        per_step = int(self.cfg.trainer.get("batch", {}).get("rollouts_per_step", 16))
        budget = (self.cfg.max_ahead_steps + 1) * per_step
        for task, epoch in tasks:
            r = self.engine.rollouts_per_task(task)
            while True:
                self.progress.poll()
                # rollouts that may still become training samples (errored and dropped ones never do)
                never = self.errored + self.engine.stats.stale_dropped
                in_flight = self.scheduled - never - self.progress.consumed
                if in_flight + r <= budget + r - 1:
                    break
                await asyncio.sleep(0.2)
            self.scheduled += r
            yield task, epoch

    async def _produce(self, tasks: dict[str, list[msg_pb.Task]]) -> None:
        # Environments interleaved by weight; each one's tasks reshuffled on each pass (its epoch,
        # which goes into the group ids).
        order = mixture.cycle(tasks, self.engine.weights, self.cfg.seed)
        async for group in self.engine.run(self._gate(order)):
            for t in group:
                self.finished += 1
                self.errored += t.HasField("error") and t.stop_reason == 4  # STOP_REASON_ERROR

    async def _display(self) -> None:
        from rich.live import Live

        with Live(self._table(), console=self.console, refresh_per_second=2, transient=False) as live:
            while True:
                await asyncio.sleep(1.0)
                self.progress.poll()
                live.update(self._table())

    def _table(self) -> Any:
        from rich.table import Table

        recs = self.progress.records
        last = recs[-1] if recs else {}
        recent = [r["reward_mean"] for r in recs[-5:] if r.get("reward_mean") is not None]
        elapsed = time.monotonic() - self.started
        table = Table(title=f"run {self.cfg.run_id}", show_header=True)
        for col in ("step", "reward (last 5 steps)", "rollouts", "rollouts/s", "train tok/s", "policy lag", "errored"):
            table.add_column(col, justify="right")
        table.add_row(
            f"{self.progress.step}/{self.cfg.steps}",
            f"{sum(recent) / len(recent):.3f}" if recent else "-",
            str(self.finished),
            f"{self.finished / elapsed:.1f}" if elapsed > 0 else "-",
            f"{last.get('tokens_per_s', 0):.0f}",
            f"{last.get('policy_lag_mean') or 0:.2f}",
            str(self.errored),
        )
        return table

    # ---- outputs -----------------------------------------------------------------------------

    def _write_outputs(self) -> None:
        self.progress.poll()
        recs = self.progress.records
        if not recs:
            return
        summary = {
            "run_id": self.cfg.run_id,
            "steps": self.progress.step,
            "rollouts": self.finished,
            "errored": self.errored,
            "wall_s": round(time.monotonic() - self.started, 1),
            **reward_summary(recs),
        }
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        png = plot_reward_curve(recs, self.dir / "reward_curve.png", title=f"rollmesh train: {self.cfg.run_id}")
        first, last = summary.get("reward_first"), summary.get("reward_last")
        if first is not None and last is not None:
            self.console.print(
                f"reward (mean of the first / last {summary['window']} steps): "
                f"[bold]{first:.3f} -> {last:.3f}[/]  "
                + (f"curve: {png}  " if png else "")
                + f"metrics: {self.progress.path}"
            )
            for env, r in summary.get("by_env", {}).items():
                self.console.print(f"  {env}: {r['reward_first']:.3f} -> {r['reward_last']:.3f}")


def refuse_untrainable(replicas: Sequence[Any]) -> None:
    """FailedPreconditionError when an inference server cannot be trained through (an OpenAI-compatible
    endpoint: no token ids, no weight updates), before any rollout is made for nothing."""
    lacking = [f"{r.address} ({r.model}: no {' or '.join(m)})" for r in replicas if (m := r.missing_for_training())]
    if lacking:
        raise FailedPreconditionError(
            "rollmesh train needs inference servers with token ids and weight updates; "
            f"{', '.join(lacking)} cannot be trained through (an API model is for rollmesh eval): serve the "
            "model with the hf or vllm backend",
            reason="CAPABILITY_MISSING",
        )


async def train(cfg: TrainRunConfig, console: Any) -> int:
    try:
        return await TrainRun(cfg, console).run()
    except RollmeshError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
