"""The Trainer: fetch rollouts -> batch -> DeepSpeed step -> push weights -> checkpoint, with one
JSON line of metrics per step.

Ranks: rank 0 owns everything that talks to the world (JetStream, inference servers, the policy
KV, checkpoints' commit) and drives the other ranks with a small command channel over
torch.distributed (broadcast of the command, scatter of each rank's micro-batches); ranks > 0 only
`follow()`. A world of one is the same code without the channel.

Exactly once: a step's rollouts are committed by the first checkpoint after it (its state holds
the stream cursor and the ids trained per step since the previous checkpoint); on start the
trainer resumes from the newest complete checkpoint and replays from its cursor, and the metrics
file is cut back to that step, so the metrics file is the committed history.

Tracing: each step runs in a `trainer.step` span linked to the trace of every rollout it consumed
(one step joins many rollout traces, so they are links, not parents).

Trust: a rollout enters a batch only after its shape, token ids, logprobs and advantage passed
(batching.py, validation.py), and its group's advantages agree with its rewards. Refused rollouts
are dead-lettered with why, counted per reason in the step's metrics, and acknowledged with the
step like every other (the cursor moves past them), so they are never trained nor redelivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from opentelemetry.trace import SpanContext

from .. import bus
from ..errors import InvalidArgumentError, UnavailableError, quoted
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..telemetry import get_logger, start_span
from .batching import InvalidTrajectory, Sample, StepPlan, plan_step, trajectory_samples
from .checkpoint import HF_DIR, Checkpoint, CheckpointStore
from .config import TrainerConfig
from .consumer import Delivery, FileSource, RolloutConsumer, decode
from .model import DS_TAG, DeepSpeedPolicy, StepStats
from .validation import GroupLedger, baseline_reward, check_advantage, describe, finite
from .weights_push import PushReport, WeightsPusher

log = get_logger(__name__)

WAIT_LOG_EVERY_S = 30.0
FETCH_TIMEOUT_S = 1.0
# While no rollouts come, inference servers behind the current policy (one restarted since the
# last push) get the current weights this often: without them no fresh rollout could ever come.
CATCH_UP_EVERY_S = 5.0
PUSH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Member:
    """A valid rollout of the step that belongs to a group: evidence for the group check."""

    group_id: str
    reward: float | None  # None: left out of the group's baseline
    advantage: float
    delivery: Delivery


@dataclass
class Collected:
    """The rollouts of one step: those trained on and those skipped (with why)."""

    trajectories: list[traj_pb.Trajectory] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # trajectory id (or seq) -> reason
    invalid: dict[str, str] = field(default_factory=dict)  # trajectory id (or seq) -> why code, of "invalid" ones
    members: dict[str, Member] = field(default_factory=dict)  # trajectory id -> group evidence
    unusable: dict[str, str] = field(default_factory=dict)  # trajectory id -> group id: errored or refused members
    seen: set[str] = field(default_factory=set)  # trajectory ids of the step
    links: list[SpanContext] = field(default_factory=list)  # the consumed rollouts' publish spans
    first_seq: int = 0
    last_seq: int = 0

    def count(self, reason: str) -> int:
        return sum(1 for r in self.skipped.values() if r == reason)

    def invalid_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for code in self.invalid.values():
            out[code] = out.get(code, 0) + 1
        return dict(sorted(out.items()))

    def drop(self, tid: str) -> None:
        """Takes a rollout back out of the batch."""
        self.trajectories = [t for t in self.trajectories if t.trajectory_id != tid]
        self.samples = [s for s in self.samples if s.trajectory_id != tid]


@dataclass
class RunSummary:
    steps: int
    policy_version: int
    checkpoint: str
    resumed_from: int | None


class Trainer:
    """The trainer of one run. `await Trainer.create(cfg)` builds the DeepSpeed engine (in a
    thread); rank 0 then `await trainer.run()`, other ranks `trainer.follow()`."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.engine = DeepSpeedPolicy(cfg)
        self.rank, self.world_size = self.engine.rank, self.engine.world_size
        self.store = CheckpointStore(cfg.checkpoint.dir, cfg.checkpoint.keep)
        self.step = 0
        self.version = 0
        self.cursor = 0  # source position of the last rollout included in a step
        self.uncommitted: list[dict[str, Any]] = []  # per step since the last checkpoint
        self.last_checkpoint: Checkpoint | None = None
        self.last_push: PushReport | None = None
        self._stop = False
        self._nc: Any = None
        self._source: RolloutConsumer | FileSource | None = None
        self._publisher: bus.Publisher | None = None
        self._pusher: WeightsPusher | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._gathered: tuple[int, dict[str, torch.Tensor]] | None = None  # (step, weights)
        self.groups = GroupLedger(cfg.batch.group_size)

    @classmethod
    async def create(cls, cfg: TrainerConfig) -> Trainer:
        return await asyncio.to_thread(cls, cfg)

    def stop(self) -> None:
        """Finish the current step, checkpoint, and return from run() (signal-safe)."""
        self._stop = True

    # ---- the command channel between ranks ---------------------------------------------------

    def _command(self, op: str, arg: Any = None, per_rank: Sequence[Any] | None = None) -> Any:
        """Rank 0: runs `op` on every rank (broadcast), each with its element of `per_rank` if given."""
        if self.world_size > 1:
            dist.broadcast_object_list([(op, arg, per_rank is not None)], src=0)
            if per_rank is not None:
                mine: list[Any] = [None]
                dist.scatter_object_list(mine, list(per_rank), src=0)
                return self._execute(op, arg, mine[0])
        return self._execute(op, arg, per_rank[0] if per_rank is not None else None)

    def follow(self) -> None:
        """Ranks > 0: execute rank 0's commands until it says stop."""
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            op, arg, scattered = box[0]
            mine: list[Any] = [None]
            if scattered:
                dist.scatter_object_list(mine, None, src=0)
            if op == "stop":
                return
            self._execute(op, arg, mine[0])

    def _execute(self, op: str, arg: Any, mine: Any) -> Any:
        if op == "step":
            return self.engine.train_step(mine)
        if op == "gather":
            return self.engine.full_state_dict(arg)
        if op == "save":
            self.engine.save(Path(arg[0]), arg[1])
            if self.world_size > 1:
                dist.barrier()
            return None
        if op == "load":
            return self.engine.load(Path(arg))
        if op == "stop":
            return None
        raise ValueError(f"unknown trainer command {op!r}")

    # ---- life cycle (rank 0) -----------------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.cfg
        needs_bus = cfg.source == "bus" or (cfg.push.enabled and cfg.push.discover)
        if needs_bus:
            self._nc = await bus.connect(cfg.bus_url, name=f"rollmesh-trainer-{cfg.run_id}")
            js = self._nc.jetstream()
            await bus.ensure_streams(js)
            self._publisher = bus.Publisher(self._nc, js)
        if cfg.source == "bus":
            pending = cfg.batch.rollouts_per_step * (cfg.checkpoint.every_n_steps + 2) * 4
            self._source = RolloutConsumer(
                self._nc.jetstream(),
                cfg.run_id,
                cfg.durable_name,
                ack_wait_s=cfg.ack_wait_s,
                max_ack_pending=max(10_000, pending),
            )
        else:
            self._source = FileSource(cfg.files)
        self._pusher = WeightsPusher(cfg.push, cfg.run_id, self._nc)
        await self._pusher.start()

    async def _resume(self) -> int | None:
        """Loads the newest complete checkpoint on every rank; returns its step (None: fresh start)."""
        self.store.remove_partial()
        ckpt = self.store.latest() if self.cfg.checkpoint.resume else None
        if ckpt is None:
            self._truncate_metrics(0)
            return None
        state = ckpt.state
        for key, want in (("run_id", self.cfg.run_id), ("source", self.cfg.source)):
            if state.get(key, want) != want:
                raise InvalidArgumentError(
                    f"checkpoint {ckpt.path} belongs to {key} {state[key]!r}, not {want!r}: its stream position "
                    "means nothing here; use another checkpoint.dir (or checkpoint.resume = false)",
                    reason="CHECKPOINT_MISMATCH",
                )
        await asyncio.to_thread(self._command, "load", str(ckpt.path))
        self.step = int(state["step"])
        self.version = int(state["policy_version"])
        self.cursor = int(state["cursor"])
        self.last_checkpoint = ckpt
        self._truncate_metrics(self.step)
        log.info(
            "resumed from %s (step %d, policy version %d, cursor %d)", ckpt.path, self.step, self.version, self.cursor
        )
        return self.step

    def _truncate_metrics(self, upto_step: int) -> None:
        """Drops metric lines of steps after `upto_step`: they belonged to uncommitted steps."""
        path = self.cfg.metrics_file
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= upto_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line torn by a kill: its step was never committed
                continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    async def run(self, max_steps: int | None = None) -> RunSummary:
        """The main loop on rank 0 until `max_steps` total steps (default: config; 0 = forever),
        stop(), or (files) the end of the data. Ends with a checkpoint of any uncommitted steps."""
        if self.rank != 0:
            raise RuntimeError("Trainer.run() is for rank 0; other ranks call follow()")
        limit = self.cfg.max_steps if max_steps is None else max_steps
        try:
            await self._connect()
            resumed = await self._resume()
            assert self._source is not None and self._pusher is not None
            await self._source.start(self.cursor)
            await self._sync_version(resumed is not None)
            while not self._stop and (not limit or self.step < limit):
                collected = await self._collect()
                if not collected.samples and not collected.skipped:
                    break  # stopped while waiting, or the files are exhausted
                await self._train(collected)
                if self.step % self.cfg.checkpoint.every_n_steps == 0:
                    await self._checkpoint()
            await self._await_push()
            if self.uncommitted:
                await self._checkpoint()
            return RunSummary(
                steps=self.step,
                policy_version=self.version,
                checkpoint=str(self.last_checkpoint.path) if self.last_checkpoint else "",
                resumed_from=resumed,
            )
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.world_size > 1:
            try:
                await asyncio.to_thread(self._command, "stop")
            except Exception:
                log.warning("could not stop the other ranks", exc_info=True)
        if self._push_task is not None and not self._push_task.done():
            self._push_task.cancel()
        if self._source is not None:
            await self._source.close()
        if self._pusher is not None:
            await self._pusher.close()
        if self._nc is not None:
            await self._nc.close()

    async def _sync_version(self, resumed: bool) -> None:
        """Policy versions only go up: after a crash the servers may hold (and the KV announce)
        versions newer than the checkpoint; the resumed weights then become the next version."""
        assert self._pusher is not None
        announced = await self._pusher.current_version()
        bumped = announced > self.version
        if bumped:
            self.version = announced + 1
        if resumed or bumped:
            await self._push(wait=True)
        else:
            await self._pusher.announce(self.version, self._checkpoint_path())

    def _checkpoint_path(self) -> str:
        return str(self.last_checkpoint.path) if self.last_checkpoint else ""

    # ---- one step ----------------------------------------------------------------------------

    async def _collect(self) -> Collected:
        """Rollouts until batch.rollouts_per_step trainable ones (waiting as long as it takes on the
        bus). Errored, invalid and filtered rollouts are skipped, counted, and committed with the step."""
        assert self._source is not None
        want = self.cfg.batch.rollouts_per_step
        out = Collected()
        waited_since = caught_up = time.monotonic()
        while True:
            while len(out.trajectories) < want and not self._stop:
                deliveries = await self._source.fetch(want - len(out.trajectories), timeout_s=FETCH_TIMEOUT_S)
                if not deliveries:
                    if isinstance(self._source, FileSource) and self._source.exhausted:
                        break
                    if time.monotonic() - caught_up > CATCH_UP_EVERY_S:
                        caught_up = time.monotonic()
                        await self._catch_up()
                    if time.monotonic() - waited_since > WAIT_LOG_EVERY_S:
                        log.info("waiting for rollouts of run %s (%d/%d)", self.cfg.run_id, len(out.trajectories), want)
                        waited_since = time.monotonic()
                    continue
                for d in deliveries:
                    out.first_seq = out.first_seq or d.seq
                    out.last_seq = d.seq
                    if d.trace is not None:
                        out.links.append(d.trace)
                    await self._classify(d, out)
            # Groups are judged on the whole step's members; refused ones leave room for more rollouts.
            if not await self._check_groups(out) or self._stop:
                break
            if isinstance(self._source, FileSource) and self._source.exhausted:
                break
        if self._stop and isinstance(self._source, RolloutConsumer) and len(out.trajectories) < want:
            # A partial batch when stopping is not trained: the next start replays it from the cursor.
            return Collected()
        self._record_groups(out)
        return out

    def _checks_groups(self) -> bool:
        return self.cfg.loss.kind == "grpo" and self.cfg.batch.check_group_advantages

    async def _classify(self, d: Delivery, out: Collected) -> None:
        cfg = self.cfg
        grpo = cfg.loss.kind == "grpo"
        try:
            traj = decode(d)
        except Exception as e:
            await self._reject(d, f"undecodable Trajectory: {e}", "UNDECODABLE", out, key=f"seq:{d.seq}")
            return
        tid = traj.trajectory_id or f"seq:{d.seq}"
        group_id = traj.group_id if self._checks_groups() else ""
        # On the bus a trajectory id is unique (it is the publish dedup key): a second one would be
        # trained twice and count twice in its group. Files may repeat an example on purpose.
        on_bus = d.handle is not None
        if (on_bus and tid in out.seen) or (group_id and self.groups.seen(group_id, tid)):
            await self._reject(
                d, f"trajectory id {quoted(tid)} was seen before", "DUPLICATE_ID", out, key=f"seq:{d.seq}"
            )
            return
        out.seen.add(tid)
        if traj.stop_reason == traj_pb.STOP_REASON_ERROR:
            out.skipped[tid] = "error"  # an infrastructure failure is never a reward-zero sample
            if group_id:
                out.unusable[tid] = group_id
            return
        try:
            if not finite(traj):
                raise InvalidTrajectory("advantage or reward is not a finite number", "NON_FINITE")
            if grpo:
                check_advantage(traj, cfg.batch.max_abs_advantage)
            if group_id and (refused := self.groups.refused(group_id)):
                raise InvalidTrajectory(describe(group_id, refused), "GROUP_REFUSED")
            samples = trajectory_samples(
                traj,
                need_logprobs=grpo,
                max_seq_len=cfg.batch.max_seq_len,
                temperature=cfg.loss.temperature,
                vocab_size=self.engine.vocab_size,
            )
        except InvalidTrajectory as e:
            if group_id:
                out.unusable[tid] = group_id
            await self._reject(d, str(e), e.reason, out, key=tid)
            return
        if group_id:
            out.members[tid] = Member(group_id, baseline_reward(traj), traj.advantage, d)
        if cfg.batch.skip_zero_advantage and traj.advantage == 0.0 and grpo:
            out.skipped[tid] = "zero_advantage"
            return
        if cfg.batch.max_policy_lag and any(
            self.version - s.policy_version > cfg.batch.max_policy_lag for s in samples
        ):
            out.skipped[tid] = "stale"
            return
        out.trajectories.append(traj)
        out.samples.extend(samples)

    async def _check_groups(self, out: Collected) -> int:
        """Refuses the step's members of every group whose advantages cannot come from its rewards
        (validation.py); returns how many rollouts left the batch."""
        by_group: dict[str, dict[str, tuple[float | None, float]]] = {}
        for tid, m in out.members.items():
            by_group.setdefault(m.group_id, {})[tid] = (m.reward, m.advantage)
        unusable: dict[str, int] = {}
        for group_id in out.unusable.values():
            unusable[group_id] = unusable.get(group_id, 0) + 1
        before = len(out.trajectories)
        for group_id, members in by_group.items():
            why = self.groups.problem(group_id, members, unusable.get(group_id, 0))
            if not why:
                continue
            self.groups.refuse(group_id, why)
            for tid in members:
                m = out.members.pop(tid)
                out.unusable[tid] = group_id
                out.drop(tid)
                await self._reject(m.delivery, describe(group_id, why), "ADVANTAGE_MISMATCH", out, key=tid)
        return before - len(out.trajectories)

    def _record_groups(self, out: Collected) -> None:
        members: dict[str, dict[str, tuple[float | None, float]]] = {}
        for tid, m in out.members.items():
            members.setdefault(m.group_id, {})[tid] = (m.reward, m.advantage)
        unusable: dict[str, set[str]] = {}
        for tid, group_id in out.unusable.items():
            unusable.setdefault(group_id, set()).add(tid)
        for group_id in members.keys() | unusable.keys():
            self.groups.record(group_id, members.get(group_id, {}), unusable.get(group_id, set()))
        out.members.clear()  # their deliveries (raw bytes) are not needed any more

    async def _reject(self, d: Delivery, why: str, reason: str, out: Collected, *, key: str) -> None:
        out.skipped[key] = "invalid"
        out.invalid[key] = reason
        log.warning("skipping rollout %s: %s", key, why)
        if self._publisher is not None and d.handle is not None:
            try:
                await self._publisher.dead_letter(
                    d.subject,
                    f"{reason}: {why}",
                    d.data,
                    service="trainer",
                    headers=d.headers or {bus.MSG_ID: d.msg_id},
                )
            except Exception as e:
                log.warning("could not dead-letter rollout %s: %r", key, e)

    def _plan(self, samples: list[Sample]) -> StepPlan:
        b = self.cfg.batch
        return plan_step(
            samples,
            world_size=self.world_size,
            max_tokens_per_micro_batch=b.max_tokens_per_micro_batch,
            normalization=self.cfg.loss.normalization,
            norm_len=b.max_seq_len,
            pad_id=self.engine.pad_id,
            version=self.version,
        )

    async def _train(self, c: Collected) -> None:
        with start_span(
            "trainer.step",
            instrumentation="rollmesh.trainer",
            links=c.links,
            attributes={"rollmesh.step": self.step + 1, "rollmesh.rollouts": len(c.trajectories)},
        ) as span:
            await self._train_step(c)
            span.set_attribute("rollmesh.skipped", len(c.skipped))
            span.set_attribute("rollmesh.policy_version", self.version)

    async def _train_step(self, c: Collected) -> None:
        t0 = time.perf_counter()
        stats: StepStats | None = None
        plan = self._plan(c.samples)
        if c.samples:
            stats = await asyncio.to_thread(self._command, "step", None, plan.ranks)
            self.step += 1
            self.version += 1
        else:  # every rollout of the batch was skipped: commit them with a step record, no update
            self.step += 1
        step_s = time.perf_counter() - t0
        self.cursor = max(self.cursor, c.last_seq)
        record = self._record(c, plan, stats, step_s)
        self.uncommitted.append(
            {
                "step": self.step,
                "trajectory_ids": record["trajectory_ids"],
                "skipped": c.skipped,
                "first_seq": c.first_seq,
                "last_seq": c.last_seq,
            }
        )
        if stats is not None and self.step % self.cfg.push.every_n_steps == 0 and self.cfg.push.mode == "stream":
            await self._push(wait=False)
        self._write_metrics(record)

    def _record(self, c: Collected, plan: StepPlan, stats: StepStats | None, step_s: float) -> dict[str, Any]:
        rewards = [t.reward for t in c.trajectories]
        lags = [self.version - 1 - s.policy_version for s in c.samples] if stats else []
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        by_env: dict[str, list[float]] = {}
        for t in sorted(c.trajectories, key=lambda t: t.task.env):
            by_env.setdefault(t.task.env, []).append(t.reward)
        record: dict[str, Any] = {
            "step": self.step,
            "time": round(time.time(), 3),
            "policy_version": self.version,
            "world_size": self.world_size,
            "rollouts": len(c.trajectories),
            "sequences": plan.sequences,
            "micro_batches": plan.micro_batches,
            "tokens": plan.total_tokens,
            "trained_tokens": plan.trained_tokens,
            "step_s": round(step_s, 4),
            "tokens_per_s": round(plan.total_tokens / step_s, 1) if step_s > 0 and stats else 0.0,
            "reward_mean": mean(rewards),
            "reward_min": min(rewards) if rewards else None,
            "reward_max": max(rewards) if rewards else None,
            # a run over several environments: each one's share of the step and its mean reward
            "rollouts_by_env": {env: len(rs) for env, rs in by_env.items()},
            "reward_mean_by_env": {env: mean(rs) for env, rs in by_env.items()},
            "advantage_mean": mean([t.advantage for t in c.trajectories]),
            "policy_lag_mean": mean(lags),
            "policy_lag_max": max(lags) if lags else None,
            "truncated": sum(1 for s in c.samples if s.truncated),
            "skipped_error": c.count("error"),
            "skipped_invalid": c.count("invalid"),
            "skipped_invalid_reasons": c.invalid_by_reason(),
            "skipped_stale": c.count("stale"),
            "skipped_zero_advantage": c.count("zero_advantage"),
            "first_seq": c.first_seq,
            "last_seq": c.last_seq,
            "trajectory_ids": [t.trajectory_id for t in c.trajectories],
            # the rest of the step's rollouts, by id, with why: with trajectory_ids, every rollout
            # the step consumed (first_seq..last_seq) is accounted for
            "skipped": dict(c.skipped),
        }
        if stats is not None:
            record.update(loss=stats.loss, grad_norm=stats.grad_norm, lr=stats.lr, **stats.means())
        if self.last_push is not None:
            record.update(pushed_version=self.last_push.version, **self.last_push.as_metrics())
        return record

    def _write_metrics(self, record: dict[str, Any]) -> None:
        path = self.cfg.metrics_file
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- weights -----------------------------------------------------------------------------

    async def _weights(self) -> dict[str, torch.Tensor]:
        """The full weights of the current step (gathered once per step, reused by push and export)."""
        if self._gathered is None or self._gathered[0] != self.step:
            dtype = PUSH_DTYPES.get(self.cfg.push.dtype)
            self._gathered = (self.step, await asyncio.to_thread(self._command, "gather", dtype))
        return self._gathered[1]

    async def _await_push(self) -> None:
        if self._push_task is not None:
            await self._push_task
            self._push_task = None

    async def _push(self, *, wait: bool) -> None:
        """Pushes the current weights as self.version, then announces the version. At most one push
        is in flight: it overlaps the next step's fetch and compute, not the next push."""
        assert self._pusher is not None
        await self._await_push()
        version, checkpoint = self.version, self._checkpoint_path()
        if self.cfg.push.mode == "path":
            if self.last_checkpoint is None or not (self.last_checkpoint.hf_path / "config.json").is_file():
                await self._pusher.announce(version, checkpoint)
                return
            tensors, path = None, str(self.last_checkpoint.hf_path.resolve())
        else:
            tensors, path = (await self._weights()) if self.cfg.push.enabled else None, ""

        async def push() -> None:
            assert self._pusher is not None
            self.last_push = await self._pusher.push(tensors, version, path)
            await self._pusher.announce(version, checkpoint)

        self._push_task = asyncio.create_task(push())
        if wait:
            await self._await_push()

    async def _catch_up(self) -> None:
        """Pushes the current weights to the servers that serve an older version, if any."""
        assert self._pusher is not None
        if not self.cfg.push.enabled or self.version == 0 or (self._push_task and not self._push_task.done()):
            return
        try:
            behind = await self._pusher.behind(self.version)
            if not behind:
                return
            if self.cfg.push.mode == "path":
                if self.last_checkpoint is None or not (self.last_checkpoint.hf_path / "config.json").is_file():
                    return
                tensors, path = None, str(self.last_checkpoint.hf_path.resolve())
            else:
                tensors, path = await self._weights(), ""
            log.info("inference servers %s serve a policy older than %d: pushing it", behind, self.version)
            await self._pusher.push(tensors, self.version, path, to=behind)
        except Exception as e:  # the next wait tries again
            log.warning("catching up inference servers failed: %r", e)

    # ---- checkpoints -------------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        step = self.step
        staging = self.store.prepare(step)
        client_state = {"step": step, "policy_version": self.version, "cursor": self.cursor}
        await asyncio.to_thread(self._command, "save", (str(staging), client_state))
        if self.cfg.checkpoint.export_hf:
            weights = await self._weights()
            await asyncio.to_thread(self.engine.export_hf, staging / HF_DIR, weights)
        state = {
            "step": step,
            "policy_version": self.version,
            "cursor": self.cursor,
            "run_id": self.cfg.run_id,
            "source": self.cfg.source,
            "world_size": self.world_size,
            "deepspeed_tag": DS_TAG,
            "steps": self.uncommitted,
            "time": time.time(),
        }
        self.last_checkpoint = await asyncio.to_thread(self.store.commit, step, state)
        self.uncommitted = []
        self._gathered = None  # a full copy of the weights: do not hold it longer than needed
        assert self._source is not None and self._pusher is not None
        await self._source.commit(self.cursor)
        log.info("checkpoint %s (cursor %d)", self.last_checkpoint.path, self.cursor)
        if self.cfg.push.mode == "path" and self.cfg.push.enabled:
            await self._push(wait=False)
        else:  # the announced version now has a checkpoint (after its push, which announces it too)
            await self._await_push()
            await self._pusher.announce(self.version, self._checkpoint_path())


