"""`rollmesh conformance ADDRESS`: protocol checks against any environment server.

The checks speak only the wire contract (the generated stubs of rollmesh/v1/environment.proto,
grpc.health.v1 and server reflection), so they hold a server in any language to the same rules:
the Episode protocol of the EnvironmentService comment, ListTasks pagination, error statuses,
message limits, and that Describe.active_episodes comes back down when episodes end, however
they end.

Checks run one after another (several compare active_episodes before and after), each under its
own timeout; an exception in one is a FAIL of that check only.

    report = await run_conformance("127.0.0.1:50051")
    assert report.passed, report.checks
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ..env.stream import EpisodeStream
from ..errors import RollmeshError
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import environment_pb2_grpc as env_grpc
from ..proto.v1 import messages_pb2 as msg_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rpc import end_call
from ..rpc_errors import status_for

SERVICE = env_pb.DESCRIPTOR.services_by_name["EnvironmentService"].full_name
EPISODE_METHOD = f"/{SERVICE}/Episode"
PROTOCOL_VERSION = "v1"
SETTLE_S = 5.0  # how long a server may take to free episodes that ended
CONCURRENT_EPISODES = 100
MAX_PAGES_WALKED = 25  # pages of 2 tasks: ~50 tasks
MAX_OVERSIZED_BYTES = 64 * 1024 * 1024
NOT_PROTOBUF = b"\x0a\x7f\x00"  # field 1, length 127, then 1 byte: truncated, never parses
SERVING = health_pb2.HealthCheckResponse.SERVING
Code = grpc.StatusCode


# --- results --------------------------------------------------------------------------------------


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status), "duration_s": round(self.duration_s, 4)}


@dataclass
class ConformanceReport:
    address: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status is not Status.FAIL for c in self.checks)

    def result(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


class CheckFailed(Exception):
    """The server broke the contract; the message says how."""


class Skipped(Exception):
    """The check does not apply to this server; the message says why."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- the registry ---------------------------------------------------------------------------------

CheckFn = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Check:
    name: str
    fn: CheckFn
    # Run once per environment of Describe, as "name:<env>", with the EnvironmentInfo as argument.
    per_env: bool = False


CHECKS: list[Check] = []


def check(name: str, *, per_env: bool = False) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS.append(Check(name, fn, per_env))
        return fn

    return register


# --- the connection and protocol helpers ------------------------------------------------------------


class Probe:
    """A channel to the server under test plus the helpers the checks share."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # No client-side size limits: the oversized check must reach the server's own limit.
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
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
    ) -> tuple[list[msg_pb.Task], str, int]:
        """One ListTasks call: (tasks, next_page_token of the last message, total)."""
        request = env_pb.ListTasksRequest(env=env, split=split, page_size=page_size, page_token=page_token)
        tasks: list[msg_pb.Task] = []
        token, totals = "", set()
        async for response in self.stub.ListTasks(request, timeout=self.timeout_s):
            tasks.extend(response.tasks)
            token = response.next_page_token
            totals.add(response.total)
        expect(len(totals) == 1, f"ListTasks({env}/{split or 'default'}) sent totals {sorted(totals)}")
        return tasks, token, totals.pop()

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

    def stream(self, timeout_s: float | None = None) -> EpisodeStream:
        return EpisodeStream(self.stub, timeout_s=timeout_s or self.timeout_s, step_timeout_s=self.timeout_s)


def start_request(env: str, task_id: str) -> env_pb.EpisodeRequest:
    return env_pb.EpisodeRequest(start=env_pb.StartEpisode(env=env, task_id=task_id))


def action_request(message: msg_pb.Message) -> env_pb.EpisodeRequest:
    return env_pb.EpisodeRequest(action=env_pb.Action(message=message))


def text(content: str) -> msg_pb.Message:
    return msg_pb.Message(role="assistant", content=content)


async def final_status(call: grpc.aio.Call, *writes: Any) -> tuple[grpc.StatusCode, str]:
    """Writes `writes`, then reads to the end of the stream; returns the status it ended with."""
    try:
        for request in writes:
            await call.write(request)
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    except asyncio.InvalidStateError:  # wrote to a stream the server already ended with OK
        pass
    return await call.code(), await call.details() or ""


def expect_code(got: tuple[grpc.StatusCode, str], expected: grpc.StatusCode, what: str) -> str:
    code, details = got
    expect(code == expected, f"{what}: expected {expected.name}, got {code.name} ({details!r})")
    return f"{what}: {code.name}"


async def expect_ok_end(call: grpc.aio.StreamStreamCall) -> None:
    """Half-closes a finished episode; the server must end the stream with OK."""
    await call.done_writing()
    code, details = await final_status(call)
    expect(code == Code.OK, f"after half-close the stream ended with {code.name} ({details!r}), not OK")


def rpc_error(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name}: {e.details()}"


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
    """One tool call to the first tool (if any), then the task's answer for every later turn."""
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


