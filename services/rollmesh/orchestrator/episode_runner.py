"""One rollout: an environment's Episode stream driven by model calls, recorded as a Trajectory.

The loop: start the episode on an environment replica, ask the model (first turn: the prompt and
tools rendered once into token ids by the inference server's chat template, shared by the rollouts
of a group; later turns: Generate's `next_turn`, the previous call's exact tokens plus the
environment's reply, rendered by the server, see inference/turns.py), send its message as the
action, append the environment's reply, until the environment says done. Every model call's
tokens, logprobs and policy version are stored as the inference server returned them.

Failures: an environment replica that dies or stalls (stream error, step timeout, draining, full)
makes the whole episode run again on another replica, up to `max_attempts` runs; a failing
inference replica makes the one model call go to another replica. What cannot finish becomes an
errored trajectory (STOP_REASON_ERROR, `error` = which component, status code, reason), never a
reward.

Tracing: each rollout is one trace, rooted at its `rollout` span. The span stays open after the
episode until the engine has scored and published the trajectory (EpisodeOutcome.end_span), so
the Score call and the publish, whose NATS headers carry the trace on to the trainer, are in it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from opentelemetry import trace

from .. import __version__
from ..env.stream import EpisodeStream
from ..errors import (
    DeadlineExceededError,
    InternalError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
)
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import messages_pb2 as msg_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rpc_errors import error_from_rpc, status_for
from ..telemetry import tracer, tracing_enabled
from .config import RolloutConfig
from .interception import InterceptionEndpoint
from .routing import EnvReplica, InferenceReplica, ReplicaPool
from .run_episode import plays_run_episode, run_agent_episode
from .stats import RolloutStats
from .text_episode import run_text_episode, text_only
from .toolcalls import assistant_message

log = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 1024  # distinct opening prompts kept as token ids

# Errors after which another replica may well succeed (the failed one is benched).
T = TypeVar("T")
_REPLICA_FAULTS = (UnavailableError, DeadlineExceededError, ResourceExhaustedError)


@dataclass(frozen=True)
class Rollout:
    """One rollout the engine wants: which task, its identity in the run, its seed."""

    task: msg_pb.Task
    group_id: str
    trajectory_id: str
    index: int
    seed: int
    sampling_seed: int | None


@dataclass
class EpisodeOutcome:
    trajectory: traj_pb.Trajectory
    has_reward: bool = False  # the environment reported rewards inline
    env: EnvReplica | None = None  # the replica that ran it (for its Score RPC)
    inference: InferenceReplica | None = None
    span: trace.Span | None = None  # the open `rollout` span (None with tracing off)

    def record_call(self, generated: inf_pb.GenerateResponse, stats: RolloutStats, *, token_ids: bool = True) -> None:
        """One model call as the trajectory's next turn (its tokens, logprobs and policy version as
        the inference server returned them; text-only models give no ids), counted in `stats`."""
        sample = generated.samples[0]
        t = self.trajectory
        if token_ids:
            t.turns.add(
                prompt_ids=generated.prompt_ids,
                completion_ids=sample.completion_ids,
                completion_logprobs=sample.logprobs,
                completion_mask=[1] * len(sample.completion_ids),
                finish_reason=sample.finish_reason,
                policy_version=sample.policy_version,
            )
            stats.prompt_tokens += len(generated.prompt_ids)
            stats.completion_tokens += len(sample.completion_ids)
        else:
            t.turns.add(finish_reason=sample.finish_reason, policy_version=sample.policy_version)
            stats.prompt_tokens += generated.usage.prompt_tokens
            stats.completion_tokens += generated.usage.completion_tokens
        if len(t.turns) == 1:
            t.provenance.model = generated.model
            t.provenance.policy_version = sample.policy_version
        stats.model_calls += 1

    def record_done(self, step: env_pb.Step) -> None:
        """The environment's final step: stop reason, inline rewards, metrics and state."""
        t = self.trajectory
        t.stop_reason = step.stop_reason or traj_pb.STOP_REASON_DONE
        if step.has_reward:
            t.rewards.update(step.rewards)
            t.reward = step.reward
            self.has_reward = True
        t.metrics.update(step.metrics)
        if step.HasField("state"):
            t.state.CopyFrom(step.state)

    def record_replica(self, replica: InferenceReplica | None) -> None:
        """The inference replica that served the episode (its last one, after any rerouting)."""
        self.inference = replica
        if replica is not None:
            self.trajectory.provenance.inference_address = replica.address
            self.trajectory.provenance.endpoint = replica.endpoint

    def in_span(self) -> AbstractContextManager[object]:
        """Makes the rollout's span current again (for scoring and publishing), leaving it open."""
        return nullcontext() if self.span is None else trace.use_span(self.span, end_on_exit=False)

    def end_span(self, *, dropped: str = "") -> None:
        """Ends the rollout's span with the outcome (idempotent). `dropped`: why it is not published."""
        span, self.span = self.span, None
        if span is None:
            return
        t = self.trajectory
        span.set_attribute("rollmesh.stop_reason", traj_pb.StopReason.Name(t.stop_reason))
        if self.has_reward:
            span.set_attribute("rollmesh.reward", t.reward)
        if dropped:
            span.set_attribute("rollmesh.dropped", dropped)
        if t.stop_reason == traj_pb.STOP_REASON_ERROR:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error_reason(t.error)))
        span.end()


