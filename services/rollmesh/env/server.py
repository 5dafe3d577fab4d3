"""The environment server: a thin gRPC adapter over `Environment` and `Episode`.

One Episode stream = one episode; RunEpisode = one episode the environment plays itself
(`Environment.run_episode`, its agent calling the caller's OpenAI-compatible endpoint).

Limits: concurrent episodes (RESOURCE_EXHAUSTED beyond), an idle timeout per episode
(DEADLINE_EXCEEDED when the client goes quiet), a whole RunEpisode's time, the client's own
deadline, and message sizes (enforced by gRPC, see rpc.RpcLimits).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError

from .. import PROTOCOL_VERSION, __version__, convert
from ..errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
    UnimplementedError,
    clip,
    quoted,
)
from ..hosting import HostedServer
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import environment_pb2_grpc as env_grpc
from ..proto.v1 import messages_pb2 as msg_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..registry import record_for
from ..rpc import RpcLimits, create_server
from ..rpc_errors import abort
from .agent import AgentContext, EpisodeResult
from .environment import Environment
from .episode import Episode
from .idle import IdleWatch
from .program import ProgramFailed
from .rubric import reward_context

log = logging.getLogger(__name__)

SERVICE_NAME = env_pb.DESCRIPTOR.services_by_name["EnvironmentService"].full_name
KINDS = {
    "single_turn": env_pb.ENVIRONMENT_KIND_SINGLE_TURN,
    "multi_turn": env_pb.ENVIRONMENT_KIND_MULTI_TURN,
    "tool": env_pb.ENVIRONMENT_KIND_TOOL,
}
LIST_BATCH = 64  # tasks per ListTasks message


@dataclass(frozen=True)
class EpisodeLimits:
    max_concurrent_episodes: int = 1024
    idle_timeout_s: float = 300.0
    run_timeout_s: float = 1800.0  # one RunEpisode, whole; 0 = only the caller's deadline


ENDPOINT_PROBE_S = 5.0  # how long RunEpisode waits to reach the model endpoint before UNAVAILABLE


def weighted_reward(env: Environment, rewards: dict[str, float]) -> float:
    """The scalar reward: the rubric's weights (1.0 for a name it does not know)."""
    weights = dict(zip(env.rubric.names, env.rubric.weights, strict=True)) if env.rubric else {}
    return sum(v * weights.get(k, 1.0) for k, v in rewards.items())


def sampling_dict(pb: msg_pb.SamplingParams) -> dict[str, Any]:
    """The run's sampling, as an agent would pass it to a chat call (informational: the caller
    applies it to every call anyway)."""
    out: dict[str, Any] = {"temperature": pb.temperature, "top_p": pb.top_p or 1.0}
    if pb.max_tokens:
        out["max_tokens"] = pb.max_tokens
    if pb.stop:
        out["stop"] = list(pb.stop)
    return out


def check_endpoint(request: env_pb.RunEpisodeRequest) -> str:
    """The request's OpenAI-compatible base URL, validated (this SDK calls no gRPC inference itself)."""
    url = request.openai_base_url.rstrip("/")
    if not url:
        detail = " (inference_address alone is for environments that call gRPC inference themselves)"
        raise InvalidArgumentError(
            "RunEpisode needs openai_base_url: the caller's OpenAI-compatible endpoint"
            + (detail if request.inference_address else ""),
            reason="MISSING_FIELD",
            metadata={"field": "openai_base_url"},
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"openai_base_url must be an http(s) URL, got {quoted(url)}",
            reason="INVALID_FIELD",
            metadata={"field": "openai_base_url"},
        )
    if not request.session_key:
        raise InvalidArgumentError(
            "RunEpisode needs the session_key that authorizes this episode's model calls",
            reason="MISSING_FIELD",
            metadata={"field": "session_key"},
        )
    return url


