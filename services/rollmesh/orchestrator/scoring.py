"""Rewards and advantages of a finished group: the environment's own (inline rewards, else its
Score RPC) with group-relative advantages computed here, or a named rubric on the rubric service.
Errored rollouts get no reward and no advantage weight, and stay out of the group's baseline."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from ..advantages import group_advantages
from ..errors import RollmeshError, UnavailableError
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rpc_errors import error_from_rpc
from ..telemetry import start_span
from .config import RolloutConfig
from .episode_runner import EpisodeOutcome, error_pb, replica_fault
from .routing import EnvReplica, ReplicaPool


async def score_with_env(outcomes: list[EpisodeOutcome], env_pool: ReplicaPool[EnvReplica], cfg: RolloutConfig) -> None:
    """The environment's inline rewards, else its Score RPC; advantages within the group."""

    async def score(o: EpisodeOutcome) -> None:
        t = o.trajectory
        if t.stop_reason == traj_pb.STOP_REASON_ERROR or o.has_reward:
            return
        with o.in_span():  # the Score call belongs to the rollout's trace
            await score_one(o, t)

    async def score_one(o: EpisodeOutcome, t: traj_pb.Trajectory) -> None:
        request = env_pb.ScoreRequest(env=t.task.env, task=t.task, messages=t.messages, state=t.state)
        tried: list[EnvReplica] = []
        for _ in range(cfg.max_attempts):
            try:
                replica = o.env if o.env is not None and not tried and not o.env.retired else env_pool.pick(tried)
            except UnavailableError as e:
                fail(o, "environment", e)
                return
            try:
                response = await replica.stub.Score(request, timeout=cfg.step_timeout_s)
            except grpc.aio.AioRpcError as e:
                err = error_from_rpc(e)
                if replica_fault(err):
                    env_pool.failed(replica, err)
                    tried.append(replica)
                    continue
                fail(o, "environment", err)
                return
            t.rewards.update(response.rewards)
            t.reward = response.reward
            t.metrics.update(response.metrics)
            o.has_reward = True
            return
        fail(o, "environment", UnavailableError("Score failed on every environment replica tried"))

    await asyncio.gather(*(score(o) for o in outcomes))
    rewards = [o.trajectory.reward if o.has_reward else None for o in outcomes]
    advantages = group_advantages(rewards, normalize_std=cfg.normalize_advantages, leave_one_out=cfg.leave_one_out)
    for o, a in zip(outcomes, advantages, strict=True):
        o.trajectory.advantage = a


async def score_with_rubric(outcomes: list[EpisodeOutcome], rubric: Any, cfg: RolloutConfig) -> None:
    """ScoreGroup on the rubric service: its rewards replace the environment's; its advantages
    leave errored rollouts out. A scoring outage makes the group's rollouts errors (source rubric).
    One call scores the whole group, so its `score_group` span is linked to each rollout's trace."""
    trajectories = [o.trajectory for o in outcomes]
    last: BaseException | None = None
    results: list[Any] = []
    advantages: list[float] = []
    links = [o.span.get_span_context() for o in outcomes if o.span is not None]
    with start_span(
        "score_group", instrumentation="rollmesh.orchestrator", links=links, attributes={"rollmesh.rubric": cfg.rubric}
    ):
        for attempt in range(cfg.max_attempts):
            try:
                results, advantages = await rubric.score_group(cfg.rubric, trajectories)
                break
            except (RollmeshError, grpc.aio.AioRpcError) as e:
                last = e
                if not replica_fault(e):
                    break
                await asyncio.sleep(0.2 * 2**attempt)
    if not results:
        for o in outcomes:
            if o.trajectory.stop_reason != traj_pb.STOP_REASON_ERROR:
                fail(o, "rubric", last or UnavailableError("the rubric service returned nothing"))
        return
    for o, result, advantage in zip(outcomes, results, advantages, strict=True):
        t = o.trajectory
        if t.stop_reason == traj_pb.STOP_REASON_ERROR:
            t.advantage = 0.0
            continue
        t.rewards.clear()
        t.rewards.update(result.rewards)
        t.reward = result.reward
        t.metrics.update(result.metrics)
        if result.errors:
            t.metrics["rubric_errors"] = float(len(result.errors))
        t.advantage = advantage


def fail(o: EpisodeOutcome, source: str, error: BaseException) -> None:
    """Marks a rollout as errored: no reward, no advantage weight."""
    t = o.trajectory
    t.stop_reason = traj_pb.STOP_REASON_ERROR
    t.error.CopyFrom(error_pb(source, error))
    t.advantage = 0.0
    o.has_reward = False