class RolloutFailure(Exception):
    """An episode failed because of `source` ("environment", "inference", "orchestrator")."""

    def __init__(self, source: str, error: BaseException, *, replica_fault: bool = False) -> None:
        super().__init__(str(error))
        self.source = source
        self.error = error
        self.replica_fault = replica_fault


def error_pb(source: str, error: BaseException, *, retryable: bool | None = None) -> traj_pb.Error:
    """Trajectory.Error: the gRPC code, "REASON: message", the component, whether a retry may help."""
    if isinstance(error, RollmeshError):
        code, reason = status_for(error).value[0], error.reason
        text = f"{reason}: {error}"
    elif isinstance(error, grpc.aio.AioRpcError):
        code, reason = error.code().value[0], error.code().name
        text = f"{reason}: {error.details()}"
    elif isinstance(error, TimeoutError):
        code, reason = grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "DEADLINE_EXCEEDED"
        text = f"{reason}: {error}"
    else:
        code, reason = grpc.StatusCode.INTERNAL.value[0], "INTERNAL"
        text = f"{reason}: {type(error).__name__}: {error}"
    if retryable is None:
        retryable = replica_fault(error) or isinstance(error, TimeoutError)
    return traj_pb.Error(code=code, message=text[:2000], source=source, retryable=retryable, reason=reason)


def error_reason(error: traj_pb.Error) -> str:
    return error.reason or (error.message.split(":", 1)[0] if error.message else "ERROR")


# Statuses without a domain error come back as raw AioRpcErrors; these ones are transport or
# server trouble, worth another replica (UNIMPLEMENTED, PERMISSION_DENIED, ... are not).
_TRANSIENT_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED})


