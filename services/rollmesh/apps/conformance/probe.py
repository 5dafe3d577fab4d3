"""The connection to the server under test and what the checks share: how a call ended (its status
and ErrorInfo), a collector of findings that reports every problem of a check, and a generic policy
that plays any environment to the end. Only the wire contract is used (generated stubs, health,
reflection), so a server in any language is held to the same rules."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from ...env.stream import EpisodeStream
from ...proto.v1 import environment_pb2 as env_pb
from ...proto.v1 import environment_pb2_grpc as env_grpc
from ...proto.v1 import errors_pb2
from ...proto.v1 import messages_pb2 as msg_pb
from ...proto.v1 import trajectory_pb2 as traj_pb
from ...rpc import channel_credentials
from ...rpc_errors import DOMAIN
from ...security import tls as security_tls

SERVICE = env_pb.DESCRIPTOR.services_by_name["EnvironmentService"].full_name
SETTLE_S = 5.0  # how long a server may take to free episodes that ended
Code = grpc.StatusCode


class CheckFailed(Exception):
    """The server broke the contract; the message says how."""


class Skipped(Exception):
    """The check does not apply to this server; the message says why."""


def expect(condition: object, message: str) -> None:
    """A problem that leaves nothing else to check."""
    if not condition:
        raise CheckFailed(message)


@dataclass
class Findings:
    """Every problem a check finds, so that one run shows them all (not only the first)."""

    problems: list[str] = field(default_factory=list)

    def check(self, condition: object, message: str) -> bool:
        if not condition:
            self.problems.append(message)
        return bool(condition)

    def verdict(self, detail: str) -> str:
        """`detail` when nothing was found; CheckFailed with every problem otherwise."""
        if self.problems:
            raise CheckFailed("; ".join(self.problems))
        return detail


# --- how a call ended -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A call's final status with the ErrorInfo of its google.rpc.Status details, if any."""

    code: grpc.StatusCode
    details: str = ""
    reason: str = ""
    domain: str = ""
    has_details: bool = False

    @classmethod
    def of(cls, code: grpc.StatusCode, details: str, trailing: Any) -> Outcome:
        for key, value in trailing or ():
            if key != "grpc-status-details-bin":
                continue
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return cls(code, details, has_details=True, reason="<undecodable google.rpc.Status>")
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return cls(code, details, info.reason, info.domain, True)
            return cls(code, details, has_details=True)
        return cls(code, details)

    @classmethod
    def of_error(cls, e: grpc.aio.AioRpcError) -> Outcome:
        return cls.of(e.code(), e.details() or "", e.trailing_metadata())

    def __str__(self) -> str:
        why = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{why} ({self.details[:200]!r})"


async def final_outcome(call: grpc.aio.Call, *writes: Any) -> Outcome:
    """Writes `writes`, then reads to the end of the stream; returns how it ended."""
    try:
        for request in writes:
            await call.write(request)
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as e:
        return Outcome.of_error(e)
    except asyncio.InvalidStateError:  # wrote to a stream the server already ended
        pass
    return Outcome.of(await call.code(), await call.details() or "", await call.trailing_metadata())