async def play(probe: Probe, env: env_pb.EnvironmentInfo, task: msg_pb.Task) -> Played:
    """Starts an episode of `task` and plays the generic policy until done, checking every reply."""
    stream = probe.stream()
    try:
        started = await stream.start(start_request(env.name, task.task_id).start)
        expect(started.episode_id, "`started` has no episode_id")
        expect(started.messages, "`started` has no messages")
        advertised = [(t.name, t.parameters_json_schema) for t in env.tools]
        got = [(t.name, t.parameters_json_schema) for t in started.tools]
        expect(
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
            expect(step.turn == turn, f"step.turn is {step.turn} after {turn} action(s)")
            conversation += [action, *step.messages]
            steps.append(step)
            if step.done:
                break
        expect(steps and steps[-1].done, f"no step with done = true after max_turns = {max_turns} actions")
        last = steps[-1]
        expect(last.stop_reason != traj_pb.STOP_REASON_UNSPECIFIED, "the final step has no stop_reason")
        if last.has_reward:
            expect(finite(last.reward, last.rewards), f"non-finite rewards: {last.reward}, {dict(last.rewards)}")
        return Played(stream.call, started, steps, conversation)
    except BaseException:
        stream.end()
        raise


def finite(reward: float, rewards: Mapping[str, float]) -> bool:
    return all(math.isfinite(v) for v in (reward, *rewards.values()))


def describe_play(p: Played) -> str:
    reason = traj_pb.StopReason.Name(p.last.stop_reason).removeprefix("STOP_REASON_").lower()
    reward = f", reward {p.last.reward:g}" if p.last.has_reward else ""
    return f"{len(p.steps)} turn(s), {reason}{reward}"


# --- the checks, in the order they run ---------------------------------------------------------------


@check("health")
async def check_health(probe: Probe) -> str:
    stub = health_pb2_grpc.HealthStub(probe.channel)
    for service in ("", SERVICE):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=probe.timeout_s)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        expect(response.status == SERVING, f"Check({service!r}) is {name}")
    return f'"" and {SERVICE} SERVING'


@check("reflection")
async def check_reflection(probe: Probe) -> str:
    stub = reflection_pb2_grpc.ServerReflectionStub(probe.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=probe.timeout_s)]
    expect(len(responses) == 2, f"{len(responses)} answers to 2 reflection requests")
    listed, described = responses
    names = [s.name for s in listed.list_services_response.service]
    expect(SERVICE in names, f"{SERVICE} not among the listed services {names}")
    expect(
        described.file_descriptor_response.file_descriptor_proto,
        f"no file descriptor for {SERVICE}: {described.error_response.error_message!r}",
    )
    return f"{len(names)} services listed, {SERVICE} described"


@check("describe")
async def check_describe(probe: Probe) -> str:
    info = await probe.info()
    expect(
        info.server.protocol_version == PROTOCOL_VERSION,
        f"protocol_version {info.server.protocol_version!r}, not 'v1'",
    )
    expect(info.environments, "no environments")
    names = [e.name for e in info.environments]
    expect(all(names), "an environment has no name")
    expect(len(set(names)) == len(names), f"duplicate environment names: {names}")
    for env in info.environments:
        expect(env.max_turns >= 1, f"{env.name}: max_turns {env.max_turns} < 1")
        expect(env.splits, f"{env.name}: no splits")
    expect(info.HasField("limits"), "no limits")
    expect(
        info.limits.max_concurrent_episodes > 0,
        f"limits.max_concurrent_episodes {info.limits.max_concurrent_episodes}",
    )
    expect(info.limits.max_message_bytes > 0, f"limits.max_message_bytes {info.limits.max_message_bytes}")
    lang = f" ({info.server.language})" if info.server.language else ""
    return f"v1{lang}: {', '.join(names)}"