def replica_fault(error: BaseException) -> bool:
    """True when another replica may well succeed where this error happened."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in _TRANSIENT_CODES
    return isinstance(error, _REPLICA_FAULTS)


class EpisodeRunner:
    def __init__(
        self,
        config: RolloutConfig,
        env_pool: ReplicaPool[EnvReplica],
        inference_pool: ReplicaPool[InferenceReplica],
        stats: RolloutStats,
        intercept: InterceptionEndpoint | None = None,
    ) -> None:
        self.config = config
        # RunEpisode episodes' model calls (shared by the engine's runners; started on first use)
        self.intercept = intercept or InterceptionEndpoint(config.intercept)
        self.env_pool = env_pool
        self.inference_pool = inference_pool
        self.stats = stats
        self._prompts: dict[bytes, asyncio.Future[inf_pb.TokenInput]] = {}
        self._tracer = tracer("rollmesh.orchestrator") if tracing_enabled() else None

    # ---- one rollout, with retries -----------------------------------------------------------

    async def run(self, rollout: Rollout) -> EpisodeOutcome:
        """Runs the episode. With tracing, the outcome's `rollout` span is still open: the caller
        ends it (end_span) once the trajectory is published or dropped."""
        if self._tracer is None:
            return await self._run(rollout, os.urandom(16).hex())
        span = self._tracer.start_span(
            "rollout", attributes={"rollmesh.trajectory_id": rollout.trajectory_id, "rollmesh.env": rollout.task.env}
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                ctx = span.get_span_context()
                outcome = await self._run(
                    rollout, format(ctx.trace_id, "032x") if ctx.is_valid else os.urandom(16).hex()
                )
        except BaseException:
            span.end()
            raise
        outcome.span = span
        return outcome

    async def _run(self, rollout: Rollout, trace_id: str) -> EpisodeOutcome:
        cfg = self.config
        started_wall = time.time()
        t0 = time.perf_counter()
        tried: list[EnvReplica] = []
        failure: RolloutFailure | None = None
        outcome = EpisodeOutcome(self._new_trajectory(rollout, trace_id, started_wall))
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                replica = await self.env_pool.acquire(tried, cfg.replica_wait_s)
            except UnavailableError as e:
                failure = failure or RolloutFailure("environment", e)
                break
            if attempt > 1:
                self.stats.retried += 1
            outcome = EpisodeOutcome(self._new_trajectory(rollout, trace_id, started_wall), env=replica)
            outcome.trajectory.attempts = attempt
            try:
                async with asyncio.timeout(cfg.episode_timeout_s):
                    await self._episode(rollout, replica, outcome)
                self.env_pool.succeeded(replica)
                failure = None
                break
            except RolloutFailure as f:
                failure = f
                if f.replica_fault and f.source == "environment":
                    self.env_pool.failed(replica, f.error)
                    tried.append(replica)
                    continue
                break
            except TimeoutError:
                failure = RolloutFailure(
                    "orchestrator",
                    DeadlineExceededError(
                        f"the episode did not finish within episode_timeout_s={cfg.episode_timeout_s:g}",
                        reason="EPISODE_TIMEOUT",
                    ),
                )
                break
            except asyncio.CancelledError:
                raise
            except RollmeshError as e:  # raised here, not by a service call: not a replica's fault
                failure = RolloutFailure("orchestrator", e)
                break
            except Exception as e:  # a bug here must not kill the run: the rollout is an error
                log.exception("rollout %s failed in the orchestrator", rollout.trajectory_id)
                failure = RolloutFailure("orchestrator", InternalError(f"{type(e).__name__}: {e}"))
                break
            finally:
                self.env_pool.release(replica)
        traj = outcome.trajectory
        if failure is not None:
            traj.stop_reason = traj_pb.STOP_REASON_ERROR
            traj.error.CopyFrom(error_pb(failure.source, failure.error))
            traj.advantage = 0.0
            outcome.has_reward = False
        traj.timing.total_s = time.perf_counter() - t0
        return outcome

    def _new_trajectory(self, rollout: Rollout, trace_id: str, started_wall: float) -> traj_pb.Trajectory:
        traj = traj_pb.Trajectory(
            trajectory_id=rollout.trajectory_id,
            group_id=rollout.group_id,
            run_id=self.config.run_id,
            task=rollout.task,
        )
        traj.timing.started_at.FromNanoseconds(int(started_wall * 1e9))
        p = traj.provenance
        p.seed = rollout.seed
        p.rollmesh_version = __version__
        p.trace_id = trace_id
        p.sampling.CopyFrom(self.config.sampling.to_pb(rollout.sampling_seed))
        return traj

    # ---- one attempt on one environment replica -------------------------------------------------

    async def _episode(self, rollout: Rollout, env: EnvReplica, outcome: EpisodeOutcome) -> None:
        cfg = self.config
        traj = outcome.trajectory
        timing = traj.timing
        p = traj.provenance
        p.env_name, p.env_version, p.env_digest, p.env_address = (
            env.info.name,
            env.info.version,
            env.info.digest,
            env.address,
        )
        start = env_pb.StartEpisode(
            env=rollout.task.env or cfg.env,
            task_id=rollout.task.task_id,
            split=rollout.task.split,
            seed=rollout.seed,
            episode_id=f"{rollout.trajectory_id}.{traj.attempts}",
        )
        if cfg.env_options:
            start.options.update(cfg.env_options)
        if plays_run_episode(cfg.episode_mode, env.info):  # the environment's own agent loop
            return await run_agent_episode(self, rollout, env, outcome, start, _ModelState())
        if text_only(self):  # a model without token ids: chat messages each turn
            return await run_text_episode(self, rollout, env, outcome, start, _ModelState())
        # The stream's deadline is a backstop; the episode timeout around the attempt fires first.
        stream = EpisodeStream(env.stub, timeout_s=cfg.episode_timeout_s + 5.0, step_timeout_s=cfg.step_timeout_s)
        done = False
        try:
            started = await self._env_call(stream.start(start), timing)
            traj.messages.extend(started.messages)
            tools = started.tools
            sampling = p.sampling
            state = _ModelState()
            request = self._request(rollout, sampling)
            request.tokens.CopyFrom(await self._first_prompt(state, traj.messages, tools, timing))
            turn_index = 0
            while True:
                turn_index += 1
                if rollout.sampling_seed is not None:
                    request.sampling.seed = (rollout.sampling_seed + turn_index) % (2**63)
                try:
                    generated = await self._generate(state, request, timing)
                except RolloutFailure as f:
                    if turn_index == 1 or getattr(f.error, "reason", "") != "PROMPT_TOO_LONG":
                        raise
                    # The conversation outgrew the model's context: a truncated episode, not an error.
                    traj.stop_reason = traj_pb.STOP_REASON_LENGTH
                    traj.metrics["context_exhausted"] = 1.0
                    break
                sample = generated.samples[0]
                outcome.record_call(generated, self.stats)
                action = assistant_message(sample.text, list(sample.tool_calls), call_prefix=f"call_{turn_index}")
                step = await self._env_call(stream.act(action), timing)
                traj.messages.append(action)
                traj.messages.extend(step.messages)
                if step.done:
                    done = True
                    outcome.record_done(step)
                    break
                # the next call continues this one's exact tokens; the server renders the reply
                turn = traj.turns[-1]
                request = self._request(rollout, sampling)
                nt = request.next_turn
                nt.prompt_ids.extend(turn.prompt_ids)
                nt.completion_ids.extend(turn.completion_ids)
                nt.assistant.CopyFrom(action)
                nt.messages.extend(step.messages)
        except BaseException:
            stream.end()
            raise
        outcome.record_replica(state.replica)
        if done:
            await stream.finish()
        else:
            stream.end()

    def _request(self, rollout: Rollout, sampling: msg_pb.SamplingParams) -> inf_pb.GenerateRequest:
        request = inf_pb.GenerateRequest(sampling=sampling, session_id=rollout.trajectory_id)
        if self.config.model:
            request.model = self.config.model
        return request

    async def _env_call(self, exchange: Awaitable[T], timing: traj_pb.Timing) -> T:
        """One exchange with the environment, timed; its errors as the environment's fault."""
        t0 = time.perf_counter()
        try:
            return await exchange
        except RollmeshError as e:
            raise RolloutFailure("environment", e, replica_fault=replica_fault(e)) from e
        finally:
            elapsed = time.perf_counter() - t0
            timing.environment_s += elapsed
            self.stats.environment_s += elapsed

    # ---- model calls: sticky, rerouted on replica failure -----------------------------------------

    async def _generate(
        self, state: _ModelState, request: inf_pb.GenerateRequest, timing: traj_pb.Timing
    ) -> inf_pb.GenerateResponse:
        t0 = time.perf_counter()
        try:
            response = await self._infer(state, "Generate", request)
        finally:
            elapsed = time.perf_counter() - t0
            timing.generation_s += elapsed
            self.stats.generation_s += elapsed
        if not response.samples:
            raise RolloutFailure("inference", InternalError("the inference server returned no sample"))
        assert state.replica is not None
        state.replica.policy_version = max(state.replica.policy_version, response.samples[0].policy_version)
        return response

    async def _first_prompt(
        self, state: _ModelState, messages: Sequence[msg_pb.Message], tools: Sequence[msg_pb.ToolSpec], timing
    ) -> inf_pb.TokenInput:
        """Token ids of the opening prompt, rendered by the inference server's chat template once per
        distinct (messages, tools): the rollouts of a group, and a task seen again, share the
        rendering instead of each Generate rendering it anew. Kept as a message: copying it into a
        request is a copy in C."""
        req = inf_pb.TokenizeRequest()
        req.chat.messages.extend(messages)
        req.chat.tools.extend(tools)
        # as Generate does: an opening that ends with an assistant message is continued
        req.chat.add_generation_prompt = not (messages and messages[-1].role == "assistant")
        key = req.SerializeToString(deterministic=True)
        while True:
            future = self._prompts.get(key)
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._prompts[key] = future
                if len(self._prompts) > PROMPT_CACHE_SIZE:
                    del self._prompts[next(iter(self._prompts))]  # the oldest
                try:
                    ids = inf_pb.TokenInput(prompt_ids=await self._tokenize(state, req, timing))
                except asyncio.CancelledError:
                    self._prompts.pop(key, None)
                    future.cancel()  # the waiters render it themselves
                    raise
                except BaseException as e:
                    self._prompts.pop(key, None)  # not kept: a later rollout asks again
                    future.set_exception(e)
                    future.exception()  # retrieved: the waiters re-raise it, asyncio need not warn
                    raise
                future.set_result(ids)
                return ids
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if future.cancelled() and task is not None and not task.cancelling():
                    continue  # the rollout rendering it was cancelled, not this one
                raise

    async def _tokenize(
        self, state: _ModelState, request: inf_pb.TokenizeRequest, timing: traj_pb.Timing
    ) -> Sequence[int]:
        t0 = time.perf_counter()
        try:
            return (await self._infer(state, "Tokenize", request)).token_ids
        finally:
            elapsed = time.perf_counter() - t0
            timing.generation_s += elapsed
            self.stats.generation_s += elapsed

    async def _infer(self, state: _ModelState, method: str, request: object):
        pool = self.inference_pool
        for _ in range(self.config.max_attempts):
            if state.replica is None or state.replica.retired:
                try:
                    state.replica = await pool.pick_healthy(state.failed, self.config.replica_wait_s)
                except UnavailableError as e:
                    raise RolloutFailure("inference", e) from e
            replica = state.replica
            replica.inflight += 1
            try:
                response = await getattr(replica.stub, method)(request, timeout=self.config.inference_timeout_s)
                pool.succeeded(replica)
                return response
            except grpc.aio.AioRpcError as e:
                err = error_from_rpc(e)
                if not replica_fault(err):
                    raise RolloutFailure("inference", err) from e
                pool.failed(replica, err)
                state.failed.append(replica)
                state.replica = None
                self.stats.rerouted += 1
                last: BaseException = err
            finally:
                replica.inflight -= 1
        raise RolloutFailure("inference", last)


@dataclass
class _ModelState:
    """The episode's sticky inference replica and the replicas that failed it."""

    replica: InferenceReplica | None = None
    failed: list[InferenceReplica] = field(default_factory=list)