async def unary_outcome(call: Any) -> Outcome:
    """Awaits a unary call or consumes a response stream; returns how it ended."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as e:
        return Outcome.of_error(e)
    return Outcome(Code.OK)


REASONS = set(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def expect_error(
    found: Findings, got: Outcome, code: grpc.StatusCode, reason: str | None, what: str, *, details: bool = True
) -> str:
    """Records every way `got` differs from `code` with ErrorInfo {reason, domain} (spec 2.1);
    `reason` None: any reason of the enum. `details` False: transport statuses, which have none."""
    if not found.check(got.code == code, f"{what}: expected {code.name}, got {got}"):
        return f"{what}: {got.code.name}"
    if not details:
        return f"{what}: {code.name}"
    if not found.check(got.has_details and got.reason, f"{what}: {code.name} without ErrorInfo details"):
        return f"{what}: {code.name}"
    if reason is not None:
        found.check(got.reason == reason, f"{what}: reason {got.reason!r}, expected {reason!r}")
    else:
        found.check(got.reason in REASONS, f"{what}: reason {got.reason!r} is not an ErrorReason value")
    found.check(got.domain == DOMAIN, f"{what}: ErrorInfo.domain {got.domain!r}, expected {DOMAIN!r}")
    return f"{what}: {code.name} {got.reason}"


# --- the probe ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    timeout_s: float = 30.0
    # Checks that must wait longer than this (the idle timeout) are skipped, with how to run them.
    max_wait_s: float = 15.0
    # The server's process id: the drain check sends it SIGTERM, last (opt-in: it stops the server).
    drain_pid: int | None = None
    # An inference server for RunEpisode, when the environment advertises it.
    inference: str | None = None


class Probe:
    """A channel to the server under test plus the helpers the checks share."""

    def __init__(self, address: str, options: Options) -> None:
        self.address = address
        self.options = options
        self.timeout_s = options.timeout_s
        # No client-side size limits: the oversized check must reach the server's own limit.
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        tls = security_tls.current()
        if tls.enabled:  # the server must hold a certificate for env.rollmesh (spec 14)
            self.channel = grpc.aio.secure_channel(
                address,
                channel_credentials(tls),
                options=[*unlimited, ("grpc.ssl_target_name_override", security_tls.server_name("env"))],
            )
        else:
            self.channel = grpc.aio.insecure_channel(address, options=unlimited)
        self.stub = env_grpc.EnvironmentServiceStub(self.channel)
        self.baseline_active: int | None = None  # active_episodes before the first check
        self._describe: env_pb.DescribeResponse | None = None

    async def close(self) -> None:
        await self.channel.close()

    async def describe(self) -> env_pb.DescribeResponse:
        response = await self.stub.Describe(env_pb.DescribeRequest(), timeout=self.timeout_s)
        if self._describe is None:
            self._describe = response
        return response

    async def info(self) -> env_pb.DescribeResponse:
        """The first Describe answer (environments and limits do not change while serving)."""
        return self._describe if self._describe is not None else await self.describe()

    async def active(self) -> int:
        return (await self.describe()).active_episodes

    async def settle(self, target: int, within_s: float = SETTLE_S) -> float:
        """Waits until active_episodes == target; returns the seconds it took."""
        start = time.monotonic()
        while (value := await self.active()) != target:
            if time.monotonic() - start > within_s:
                raise CheckFailed(f"active_episodes is {value}, expected {target} within {within_s:g} s")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def first_env(self) -> env_pb.EnvironmentInfo:
        info = await self.info()
        expect(info.environments, "Describe lists no environments")
        return info.environments[0]

    async def list_tasks(
        self, env: str, split: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[msg_pb.Task], str, set[int]]:
        """One ListTasks call: (tasks, next_page_token of the last message, the totals sent)."""
        request = env_pb.ListTasksRequest(env=env, split=split, page_size=page_size, page_token=page_token)
        tasks: list[msg_pb.Task] = []
        token, totals = "", set()
        async for response in self.stub.ListTasks(request, timeout=self.timeout_s):
            tasks.extend(response.tasks)
            token = response.next_page_token
            totals.add(response.total)
        return tasks, token, totals

    async def tasks(self, env: str, n: int) -> list[msg_pb.Task]:
        """The first `n` tasks of the default split (Skipped when it has none)."""
        tasks, _, _ = await self.list_tasks(env, page_size=n)
        if not tasks:
            raise Skipped(f"environment {env!r} has no tasks in its default split")
        return tasks[:n]

    async def first_task(self, env: str) -> msg_pb.Task:
        return (await self.tasks(env, 1))[0]

    def episode(self, timeout_s: float | None = None) -> grpc.aio.StreamStreamCall:
        return self.stub.Episode(timeout=timeout_s or self.timeout_s)

    def stream(self, timeout_s: float | None = None) -> EpisodeStream:
        return EpisodeStream(self.stub, timeout_s=timeout_s or self.timeout_s, step_timeout_s=self.timeout_s)

    @asynccontextmanager
    async def started(
        self, env: str, task_id: str, timeout_s: float | None = None
    ) -> AsyncIterator[tuple[EpisodeStream, env_pb.EpisodeStarted]]:
        """An Episode stream past `started`, cancelled on exit (a no-op once the stream has ended)."""
        stream = self.stream(timeout_s)
        try:
            yield stream, await stream.start(start_request(env, task_id).start)
        finally:
            stream.end()


def start_request(env: str, task_id: str = "", **fields: Any) -> env_pb.EpisodeRequest:
    return env_pb.EpisodeRequest(start=env_pb.StartEpisode(env=env, task_id=task_id, **fields))


def action_request(message: msg_pb.Message | None) -> env_pb.EpisodeRequest:
    return env_pb.EpisodeRequest(action=env_pb.Action(message=message))


def text(content: str) -> msg_pb.Message:
    return msg_pb.Message(role="assistant", content=content)


# --- the generic policy ---------------------------------------------------------------------------


def example_value(schema: Mapping[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema: "test", 1, 1.0, false, the first enum value."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_value(schema[key][0])
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return example_arguments(schema)
    return {"string": "test", "integer": 1, "number": 1.0, "boolean": False, "array": [], "null": None}.get(
        kind, "test"
    )


def example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {name: example_value(properties.get(name) or {}) for name in schema.get("required") or ()}


def policy(tools: Sequence[msg_pb.ToolSpec], answer: str) -> Iterator[msg_pb.Message]:
    """What conformance sends as actions (spec 13): one call of the first tool (if any) with
    arguments that satisfy its schema, then the task's answer (or "42") on every later turn."""
    if tools:
        schema = json.loads(tools[0].parameters_json_schema or "{}")
        call = msg_pb.ToolCall(
            id="call_conformance_1", name=tools[0].name, arguments_json=json.dumps(example_arguments(schema))
        )
        yield msg_pb.Message(role="assistant", tool_calls=[call])
    while True:
        yield text(answer or "42")