@check("list-tasks")
async def check_list_tasks(probe: Probe) -> str:
    info = await probe.info()
    walked = 0
    for env in info.environments:
        for split, count in sorted(env.splits.items()):
            where = f"{env.name}/{split}"
            tasks, token, total = await probe.list_tasks(env.name, split)
            ids = [t.task_id for t in tasks]
            expect(not token, f"{where}: a full listing ended with next_page_token {token!r}")
            expect(len(ids) == total, f"{where}: {len(ids)} tasks streamed, total says {total}")
            expect(total == count, f"{where}: total {total}, Describe says {count}")
            expect(len(set(ids)) == len(ids), f"{where}: duplicate task ids")
            wrong = [t.task_id for t in tasks if t.env != env.name]
            expect(not wrong, f"{where}: tasks {wrong[:3]} have another env field")
            walked += await check_pages(probe, env.name, split, ids)
        code = await probe_status(probe.list_tasks(env.name, page_size=2, page_token="not-a-page-token-xyz"))
        expect_code(code, Code.INVALID_ARGUMENT, f"{env.name}: bad page_token")
    return f"{len(info.environments)} env(s); {walked} tasks walked by pages of 2; bad token rejected"


async def check_pages(probe: Probe, env: str, split: str, all_ids: list[str]) -> int:
    """Follows next_page_token with page_size 2 from the start; returns the tasks walked."""
    walked: list[str] = []
    token = ""
    for page in range(MAX_PAGES_WALKED):
        tasks, token, _ = await probe.list_tasks(env, split, page_size=2, page_token=token)
        expect(len(tasks) <= 2, f"{env}/{split}: page_size 2 returned {len(tasks)} tasks")
        walked += [t.task_id for t in tasks]
        if page == 0 and len(all_ids) > 2:
            expect(token, f"{env}/{split}: no next_page_token after the first 2 of {len(all_ids)} tasks")
        if not token:
            expect(
                walked == all_ids,
                f"{env}/{split}: the pages ended after {len(walked)} of {len(all_ids)} tasks",
            )
            break
    expect(walked == all_ids[: len(walked)], f"{env}/{split}: paging yields other ids than the full listing")
    return len(walked)


