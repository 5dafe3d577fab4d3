"""RolloutEngine: groups of rollouts per task, scheduled over environment and inference replicas,
scored, checked for freshness and published to JetStream.

    async with RolloutEngine(config, nats_url=url, publisher=publisher) as engine:
        tasks = await engine.list_tasks(limit=100)
        async for group in engine.run(tasks):
            ...  # list[Trajectory], one group per task, already published

Mixtures: a run over several environments (`RolloutConfig.envs`) has one lane per environment,
with its own replica pool, episode runner and settings (split, rubric, sampling, group size,
options); each task goes to the lane of its `task.env`, so a group stays within one environment.
`tasks_by_env()` lists every lane's tasks, and mixture.draw / mixture.cycle interleave them by
weight. The inference pool, the concurrency limit and the stats are shared.

Scheduling: a task becomes a group of its environment's `rollouts_per_task` episodes; at most `max_concurrency`
episodes run at once, and at most about twice as many groups as fit in that are started but not
yet taken by the consumer of `run()`, so a slow consumer slows scheduling (backpressure). When the
trainer has announced a policy version for the run (bus.PolicyStore), scheduling also waits while
the inference servers lag it by more than `max_off_policy_steps`, and finished trajectories are
judged for staleness (freshness.py).

Identity: group ids derive from the run, environment, split and task id (plus a counter when the
same task recurs in one engine, e.g. training epochs); trajectory ids from the group id and the
index in the group. Both are deterministic, so a resumed run skips what it already has (`skip`)
and a republished trajectory is dropped by JetStream's dedup (Nats-Msg-Id = trajectory id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from nats.aio.client import Client as NATS

from .. import bus
from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
)
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import messages_pb2 as msg_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..registry import Registry
from ..rpc import RpcLimits
from ..rpc_errors import error_from_rpc
from .config import EnvShare, RolloutConfig
from .episode_runner import EpisodeOutcome, EpisodeRunner, Rollout, error_reason, replica_fault
from .freshness import PolicyClock, judge
from .interception import InterceptionEndpoint
from .publishing import publish
from .routing import (
    EnvReplica,
    InferenceReplica,
    ReplicaPool,
    connect_env,
    connect_inference,
)
from .scoring import fail, score_with_env, score_with_rubric
from .stats import RolloutStats

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
# Room left in a NATS message for what scoring adds to a trajectory after the size check.
PAYLOAD_MARGIN_BYTES = 16 * 1024
_END = object()


def group_id(run_id: str, env: str, split: str, task_id: str, occurrence: int = 0) -> str:
    """`<run>/<env>/<split>/<task>`, with `@<n>` for the n-th recurrence of the task (n >= 1)."""
    base = f"{run_id}/{env}/{split}/{task_id}"
    return f"{base}@{occurrence}" if occurrence else base


def trajectory_id(run_id: str, group_id: str, index: int) -> str:
    """Deterministic id of rollout `index` of a group: the same run, group and index always give
    the same id (resume, JetStream dedup); 32 hex digits."""
    return hashlib.sha256(f"{run_id}\x1f{group_id}\x1f{index}".encode()).hexdigest()[:32]


def _seed_of(tid: str) -> int:
    return int(tid[:8], 16) & 0x7FFFFFFF


# What run() takes: tasks, or (task, epoch) pairs where each task carries its own epoch (mixture.cycle).
TaskItem = msg_pb.Task | tuple[msg_pb.Task, int]


@dataclass(eq=False)
class Lane:
    """One environment of the run: its settings, replicas and episode runner."""

    share: EnvShare
    pool: ReplicaPool[EnvReplica]
    runner: EpisodeRunner

    @property
    def config(self) -> RolloutConfig:
        return self.share.config


async def _aiter(tasks: Iterable[TaskItem] | AsyncIterable[TaskItem]) -> AsyncIterator[TaskItem]:
    if isinstance(tasks, AsyncIterable):
        async for t in tasks:
            yield t
    else:
        for t in tasks:
            yield t


class RolloutEngine:
    def __init__(
        self,
        config: RolloutConfig,
        *,
        nats_url: str | None = None,
        env_addresses: Sequence[str] = (),
        inference_addresses: Sequence[str] = (),
        rubric_address: str | None = None,
        publisher: bus.Publisher | None = None,
        policy: bus.PolicyStore | None = None,
        rpc_limits: RpcLimits = RpcLimits(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        self.config = config
        self.nats_url = nats_url
        self.env_addresses = list(env_addresses)
        self.inference_addresses = list(inference_addresses)
        self.rubric_address = rubric_address
        self.publisher = publisher
        self.policy = policy
        self.rpc_limits = rpc_limits
        self.stats = RolloutStats()
        model = config.model or "(any model)"
        self.inference_pool: ReplicaPool[InferenceReplica] = ReplicaPool(
            f"inference {model!r}", self._connect_inference
        )
        self.clock = PolicyClock(policy, config.run_id)
        self.rubric: Any = None  # rubric.client.RubricClient when config.rubric
        self._nc: NATS | None = None
        self._registry: Registry | None = None
        self._known_envs: set[str] = set()
        self._episodes = asyncio.Semaphore(config.max_concurrency)
        self._occurrences: dict[tuple[str, str, str], int] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._started = False
        self.intercept = InterceptionEndpoint(config.intercept)  # RunEpisode's model calls, on first use
        self.lanes: dict[str, Lane] = {}
        for share in config.shares():
            pool: ReplicaPool[EnvReplica] = ReplicaPool(f"environment {share.name!r}", self._env_connector(share.name))
            self.lanes[share.name] = Lane(share, pool, self._runner(share.config, pool))

    def _runner(self, config: RolloutConfig, env_pool: ReplicaPool[EnvReplica]) -> EpisodeRunner:
        return EpisodeRunner(config, env_pool, self.inference_pool, self.stats, intercept=self.intercept)

    @property
    def env_pool(self) -> ReplicaPool[EnvReplica]:
        """The replicas of the run's (first) environment."""
        return next(iter(self.lanes.values())).pool

    @property
    def runner(self) -> EpisodeRunner:
        """The episode runner of the run's (first) environment."""
        return next(iter(self.lanes.values())).runner

    def lane(self, env: str) -> Lane:
        lane = self.lanes.get(env)
        if lane is None:
            raise InvalidArgumentError(
                f"environment {env!r} is not one of this run's ({', '.join(self.lanes)})", reason="UNKNOWN_ENVIRONMENT"
            )
        return lane

    # ---- life cycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> RolloutEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        try:
            if self.nats_url:
                self._nc = await bus.connect(self.nats_url, name=f"rollmesh-orchestrator-{self.config.run_id}")
                js = self._nc.jetstream()
                if not (self.env_addresses and self.inference_addresses):
                    self._registry = await Registry.from_client(self._nc)
                if self.policy is None:
                    self.policy = await bus.PolicyStore.open(js)
                    self.clock.store = self.policy
            if self.publisher is not None and self.config.publish:
                await bus.ensure_streams(self.publisher.js, (bus.ROLLOUTS,))
            for lane in self.lanes.values():
                await self._discover_env(lane)
            await self._discover_inference()
            for lane in self.lanes.values():
                self._check_rewards(lane)
            if any(lane.config.rubric for lane in self.lanes.values()):
                await self._connect_rubric()
            if self._registry is not None:
                self._discovery = asyncio.create_task(self._refresh_loop(), name="rollmesh-discovery")
            self._started = True
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
            self._discovery = None
        for lane in self.lanes.values():
            await lane.pool.close()
        await self.inference_pool.close()
        await self.intercept.stop()
        if self.rubric is not None:
            await self.rubric.close()
            self.rubric = None
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._nc = None
        self._started = False

    # ---- what is being rolled out --------------------------------------------------------------

    @property
    def env_info(self) -> env_pb.EnvironmentInfo:
        """The environment as its (first live) server describes it: version, digest, kind, tools."""
        return self.env_pool.pick().info

    @property
    def model(self) -> str:
        """The model the inference servers serve."""
        return self.inference_pool.pick().model

    # ---- discovery -----------------------------------------------------------------------------

    def _env_connector(self, env: str) -> Callable[[str], Awaitable[EnvReplica]]:
        async def connect(address: str) -> EnvReplica:
            return await connect_env(
                address, env, timeout_s=CONNECT_TIMEOUT_S, limits=self.rpc_limits, known=self._known_envs
            )

        return connect

    async def _connect_inference(self, address: str) -> InferenceReplica:
        return await connect_inference(address, self.config.model, timeout_s=CONNECT_TIMEOUT_S, limits=self.rpc_limits)

    async def _registry_addresses(self, kind: int, name: str | None) -> list[bus_pb.ServiceRecord]:
        assert self._registry is not None
        try:
            return await self._registry.list(kind, name)
        except ValueError as e:  # a name that cannot be a registry key cannot be registered either
            raise NotFoundError(str(e)) from e

    async def _discover_env(self, lane: Lane) -> None:
        env = lane.share.name
        if self.env_addresses:
            addresses = self.env_addresses
        elif self._registry is not None:
            records = await self._registry_addresses(bus_pb.SERVICE_KIND_ENVIRONMENT, env)
            if not records:
                known = sorted({r.name for r in await self._registry.list(bus_pb.SERVICE_KIND_ENVIRONMENT)})
                raise NotFoundError(
                    f"no environment server for {env!r} (known: {', '.join(known) or 'none registered'})",
                    reason="UNKNOWN_ENVIRONMENT",
                )
            addresses = [r.address for r in records]
        else:
            raise InvalidArgumentError(
                "no environment server addresses given and no NATS URL to find them in the registry"
            )
        problems = await lane.pool.sync(addresses)
        if lane.pool.active:
            return
        if problems and all(isinstance(e, LookupError) for _, e in problems):
            raise NotFoundError(
                f"no environment server for {env!r} (known: {', '.join(sorted(self._known_envs)) or 'none'})",
                reason="UNKNOWN_ENVIRONMENT",
            )
        raise UnavailableError(
            f"no environment server for {env!r} is reachable: " + "; ".join(str(e) for _, e in problems),
            reason="UNREACHABLE",
        )

    async def _discover_inference(self) -> None:
        model = self.config.model
        if self.inference_addresses:
            addresses = self.inference_addresses
        elif self._registry is not None:
            from ..inference.server import registry_name

            name = registry_name(model) if model else None
            records = await self._registry_addresses(bus_pb.SERVICE_KIND_INFERENCE, name)
            if not records:
                served = sorted(
                    {r.labels.get("model", r.name) for r in await self._registry.list(bus_pb.SERVICE_KIND_INFERENCE)}
                )
                raise NotFoundError(
                    f"no inference server for model {model or '(any)'!r} (serving: "
                    f"{', '.join(served) or 'none registered'})",
                    reason="UNKNOWN_MODEL",
                )
            addresses = [r.address for r in records]
        else:
            raise InvalidArgumentError(
                "no inference server addresses given and no NATS URL to find them in the registry"
            )
        problems = await self.inference_pool.sync(addresses)
        if self.inference_pool.active:
            models = {r.model for r in self.inference_pool.active}
            if len(models) > 1:
                raise InvalidArgumentError(
                    f"the inference servers serve different models {sorted(models)}; set `model` to pick one"
                )
            return
        if problems and all(isinstance(e, LookupError) for _, e in problems):
            raise NotFoundError("; ".join(str(e) for _, e in problems), reason="UNKNOWN_MODEL")
        raise UnavailableError(
            "no inference server is reachable: " + "; ".join(str(e) for _, e in problems), reason="UNREACHABLE"
        )

    async def _connect_rubric(self) -> None:
        from ..rubric.client import RubricClient

        wanted = sorted({lane.config.rubric for lane in self.lanes.values() if lane.config.rubric})
        if self.rubric_address is None and not self.nats_url:
            raise InvalidArgumentError(f"rubric {wanted[0]!r} is set but no rubric server address or NATS URL is given")
        self.rubric = await RubricClient.connect(self.rubric_address, nats_url=self.nats_url)
        try:
            names = [r.name for r in await self.rubric.list_rubrics()]
        except RollmeshError as e:
            raise UnavailableError(f"cannot reach the rubric server at {self.rubric.address}: {e}") from e
        except grpc.aio.AioRpcError as e:
            raise UnavailableError(f"cannot reach the rubric server at {self.rubric.address}: {e.details()}") from e
        for rubric in wanted:
            if rubric not in names:
                raise NotFoundError(
                    f"no rubric {rubric!r} on the rubric server at {self.rubric.address} "
                    f"(known: {', '.join(sorted(names)) or 'none'})",
                    reason="UNKNOWN_RUBRIC",
                )

    def _check_rewards(self, lane: Lane) -> None:
        if lane.config.rubric:
            return
        info = lane.pool.active[0].info
        if not (info.has_score or info.reward_names):
            raise InvalidArgumentError(
                f'environment {info.name!r} reports no rewards and has no Score; name a rubric (rubric = "...")',
                reason="NO_REWARDS",
            )

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.discovery_interval_s)
            try:
                problems = []
                if not self.env_addresses:
                    for lane in self.lanes.values():
                        records = await self._registry_addresses(bus_pb.SERVICE_KIND_ENVIRONMENT, lane.share.name)
                        problems += await lane.pool.sync([r.address for r in records])
                if not self.inference_addresses:
                    from ..inference.server import registry_name

                    name = registry_name(self.config.model) if self.config.model else None
                    records = await self._registry_addresses(bus_pb.SERVICE_KIND_INFERENCE, name)
                    problems += await self.inference_pool.sync([r.address for r in records])
                for address, error in problems:
                    log.warning("registered server %s not added to the pool: %s", address, error)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS reconnecting: keep the pools as they are
                log.warning("registry refresh failed: %r", e)

    async def _served_version(self, refresh: bool) -> int:
        replicas = self.inference_pool.active
        if refresh:

            async def ask(r: InferenceReplica) -> None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    info = await r.stub.GetModelInfo(inf_pb.GetModelInfoRequest(), timeout=CONNECT_TIMEOUT_S)
                    r.policy_version = info.policy_version

            await asyncio.gather(*(ask(r) for r in replicas))
        return max((r.policy_version for r in replicas), default=0)

    # ---- tasks ---------------------------------------------------------------------------------

    async def list_tasks(
        self, split: str | None = None, limit: int = 0, *, env: str | None = None
    ) -> list[msg_pb.Task]:
        """Tasks of an environment of the run (default: the first; split: its configured one unless
        given; limit 0 = all)."""
        if limit < 0:
            raise InvalidArgumentError(f"limit must be >= 0, got {limit}")
        lane = self.lane(env) if env is not None else next(iter(self.lanes.values()))
        request = env_pb.ListTasksRequest(env=lane.share.name, split=split or lane.config.split, page_size=limit)
        tried: list[EnvReplica] = []
        while True:
            replica = lane.pool.pick(tried)
            try:
                tasks: list[msg_pb.Task] = []
                async for response in replica.stub.ListTasks(request, timeout=CONNECT_TIMEOUT_S * 6):
                    tasks.extend(response.tasks)
                return tasks
            except grpc.aio.AioRpcError as e:
                err = error_from_rpc(e)
                if not replica_fault(err) or len(tried) + 1 >= len(lane.pool.active):
                    raise err from e
                lane.pool.failed(replica, err)
                tried.append(replica)

    async def tasks_by_env(self, limit: int = 0) -> dict[str, list[msg_pb.Task]]:
        """Every environment's tasks in its configured split (limit per environment; 0 = all)."""
        return {name: await self.list_tasks(limit=limit, env=name) for name in self.lanes}

    @property
    def weights(self) -> dict[str, float]:
        return {name: lane.share.weight for name, lane in self.lanes.items()}

    def rollouts_per_task(self, task: msg_pb.Task) -> int:
        """The group size of `task` (its environment's)."""
        return self.lane(task.env or self.config.env_names[0]).config.rollouts_per_task

    # ---- running -------------------------------------------------------------------------------

    def group_id_for(self, task: msg_pb.Task, epoch: int | None = None) -> str:
        """The group id of `task`: its `epoch` when given, else its next occurrence in this engine."""
        task = self._with_defaults(task)
        key = (task.env, task.split, task.task_id)
        if epoch is not None:
            return group_id(self.config.run_id, *key, occurrence=epoch)
        n = self._occurrences.get(key, 0)
        self._occurrences[key] = n + 1
        return group_id(self.config.run_id, *key, occurrence=n)

    async def run(
        self,
        tasks: Iterable[TaskItem] | AsyncIterable[TaskItem],
        *,
        skip: Container[str] = (),
        epoch: int | None = None,
    ) -> AsyncIterator[list[traj_pb.Trajectory]]:
        """Yields each task's group once all its rollouts finished, were scored and published.
        A task without `env` or `split` gets the run's (first) environment and its split. Rollouts
        whose trajectory id is in `skip` are not run (a partly skipped group yields only
        the rollouts run now). Stale rollouts dropped by the freshness rule are neither published
        nor yielded (see `stats.stale_dropped`). `epoch` (training: the pass over the data, or the
        step) goes into the group ids, so a restarted trainer's new rollouts of a task are not taken
        for duplicates of an earlier pass; a (task, epoch) pair gives its task's own; without either,
        recurrences are counted per engine."""
        if not self._started:
            raise InvalidArgumentError("start the engine first: `async with RolloutEngine(...) as engine`")
        cfg = self.config
        smallest = min(lane.config.rollouts_per_task for lane in self.lanes.values())
        groups_in_flight = 2 * max(1, -(-cfg.max_concurrency // smallest))
        slots = asyncio.Semaphore(groups_in_flight)
        out: asyncio.Queue[Any] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        producer = asyncio.create_task(
            self._produce(tasks, skip, epoch, slots, out, running), name="rollmesh-scheduler"
        )
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                slots.release()
                if item:
                    self.stats.groups += 1
                    yield item
        finally:
            producer.cancel()
            for t in list(running):
                t.cancel()
            await asyncio.gather(producer, *running, return_exceptions=True)

    async def _produce(
        self,
        tasks: Iterable[TaskItem] | AsyncIterable[TaskItem],
        skip: Container[str],
        epoch: int | None,
        slots: asyncio.Semaphore,
        out: asyncio.Queue[Any],
        running: set[asyncio.Task[None]],
    ) -> None:
        cfg = self.config
        try:
            async for item in _aiter(tasks):
                task, task_epoch = item if isinstance(item, tuple) else (item, epoch)
                task = self._with_defaults(task)
                lane = self.lanes.get(task.env)
                if lane is None:
                    raise InvalidArgumentError(
                        f"task {task.task_id!r} is of environment {task.env!r}, not one of this run's "
                        f"({', '.join(self.lanes)})"
                    )
                gid = self.group_id_for(task, task_epoch)
                todo = []
                for i in range(lane.config.rollouts_per_task):
                    tid = trajectory_id(cfg.run_id, gid, i)
                    if tid in skip:
                        self.stats.skipped += 1
                    else:
                        todo.append(self._rollout(task, gid, tid, i))
                if not todo:
                    continue
                await slots.acquire()
                await self.clock.wait_for_inference(cfg.max_off_policy_steps, self._served_version)
                t = asyncio.create_task(self._group(lane, todo, out), name=f"rollmesh-group:{gid}")
                running.add(t)
                t.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*list(running), return_exceptions=True)
            await out.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await out.put(e)

    def _with_defaults(self, task: msg_pb.Task) -> msg_pb.Task:
        if task.env and task.split:
            return task
        env = task.env or self.config.env_names[0]
        lane = self.lanes.get(env)
        return _with_defaults(task, env, lane.config.split if lane is not None else self.config.split)

    def _rollout(self, task: msg_pb.Task, gid: str, tid: str, index: int) -> Rollout:
        base = self.config.sampling.seed
        derived = _seed_of(tid)
        seed = derived if base is None else (base + derived) & 0x7FFFFFFF
        return Rollout(
            task=task,
            group_id=gid,
            trajectory_id=tid,
            index=index,
            seed=seed,
            sampling_seed=None if base is None else seed,
        )

    async def _group(self, lane: Lane, rollouts: list[Rollout], out: asyncio.Queue[Any]) -> None:
        try:
            outcomes = await asyncio.gather(*(self._episode(lane, r) for r in rollouts))
            await out.put(await self._finalize(lane, list(outcomes)))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await out.put(e)

    async def _episode(self, lane: Lane, rollout: Rollout) -> EpisodeOutcome:
        async with self._episodes:
            self.stats.started += 1
            self.stats.env(lane.share.name).started += 1
            return await lane.runner.run(rollout)

    # ---- after a group: freshness, scoring, publishing --------------------------------------

    async def _finalize(self, lane: Lane, outcomes: list[EpisodeOutcome]) -> list[traj_pb.Trajectory]:
        try:
            return await self._score_and_publish(lane, outcomes)
        finally:
            for o in outcomes:
                o.end_span()  # the rollout spans were left open for scoring and publishing

    async def _score_and_publish(self, lane: Lane, outcomes: list[EpisodeOutcome]) -> list[traj_pb.Trajectory]:
        cfg = lane.config
        per_env = self.stats.env(lane.share.name)
        current = await self.clock.current()
        kept: list[EpisodeOutcome] = []
        for o in outcomes:
            t = o.trajectory
            if current is not None and t.stop_reason != traj_pb.STOP_REASON_ERROR:
                verdict = judge(t, current, cfg.max_off_policy_steps, cfg.stale_policy)
                if verdict == "drop":
                    self.stats.stale_dropped += 1
                    per_env.stale_dropped += 1
                    o.end_span(dropped="stale")
                    continue
                if verdict == "downweight":
                    self.stats.downweighted += 1
            kept.append(o)
        if not kept:
            return []
        publisher = self.publisher if cfg.publish else None
        if publisher is not None:
            max_payload = publisher.nc.max_payload
            for o in kept:
                t = o.trajectory
                if t.stop_reason != traj_pb.STOP_REASON_ERROR and t.ByteSize() > max_payload - PAYLOAD_MARGIN_BYTES:
                    fail(
                        o,
                        "orchestrator",
                        ResourceExhaustedError(
                            f"the trajectory is {t.ByteSize()} bytes, over what fits in a NATS message "
                            f"({max_payload} bytes max_payload); raise max_payload or shorten episodes",
                            reason="PAYLOAD_TOO_LARGE",
                        ),
                    )
        t0 = time.perf_counter()
        if cfg.rubric:
            await score_with_rubric(kept, self.rubric, cfg)
        else:
            await score_with_env(kept, lane.pool, cfg)
        scoring_s = time.perf_counter() - t0
        self.stats.scoring_s += scoring_s
        trajectories = [o.trajectory for o in kept]
        for t in trajectories:
            t.timing.scoring_s = scoring_s
        if publisher is not None:
            t0 = time.perf_counter()
            await asyncio.gather(*(self._publish(publisher, o) for o in kept))
            self.stats.publish_s += time.perf_counter() - t0
        for t in trajectories:
            if t.stop_reason == traj_pb.STOP_REASON_ERROR:
                self.stats.error(error_reason(t.error))
                per_env.errored += 1
            else:
                self.stats.finished += 1
                per_env.finished += 1
                per_env.reward_sum += t.reward
        return trajectories

    async def _publish(self, publisher: bus.Publisher, o: EpisodeOutcome) -> None:
        with o.in_span():  # the publish, and so the message's traceparent, in the rollout's trace
            await publish(publisher, o.trajectory, self.stats)


def _with_defaults(task: msg_pb.Task, env: str, split: str) -> msg_pb.Task:
    copy = msg_pb.Task()
    copy.CopyFrom(task)
    copy.env = copy.env or env
    copy.split = copy.split or split
    return copy


__all__ = ["Lane", "RolloutEngine", "TaskItem", "group_id", "trajectory_id"]