@dataclass
class Played:
    """A finished episode whose stream is still open (the caller half-closes or tests it)."""

    call: grpc.aio.StreamStreamCall
    started: env_pb.EpisodeStarted
    steps: list[env_pb.Step]
    conversation: list[msg_pb.Message]

    @property
    def last(self) -> env_pb.Step:
        return self.steps[-1]

    def describe(self) -> str:
        reason = traj_pb.StopReason.Name(self.last.stop_reason).removeprefix("STOP_REASON_").lower()
        reward = f", reward {self.last.reward:g}" if self.last.has_reward else ""
        return f"{len(self.steps)} turn(s), {reason}{reward}"


async def play(probe: Probe, env: env_pb.EnvironmentInfo, task: msg_pb.Task, found: Findings | None = None) -> Played:
    """Starts an episode of `task` and plays the generic policy until done. With `found`, every
    field of every reply is checked against spec 3 (the episode check); without, only what playing
    needs, so that one broken field fails one check rather than every check that plays."""
    found = found or Findings()
    stream = probe.stream()
    try:
        started = await stream.start(start_request(env.name, task.task_id).start)
        found.check(started.episode_id, "`started` has no episode_id")
        found.check(started.messages, "`started` has no messages (the prompt)")
        found.check(started.task.task_id == task.task_id, f"`started.task` is {started.task.task_id!r}")
        advertised = [(t.name, t.parameters_json_schema) for t in env.tools]
        got = [(t.name, t.parameters_json_schema) for t in started.tools]
        found.check(
            got == advertised,
            f"`started` tools {[n for n, _ in got]} differ from Describe's {[n for n, _ in advertised]}",
        )
        max_turns = started.max_turns or env.max_turns
        conversation = list(started.messages)
        steps: list[env_pb.Step] = []
        actions = policy(started.tools, started.task.answer or task.answer)
        for turn in range(1, max_turns + 1):
            action = next(actions)
            step = await stream.act(action)
            found.check(step.turn == turn, f"step.turn is {step.turn} after {turn} action(s)")
            conversation += [action, *step.messages]
            steps.append(step)
            if step.done:
                break
        expect(steps and steps[-1].done, f"no step with done = true after max_turns = {max_turns} actions")
        last = steps[-1]
        found.check(
            last.stop_reason in (traj_pb.STOP_REASON_DONE, traj_pb.STOP_REASON_MAX_TURNS),
            f"the final step's stop_reason is {traj_pb.StopReason.Name(last.stop_reason)}, not DONE or MAX_TURNS",
        )
        if last.stop_reason == traj_pb.STOP_REASON_MAX_TURNS:
            found.check(len(steps) == max_turns, f"stop_reason MAX_TURNS after {len(steps)} of {max_turns} turns")
        if last.has_reward:
            found.check(finite(last.reward, last.rewards), f"non-finite rewards: {last.reward}, {dict(last.rewards)}")
        unknown = set(last.rewards) - set(env.reward_names)
        found.check(not unknown or not env.reward_names, f"rewards {sorted(unknown)} not in reward_names")
        return Played(stream.call, started, steps, conversation)
    except BaseException:
        stream.end()
        raise


def finite(reward: float, rewards: Mapping[str, float]) -> bool:
    return all(math.isfinite(v) for v in (reward, *rewards.values()))


async def expect_ok_end(call: grpc.aio.StreamStreamCall, found: Findings) -> None:
    """Half-closes a finished episode; the server must end the stream with OK (spec 3.4)."""
    await call.done_writing()
    got = await final_outcome(call)
    found.check(got.code == Code.OK, f"after half-close the stream ended with {got}, not OK")