async def probe_status(awaitable: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await awaitable
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return Code.OK, ""


@check("episode", per_env=True)
async def check_episode(probe: Probe, env: env_pb.EnvironmentInfo) -> str:
    task = await probe.first_task(env.name)
    played = await play(probe, env, task)
    await expect_ok_end(played.call)
    return f"task {task.task_id}: {describe_play(played)}; OK on half-close"


@check("score")
async def check_score(probe: Probe) -> str:
    notes = []
    for env in (await probe.info()).environments:
        played = await play(probe, env, await probe.first_task(env.name))
        await expect_ok_end(played.call)
        request = env_pb.ScoreRequest(
            env=env.name, task=played.started.task, messages=played.conversation, state=played.last.state
        )
        if not env.has_score:
            expect_code(
                await probe_status(probe.stub.Score(request, timeout=probe.timeout_s)),
                Code.UNIMPLEMENTED,
                env.name,
            )
            notes.append(f"{env.name}: UNIMPLEMENTED")
            continue
        response = await probe.stub.Score(request, timeout=probe.timeout_s)
        expect(
            finite(response.reward, response.rewards),
            f"{env.name}: non-finite rewards {dict(response.rewards)}",
        )
        notes.append(f"{env.name}: {response.reward:g}")
    return "; ".join(notes)


@check("concurrent-episodes")
async def check_concurrent_episodes(probe: Probe) -> str:
    env, info = await probe.first_env(), await probe.info()
    baseline = await probe.active()
    n = min(CONCURRENT_EPISODES, info.limits.max_concurrent_episodes - baseline)
    if n < 1:
        raise Skipped(f"no room: {baseline} of {info.limits.max_concurrent_episodes} episodes in use")
    tasks = await probe.tasks(env.name, n)

    async def one(i: int) -> None:
        played = await play(probe, env, tasks[i % len(tasks)])
        await expect_ok_end(played.call)

    start = time.monotonic()
    outcomes = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    elapsed = time.monotonic() - start
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    expect(
        not errors,
        f"{len(errors)} of {n} episodes failed; first: {describe_error(errors[0]) if errors else ''}",
    )
    settled = await probe.settle(baseline)
    return f"{n} episodes of {env.name} in {elapsed:.2f} s; active back to {baseline} after {settled:.2f} s"


@check("cancel-mid-episode")
async def check_cancel_mid_episode(probe: Probe) -> str:
    envs = (await probe.info()).environments
    multi_turn = [e for e in envs if e.kind != env_pb.ENVIRONMENT_KIND_SINGLE_TURN and e.max_turns > 1]
    env = multi_turn[0] if multi_turn else await probe.first_env()
    task = await probe.first_task(env.name)
    baseline = await probe.active()
    async with probe.started(env.name, task.task_id) as (stream, started):
        active = await probe.active()
        expect(active > baseline, f"active_episodes is {active} with an episode open (was {baseline} before)")
        sent = ""
        if multi_turn:
            action = next(policy(started.tools, "0")) if started.tools else text("conformance probe")
            await stream.act(action)
            sent = " after one action"
        stream.end()
    settled = await probe.settle(baseline)
    return f"{env.name}: cancelled{sent}; active {active} -> {baseline} after {settled:.2f} s"


@check("unknown-env")
async def check_unknown_env(probe: Probe) -> str:
    return expect_code(
        await final_status(probe.episode(), start_request("no-such-env-xyz", "t")), Code.NOT_FOUND, "start"
    )


@check("unknown-task")
async def check_unknown_task(probe: Probe) -> str:
    env = await probe.first_env()
    got = await final_status(probe.episode(), start_request(env.name, "no-such-task-xyz"))
    return expect_code(got, Code.NOT_FOUND, f"start {env.name}")


@check("action-after-done")
async def check_action_after_done(probe: Probe) -> str:
    env = await probe.first_env()
    played = await play(probe, env, await probe.first_task(env.name))
    try:
        got = await final_status(played.call, action_request(text("one more")))
    finally:
        end_call(played.call)
    return expect_code(got, Code.FAILED_PRECONDITION, f"action after {describe_play(played)}")


@check("malformed")
async def check_malformed(probe: Probe) -> str:
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    results, failures = [], []

    async def case(
        what: str, run: Callable[[], Awaitable[tuple[grpc.StatusCode, str]]], expected: grpc.StatusCode | None
    ) -> None:
        """`expected` None: any status but OK."""
        try:
            code, details = await run()
        except Exception as e:
            code, details = None, describe_error(e)
        if code is not None and (code == expected or (expected is None and code != Code.OK)):
            results.append(f"{what}: {code.name}")
        else:
            wanted = expected.name if expected else "a non-OK status"
            failures.append(f"{what}: expected {wanted}, got {code.name if code else '-'} ({details!r})")

    async def second_start() -> tuple[grpc.StatusCode, str]:
        async with probe.started(env.name, task.task_id) as (stream, _):
            return await final_status(stream.call, start_request(env.name, task.task_id))

    async def garbage() -> tuple[grpc.StatusCode, str]:
        raw = probe.channel.stream_stream(EPISODE_METHOD, request_serializer=bytes, response_deserializer=bytes)
        return await final_status(raw(timeout=probe.timeout_s), NOT_PROTOBUF)

    await case(
        "action first",
        lambda: final_status(probe.episode(), action_request(text("hi"))),
        Code.INVALID_ARGUMENT,
    )
    await case(
        "empty env",
        lambda: final_status(probe.episode(), start_request("", task.task_id)),
        Code.INVALID_ARGUMENT,
    )
    await case("second start", second_start, Code.INVALID_ARGUMENT)
    await case("not protobuf", garbage, None)
    await probe.describe()
    expect(not failures, "; ".join(failures))
    return "; ".join(results) + "; Describe still answers"


@check("oversized")
async def check_oversized(probe: Probe) -> str:
    limit = (await probe.info()).limits.max_message_bytes
    if limit <= 0 or limit > MAX_OVERSIZED_BYTES:
        raise Skipped(f"max_message_bytes {limit}: not in 1..{MAX_OVERSIZED_BYTES}")
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    async with probe.started(env.name, task.task_id) as (stream, _):
        got = await final_status(stream.call, action_request(text("x" * (limit + 1))))
    detail = expect_code(got, Code.RESOURCE_EXHAUSTED, f"action of {limit + 1} bytes")
    await probe.describe()
    return f"{detail}; Describe still answers"


@check("deadline-exceeded")
async def check_deadline_exceeded(probe: Probe) -> str:
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    baseline = await probe.active()
    async with probe.started(env.name, task.task_id, timeout_s=0.5) as (stream, _):
        got = await final_status(stream.call)
    detail = expect_code(got, Code.DEADLINE_EXCEEDED, "silent client, 0.5 s deadline")
    settled = await probe.settle(baseline)
    return f"{detail}; active back to {baseline} after {settled:.2f} s"


@check("no-leak")
async def check_no_leak(probe: Probe) -> str:
    expect(probe.baseline_active is not None, "no active_episodes reading from before the checks")
    assert probe.baseline_active is not None
    settled = await probe.settle(probe.baseline_active)
    return f"active_episodes {probe.baseline_active} as before the checks (settled in {settled:.2f} s)"


# --- the runner -------------------------------------------------------------------------------------


def describe_error(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return rpc_error(e)
    if isinstance(e, RollmeshError):  # raised by the shared EpisodeStream for the server's status
        return f"{status_for(e).name} {e.reason}: {e}"
    if isinstance(e, CheckFailed | Skipped):
        return str(e)
    return f"{type(e).__name__}: {e}"


async def run_check(name: str, fn: Callable[[], Awaitable[str]], timeout_s: float) -> CheckResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            status, detail = Status.PASS, await fn()
    except Skipped as e:
        status, detail = Status.SKIP, str(e)
    except TimeoutError:
        status, detail = Status.FAIL, f"timed out after {timeout_s:g} s"
    except Exception as e:
        status, detail = Status.FAIL, describe_error(e)
    return CheckResult(name, status, detail, time.perf_counter() - start)


async def run_conformance(address: str, *, timeout_s: float = 30.0) -> ConformanceReport:
    """Runs every check against the server at `address`, in order."""
    report = ConformanceReport(address)
    probe = Probe(address, timeout_s)
    try:
        try:
            await asyncio.wait_for(probe.channel.channel_ready(), timeout_s)
            probe.baseline_active = await probe.active()
        except (TimeoutError, grpc.aio.AioRpcError) as e:
            reason = f"timed out after {timeout_s:g} s" if isinstance(e, TimeoutError) else rpc_error(e)
            detail = f"cannot reach {address}: {reason}"
            names = [f"{c.name}:*" if c.per_env else c.name for c in CHECKS]
            report.checks = [CheckResult(name, Status.FAIL, detail, 0.0) for name in names]
            return report
        for c in CHECKS:
            if not c.per_env:
                report.checks.append(await run_check(c.name, lambda c=c: c.fn(probe), timeout_s))
                continue
            try:
                envs = list((await probe.info()).environments)
            except grpc.aio.AioRpcError as e:
                report.checks.append(CheckResult(f"{c.name}:*", Status.FAIL, f"Describe failed: {rpc_error(e)}", 0.0))
                continue
            for env in envs:
                report.checks.append(
                    await run_check(f"{c.name}:{env.name}", lambda c=c, env=env: c.fn(probe, env), timeout_s)
                )
        return report
    finally:
        await probe.close()


# --- the command line --------------------------------------------------------------------------------

STYLES = {Status.PASS: "bold green", Status.FAIL: "bold red", Status.SKIP: "yellow"}


def print_report(report: ConformanceReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rollmesh conformance: {report.address}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{STYLES[c.status]}]{c.status}[/]", f"{c.duration_s * 1000:.0f} ms", c.detail)
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    console = Console()
    console.print(table)
    verdict = "[bold green]conformant[/]" if report.passed else "[bold red]NOT conformant[/]"
    passed, failed, skipped = (counts[s] for s in Status)
    console.print(f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped")


def run_cli(address: str, *, as_json: bool, timeout_s: float) -> int:
    """Runs the checks and prints them; the exit code is 0 only when none failed."""
    report = asyncio.run(run_conformance(address, timeout_s=timeout_s))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return 0 if report.passed else 1


__all__ = ["CHECKS", "CheckResult", "ConformanceReport", "Status", "run_cli", "run_conformance"]