async def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(ENDPOINT_PROBE_S):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _agent_failure(env_name: str, base_url: str, error: Exception) -> RollmeshError:
    """What a failed agent loop means for the caller: its model endpoint unreachable (UNAVAILABLE
    INFERENCE_UNREACHABLE), else the environment's failure (INTERNAL ENVIRONMENT_FAILED, with the
    agent program's stderr tail in the message)."""
    if base_url and not await _reachable(base_url):
        return UnavailableError(
            f"environment {env_name!r}: the model endpoint {clip(base_url, 200)} is unreachable from the "
            "environment server; check the orchestrator's interception address (rollout.intercept)",
            reason="INFERENCE_UNREACHABLE",
        )
    if isinstance(error, ProgramFailed):
        return InternalError(f"environment {env_name!r}: {error}", reason="ENVIRONMENT_FAILED")
    log.warning("run_episode failed in environment %s", env_name, exc_info=error)
    return InternalError(
        f"environment {env_name!r} failed in run_episode(): {type(error).__name__}: {clip(str(error), 2000)}",
        reason="ENVIRONMENT_FAILED",
    )


def page_token(env: str, split: str, offset: int) -> str:
    """An opaque ListTasks page token (spec 5): clients pass it back, never build one."""
    return base64.urlsafe_b64encode(json.dumps([env, split, offset]).encode()).decode().rstrip("=")


def page_offset(token: str, env: str, split: str, total: int) -> int:
    """The offset a page token stands for; INVALID_PAGE_TOKEN unless it came from this listing."""
    if not token:
        return 0
    try:
        got_env, got_split, offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if (got_env, got_split) == (env, split) and isinstance(offset, int) and 0 <= offset <= total:
            return offset
    except (ValueError, TypeError):
        pass
    raise InvalidArgumentError(
        f"invalid page_token {quoted(token)} for {quoted(env)}/{quoted(split)}; pass a previous next_page_token "
        "of the same environment and split",
        reason="INVALID_PAGE_TOKEN",
        metadata={"field": "page_token"},
    )


