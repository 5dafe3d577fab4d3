"""One rollout played by the environment itself (RunEpisode, docs/protocol.md section 7): its own
agent loop (a function, an external agent program) calls the model through the run's interception
endpoint, and every call is recorded here, token for token, as one of the trajectory's turns.

The environment gets the endpoint's base URL and a fresh session key; each intercepted call goes
through the runner's sticky, rerouting `_generate` (chat messages and tools, rendered by the
inference server, with the run's sampling and logprobs), so the turns are exactly what the
inference server produced, like a stream episode's. The environment's answer gives the
conversation, rewards, metrics, stop reason and state.

Failures: the RunEpisode call's errors are the environment's (a replica fault reruns the episode
elsewhere, as for a stream); a model call that failed behind the endpoint makes the rollout an
inference error even if the agent carried on, since the episode did not get its model. EpisodeRunner
dispatches here (`plays_run_episode`); retries are its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ..errors import InternalError, RollmeshError, UnimplementedError
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rpc_errors import error_from_rpc
from .interception import http_status

if TYPE_CHECKING:
    from .episode_runner import EpisodeOutcome, EpisodeRunner, Rollout
    from .routing import EnvReplica

T = TypeVar("T")
DEFAULT_MAX_CALLS = 64  # when the environment states no max_turns


def plays_run_episode(mode: str, info: env_pb.EnvironmentInfo) -> bool:
    """Whether a rollout of this environment goes through RunEpisode (rollout.episode_mode)."""
    if mode == "stream":
        return False
    if mode == "run_episode" and not info.has_run_episode:
        raise UnimplementedError(
            f"rollout.episode_mode is run_episode but environment {info.name!r} does not offer RunEpisode "
            "(has_run_episode is false); use episode_mode = auto or stream"
        )
    return info.has_run_episode


async def _domain_errors(call: Awaitable[T]) -> T:
    """A gRPC call whose failures arrive as domain errors (what the runner's _env_call expects)."""
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        raise error_from_rpc(e) from e


def _as_domain(error: BaseException) -> RollmeshError:
    """The domain error inside the runner's RolloutFailure (or the error itself)."""
    inner = getattr(error, "error", error)
    if isinstance(inner, RollmeshError):
        return inner
    return InternalError(f"the model call failed: {type(inner).__name__}: {inner}")


async def run_agent_episode(
    runner: EpisodeRunner,
    rollout: Rollout,
    env: EnvReplica,
    outcome: EpisodeOutcome,
    start: env_pb.StartEpisode,
    state: Any,
) -> None:
    """The episode on `env` through RunEpisode; `state` is the runner's sticky inference replica."""
    cfg = runner.config
    traj = outcome.trajectory
    timing = traj.timing
    p = traj.provenance
    endpoint = await runner.intercept.ensure_started()
    failures: list[BaseException] = []  # model calls that failed behind the endpoint

    async def generate(request: inf_pb.GenerateRequest) -> inf_pb.GenerateResponse:
        request.session_id = rollout.trajectory_id  # the same replica for the whole episode
        if rollout.sampling_seed is not None:
            request.sampling.seed = (rollout.sampling_seed + len(traj.turns) + 1) % (2**63)
        try:
            response = await runner._generate(state, request, timing)
        except Exception as e:
            error = _as_domain(e)
            if http_status(error) >= 500:  # not the agent's fault (a prompt too long is)
                failures.append(e)
            raise error from e
        outcome.record_call(response, runner.stats)
        if state.replica is not None and not state.replica.token_ids:
            p.text_only = True  # a model without token ids: scored and reported, never trained
        return response

    max_calls = cfg.intercept.max_calls or env.info.max_turns or DEFAULT_MAX_CALLS
    session = endpoint.open(generate, p.sampling, model=cfg.model, max_calls=max_calls)
    request = env_pb.RunEpisodeRequest(
        start=start,
        model=cfg.model,
        sampling=p.sampling,
        openai_base_url=endpoint.base_url,
        session_key=session.key,
    )
    generation_before = timing.generation_s
    t0 = time.perf_counter()
    span = runner._tracer.start_as_current_span("run_episode") if runner._tracer is not None else nullcontext()
    try:
        with span:
            # The call's deadline is a backstop; the episode timeout around the attempt fires first.
            call = env.stub.RunEpisode(request, timeout=cfg.episode_timeout_s + 5.0)
            response = await runner._env_call(_domain_errors(call), timing)
    except Exception:
        if failures:  # the agent failed because its model did: the model's failure is the cause
            raise failures[0] from None
        raise
    finally:
        endpoint.close(session)  # the key dies with the episode, however it ends
        # _env_call timed the whole episode; the model's share of it is generation time
        model_s = min(timing.generation_s - generation_before, time.perf_counter() - t0)
        timing.environment_s -= model_s
        runner.stats.environment_s -= model_s
    outcome.record_replica(state.replica)
    if failures:
        raise failures[0]
    played = response.trajectory
    traj.messages.extend(played.messages)
    traj.stop_reason = played.stop_reason or traj_pb.STOP_REASON_DONE
    if traj.stop_reason == traj_pb.STOP_REASON_ERROR:
        traj.stop_reason = traj_pb.STOP_REASON_DONE  # an error is a status, never a played outcome
    if played.rewards:
        traj.rewards.update(played.rewards)
        traj.reward = played.reward
        outcome.has_reward = True
    traj.metrics.update(played.metrics)
    traj.metrics["model_calls"] = float(len(traj.turns))
    if played.HasField("state"):
        traj.state.CopyFrom(played.state)