def run_trainer(cfg: TrainerConfig, *, install_signals: bool = True) -> RunSummary | None:
    """The process entry point for every rank (single process, torchrun or the deepspeed launcher):
    rank 0 runs the loop, other ranks follow it. SIGTERM/SIGINT on rank 0: finish the step,
    checkpoint, exit; other ranks ignore them and stop when rank 0 says so."""
    import signal

    trainer = Trainer(cfg)

    async def main() -> RunSummary:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, trainer.stop)
        return await trainer.run()

    try:
        if trainer.rank != 0:
            if install_signals:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            trainer.follow()
            return None
        return asyncio.run(main())
    except RuntimeError as e:  # gloo and NCCL raise RuntimeError (DistError) when a peer is gone
        if trainer.world_size > 1 and _lost_peer(e):
            raise rank_lost(trainer, e) from e
        raise


def _lost_peer(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Timed out", "NCCL")
    )


def rank_lost(trainer: Trainer, error: BaseException) -> UnavailableError:
    """The error a rank stops with when another rank died or stopped answering: no partial step or
    checkpoint is kept (checkpoints commit atomically), so starting every rank again resumes."""
    latest = trainer.store.latest()
    where = f"the last complete checkpoint is {latest.path}" if latest else "there is no complete checkpoint yet"
    first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return UnavailableError(
        f"rank {trainer.rank} of {trainer.world_size} lost contact with another trainer rank ({first_line}); "
        f"it stops at step {trainer.step}, {where}. Start every rank again with the same command to resume from it.",
        reason="TRAINER_RANK_LOST",
        metadata={"rank": str(trainer.rank), "world_size": str(trainer.world_size), "step": str(trainer.step)},
    )