class EnvironmentServicer(env_grpc.EnvironmentServiceServicer):
    def __init__(
        self,
        envs: Sequence[Environment],
        *,
        limits: EpisodeLimits = EpisodeLimits(),
        max_message_bytes: int = RpcLimits.max_message_bytes,
    ) -> None:
        names = [e.name for e in envs]
        if not envs or len(set(names)) != len(names):
            raise ValueError(f"need at least one environment, with unique names; got {names}")
        self.envs = {e.name: e for e in envs}
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.instance_id = uuid.uuid4().hex[:12]
        self.active = 0
        self.draining = False

    # ---- helpers -----------------------------------------------------------------------------

    def env(self, name: str) -> Environment:
        if not name:
            raise InvalidArgumentError(
                f"no environment named; this server hosts {sorted(self.envs)}",
                reason="NO_ENVIRONMENT",
                metadata={"environments": ",".join(sorted(self.envs))},
            )
        env = self.envs.get(name)
        if env is None:
            raise NotFoundError(
                f"no environment {quoted(name)} on this server; it hosts {sorted(self.envs)}",
                reason="UNKNOWN_ENVIRONMENT",
                metadata={"environments": ",".join(sorted(self.envs))},
            )
        return env

    def describe_env(self, env: Environment) -> env_pb.EnvironmentInfo:
        info = env_pb.EnvironmentInfo(
            name=env.name,
            version=env.version,
            description=env.description,
            kind=KINDS.get(env.kind, env_pb.ENVIRONMENT_KIND_UNSPECIFIED),
            tools=[convert.tool_spec_to_pb(s) for s in env.tool_specs()],
            max_turns=env.max_turns,
            reward_names=env.reward_names,
            has_score=env.has_score,
            digest=env.digest,
            has_run_episode=env.has_run_episode,
            default_split=env.default_split,
        )
        info.splits.update({k: len(v) for k, v in env.splits.items()})
        for key in ("temperature", "top_p", "top_k", "max_tokens"):
            if key in env.sampling:
                setattr(info.default_sampling, key, env.sampling[key])
        return info

    # ---- RPCs --------------------------------------------------------------------------------

    async def Describe(
        self, request: env_pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> env_pb.DescribeResponse:
        return env_pb.DescribeResponse(
            server=env_pb.ServerInfo(
                protocol_version=PROTOCOL_VERSION,
                language="python",
                sdk_version=f"rollmesh-python {__version__}",
                instance_id=self.instance_id,
            ),
            environments=[self.describe_env(e) for e in self.envs.values()],
            limits=env_pb.ServerLimits(
                max_concurrent_episodes=self.limits.max_concurrent_episodes,
                max_message_bytes=self.max_message_bytes,
                episode_idle_timeout_s=self.limits.idle_timeout_s,
            ),
            active_episodes=self.active,
        )

    async def ListTasks(
        self, request: env_pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[env_pb.ListTasksResponse]:
        try:
            env = self.env(request.env)
            split = request.split or env.default_split
            tasks = env.tasks(split)
            if request.page_size < 0:
                raise InvalidArgumentError(
                    f"page_size must be >= 0, got {request.page_size}",
                    reason="INVALID_PAGE_SIZE",
                    metadata={"field": "page_size"},
                )
            start = page_offset(request.page_token, env.name, split, len(tasks))
        except RollmeshError as e:
            await abort(context, e)
        end = len(tasks) if request.page_size == 0 else min(len(tasks), start + request.page_size)
        if start == end:
            yield env_pb.ListTasksResponse(total=len(tasks))
        for i in range(start, end, LIST_BATCH):
            j = min(i + LIST_BATCH, end)
            last = j == end
            yield env_pb.ListTasksResponse(
                tasks=[convert.task_to_pb(t, env.name) for t in tasks[i:j]],
                next_page_token=page_token(env.name, split, end) if last and end < len(tasks) else "",
                total=len(tasks),
            )

    async def Score(self, request: env_pb.ScoreRequest, context: grpc.aio.ServicerContext) -> env_pb.ScoreResponse:
        try:
            env = self.env(request.env)
        except RollmeshError as e:
            await abort(context, e)
        try:
            if not env.has_score:
                raise UnimplementedError(f"environment {env.name!r} does not implement Score (has_score is false)")
            task = self._task_for_score(env, request)
            messages = convert.messages_from_pb(request.messages)
            result = await env.score(task, messages, convert.from_struct(request.state))
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:
            log.exception("Score failed in environment %s", request.env)
            await abort(
                context,
                InternalError(
                    f"environment {env.name!r} failed in score(): {type(e).__name__}: {e}", reason="ENVIRONMENT_FAILED"
                ),
            )
        rewards = result if isinstance(result, dict) else {"score": float(result)}
        response = env_pb.ScoreResponse(reward=weighted_reward(env, rewards))
        response.rewards.update(rewards)
        return response

    def _task_for_score(self, env: Environment, request: env_pb.ScoreRequest):
        if request.task.prompt or request.task.answer:
            return convert.task_from_pb(request.task)
        if request.task.task_id:
            return env.get_task(request.task.task_id, request.task.split or None)
        raise InvalidArgumentError("Score needs the task (inline, or its task_id and split)", reason="NO_TASK")

    async def RunEpisode(
        self, request: env_pb.RunEpisodeRequest, context: grpc.aio.ServicerContext
    ) -> env_pb.RunEpisodeResponse:
        """The environment plays the whole episode with its own agent loop (spec 7), under the same
        limits as a stream (concurrent episodes, draining) plus `run_timeout_s`; a caller that goes
        away cancels it, which stops any agent program it started."""
        episode: Episode | None = None
        counted = False
        try:
            env = self.env(request.start.env)
            if not env.has_run_episode:
                raise UnimplementedError(
                    f"environment {env.name!r} does not run episodes itself (has_run_episode is false); "
                    "drive it with the Episode stream"
                )
            base_url = check_endpoint(request)
            self._admit()
            self.active += 1
            counted = True
            episode = self._new_episode(env_pb.EpisodeRequest(start=request.start))
            await episode.start()
            agent = AgentContext(
                task=episode.task,
                openai_base_url=base_url,
                api_key=request.session_key,
                model=request.model,
                sampling=sampling_dict(request.sampling),
                seed=request.start.seed,
                options=episode.state["options"],
                state=episode.state,
                episode_id=episode.episode_id,
            )
            budget = asyncio.timeout(self.limits.run_timeout_s or None)
            try:
                async with budget:
                    result = await env.run_episode(episode.task, agent)
            except TimeoutError as e:
                if not budget.expired():  # the agent's own timeout (a model call, a tool), not ours
                    raise await _agent_failure(env.name, base_url, e) from e
                raise DeadlineExceededError(
                    f"environment {env.name!r} did not finish the episode within {self.limits.run_timeout_s:g} s",
                    reason="TIMEOUT",
                    metadata={"timeout_s": f"{self.limits.run_timeout_s:g}"},
                ) from None
            except (RollmeshError, asyncio.CancelledError):
                raise
            except Exception as e:
                raise await _agent_failure(env.name, base_url, e) from e
            response = env_pb.RunEpisodeResponse(trajectory=await self._trajectory(env, episode, result))
            if (size := response.ByteSize()) > self.max_message_bytes:
                raise ResourceExhaustedError(
                    f"the episode's trajectory is {size} bytes, over the {self.max_message_bytes}-byte message limit",
                    reason="MESSAGE_TOO_LARGE",
                    metadata={"limit_bytes": str(self.max_message_bytes)},
                )
            return response
        except ProgramFailed as e:
            await abort(context, await _agent_failure(request.start.env, request.openai_base_url, e))
        except RollmeshError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            log.exception("RunEpisode failed in environment %s", request.start.env)
            await abort(
                context, InternalError(f"RunEpisode raised {type(e).__name__}: {e}", reason="ENVIRONMENT_FAILED")
            )
        finally:
            if counted:
                self.active -= 1
            if episode is not None:
                await self._close(episode)

    async def _trajectory(self, env: Environment, episode: Episode, result: EpisodeResult) -> traj_pb.Trajectory:
        """The response's trajectory: the conversation, rewards (the agent's, else the rubric's on
        the final conversation), metrics and public state. Turns are the caller's (its record)."""
        if not isinstance(result, EpisodeResult):
            raise InternalError(
                f"environment {env.name!r}: run_episode returned {type(result).__name__}, not an EpisodeResult",
                reason="ENVIRONMENT_FAILED",
            )
        if result.stop_reason not in convert.STOP_REASONS or result.stop_reason in ("", "error"):
            raise InternalError(
                f"environment {env.name!r}: run_episode's stop_reason {result.stop_reason!r} is not one of "
                "done, max_turns, length, cancelled",
                reason="ENVIRONMENT_FAILED",
            )
        messages = [dict(m) for m in result.messages]
        traj = traj_pb.Trajectory(
            messages=convert.messages_to_pb(messages), stop_reason=convert.STOP_REASONS[result.stop_reason]
        )
        rewards = result.rewards
        if rewards is None and env.rubric is not None:
            rewards, _ = await env.rubric.score(reward_context(episode.task, messages, episode.state))
        if rewards:
            traj.rewards.update(rewards)
            traj.reward = weighted_reward(env, rewards)
        turns = sum(1 for m in messages if m.get("role") == "assistant")
        traj.metrics.update({"turns": float(turns), **episode.state.get("metrics", {}), **result.metrics})
        traj.state.CopyFrom(convert.to_struct(episode.public_state()))
        return traj

    async def Episode(
        self, request_iterator: AsyncIterator[env_pb.EpisodeRequest], context: grpc.aio.ServicerContext
    ) -> None:
        episode: Episode | None = None
        counted = False
        try:
            async with IdleWatch(self.limits.idle_timeout_s) as idle:
                first = await self._read(context, idle)
                if first is None:
                    return  # client closed without starting: nothing to do
                self._admit()
                self.active += 1
                counted = True
                episode = self._new_episode(first)
                messages = await episode.start()
                await self._write(
                    context,
                    env_pb.EpisodeResponse(
                        started=env_pb.EpisodeStarted(
                            episode_id=episode.episode_id,
                            task=convert.task_to_pb(episode.task, episode.env.name),
                            messages=convert.messages_to_pb(messages),
                            tools=[convert.tool_spec_to_pb(s) for s in episode.env.tool_specs()],
                            max_turns=episode.env.max_turns,
                        )
                    ),
                )
                while (request := await self._read(context, idle)) is not None:
                    if request.WhichOneof("kind") != "action":
                        raise InvalidArgumentError(
                            "the episode has started; send actions, not another start", reason="ALREADY_STARTED"
                        )
                    if not request.action.HasField("message"):
                        raise InvalidArgumentError("an action needs a message", reason="EMPTY_ACTION")
                    result = await episode.step(convert.message_from_pb(request.action.message))
                    await self._write(context, env_pb.EpisodeResponse(step=convert.step_to_pb(result)))
        except RollmeshError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            where = f"environment {episode.env.name!r}" if episode else "episode start"
            log.exception("episode failed in %s", where)
            await abort(context, InternalError(f"{where} raised {type(e).__name__}: {e}", reason="ENVIRONMENT_FAILED"))
        finally:
            if counted:
                self.active -= 1
            if episode is not None:
                await self._close(episode)

    def _admit(self) -> None:
        """Refuses a new episode while draining or at the concurrency limit."""
        if self.draining:
            raise UnavailableError("server is shutting down; start the episode on another replica", reason="DRAINING")
        if self.active >= self.limits.max_concurrent_episodes:
            raise ResourceExhaustedError(
                f"server at its limit of {self.limits.max_concurrent_episodes} concurrent episodes; "
                "retry later or use another replica",
                reason="EPISODE_LIMIT",
                metadata={"limit": str(self.limits.max_concurrent_episodes)},
            )

    async def _write(self, context: grpc.aio.ServicerContext, response: env_pb.EpisodeResponse) -> None:
        # gRPC would refuse an oversized reply with an opaque internal error; name the cause instead
        if (size := response.ByteSize()) > self.max_message_bytes:
            raise ResourceExhaustedError(
                f"the environment's reply is {size} bytes, over the {self.max_message_bytes}-byte message limit",
                reason="MESSAGE_TOO_LARGE",
                metadata={"limit_bytes": str(self.max_message_bytes)},
            )
        await context.write(response)

    @staticmethod
    async def _read(context: grpc.aio.ServicerContext, idle: IdleWatch) -> env_pb.EpisodeRequest | None:
        idle.waiting()
        try:
            request = await context.read()
        except DecodeError:
            raise InvalidArgumentError(
                "the message is not a valid rollmesh.v1.EpisodeRequest", reason="MALFORMED_REQUEST"
            ) from None
        finally:
            idle.heard()
        return None if request is grpc.aio.EOF else request

    def _new_episode(self, request: env_pb.EpisodeRequest) -> Episode:
        if request.WhichOneof("kind") != "start":
            raise InvalidArgumentError("the first message of an episode must be `start`", reason="NOT_STARTED")
        start = request.start
        env = self.env(start.env)
        if start.HasField("task"):
            if not start.task.prompt:
                raise InvalidArgumentError("an inline task needs a prompt", reason="INVALID_TASK")
            task = convert.task_from_pb(start.task)
        elif start.task_id:
            task = env.get_task(start.task_id, start.split or None)
        else:
            raise InvalidArgumentError("start needs a task_id (see ListTasks) or an inline task", reason="NO_TASK")
        return env.episode(
            task, seed=start.seed, options=convert.from_struct(start.options), episode_id=start.episode_id
        )

    @staticmethod
    async def _close(episode: Episode) -> None:
        try:
            # shielded: a cancelled stream must still free the episode's resources
            await asyncio.shield(episode.close())
        except Exception:
            log.exception("cleanup failed for episode %s", episode.episode_id)


class EnvironmentServer(HostedServer):
    """Hosts environments on a gRPC port, registers them when given a NATS URL, and shuts down
    gracefully: health NOT_SERVING and deregistration first, then in-flight episodes get
    `grace_s` to finish before they are cancelled."""

    def __init__(
        self,
        envs: Sequence[Environment],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: EpisodeLimits = EpisodeLimits(),
        rpc_limits: RpcLimits = RpcLimits(),  # noqa: B008 (frozen dataclass)
        nats_url: str | None = None,
        advertise_host: str | None = None,
    ) -> None:
        self.servicer = EnvironmentServicer(envs, limits=limits, max_message_bytes=rpc_limits.max_message_bytes)
        rpc = create_server(
            [(env_grpc.add_EnvironmentServiceServicer_to_server, self.servicer, SERVICE_NAME)],
            host=host,
            port=port,
            limits=rpc_limits.with_headroom_for(limits.max_concurrent_episodes),
        )
        self._host(rpc, nats_url=nats_url, advertise_host=advertise_host)

    def drain(self) -> None:
        self.servicer.draining = True

    def load(self) -> str:
        return f"{self.servicer.active} episodes in flight"

    def records(self) -> list[bus_pb.ServiceRecord]:
        return [
            record_for(
                bus_pb.SERVICE_KIND_ENVIRONMENT,
                env.name,
                env.version,
                self.advertised_address,
                self.servicer.limits.max_concurrent_episodes,
                self.servicer.instance_id,
            )
            for env in self.servicer.envs.values()
        ]

    async def started(self) -> None:
        log.info("serving %s on %s", ", ".join(self.servicer.envs), self.address)
