"""The rules of docs/protocol.md, one check each, in the order they run (several compare
active_episodes before and after, so they run one after another). A check returns what it saw, or
raises CheckFailed with every problem it found, or Skipped with why it does not apply."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ...errors import RollmeshError
from ...proto.v1 import environment_pb2 as env_pb
from ...proto.v1 import messages_pb2 as msg_pb
from ...rpc_errors import status_for
from . import intercepted
from .probe import (
    SERVICE,
    CheckFailed,
    Code,
    Findings,
    Outcome,
    Probe,
    Skipped,
    action_request,
    expect,
    expect_error,
    expect_ok_end,
    final_outcome,
    finite,
    play,
    policy,
    start_request,
    text,
    unary_outcome,
)

PROTOCOL_VERSION = "v1"
CONCURRENT_EPISODES = 100
MAX_LIMIT_PROBED = 4096  # the episode-limit check opens this many streams at most
MAX_PAGES_WALKED = 25  # pages of 2 tasks: ~50 tasks
MAX_OVERSIZED_BYTES = 64 * 1024 * 1024
NOT_PROTOBUF = b"\x0a\x7f\x00"  # field 1, length 127, then 1 byte: truncated, never parses
SERVING = health_pb2.HealthCheckResponse.SERVING

CheckFn = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Check:
    name: str
    spec: str  # the section of docs/protocol.md, e.g. "3.2"
    rule: str  # the rule in one sentence
    fn: CheckFn
    # Run once per environment of Describe, as "name:<env>", with the EnvironmentInfo as argument.
    per_env: bool = False
    # Runs after every other check (it stops the server).
    last: bool = False


CHECKS: list[Check] = []


def check(name: str, spec: str, *, per_env: bool = False, last: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Registers a check; the first paragraph of its docstring is the rule, as reported."""

    def register(fn: CheckFn) -> CheckFn:
        rule = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
        CHECKS.append(Check(name, spec, rule, fn, per_env, last))
        return fn

    return register


# --- 8, 4, 5: the server and its tasks ------------------------------------------------------------


@check("health", "8")
async def check_health(probe: Probe) -> str:
    """grpc.health.v1 answers SERVING for "" and for rollmesh.v1.EnvironmentService."""
    stub = health_pb2_grpc.HealthStub(probe.channel)
    found = Findings()
    for service in ("", SERVICE):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=probe.timeout_s)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        found.check(response.status == SERVING, f"Check({service!r}) is {name}")
    return found.verdict(f'"" and {SERVICE} SERVING')


@check("reflection", "8")
async def check_reflection(probe: Probe) -> str:
    """Server reflection lists and describes rollmesh.v1.EnvironmentService."""
    stub = reflection_pb2_grpc.ServerReflectionStub(probe.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=probe.timeout_s)]
    expect(len(responses) == 2, f"{len(responses)} answers to 2 reflection requests")
    listed, described = responses
    names = [s.name for s in listed.list_services_response.service]
    found = Findings()
    found.check(SERVICE in names, f"{SERVICE} not among the listed services {names}")
    found.check(
        described.file_descriptor_response.file_descriptor_proto,
        f"no file descriptor for {SERVICE}: {described.error_response.error_message!r}",
    )
    return found.verdict(f"{len(names)} services listed, {SERVICE} described")


@check("describe", "4")
async def check_describe(probe: Probe) -> str:
    """Describe names the protocol v1, unique environments with splits and a default split, and limits."""
    info = await probe.info()
    found = Findings()
    found.check(
        info.server.protocol_version == PROTOCOL_VERSION,
        f"protocol_version {info.server.protocol_version!r}, not {PROTOCOL_VERSION!r}",
    )
    found.check(info.server.instance_id, "server.instance_id is empty")
    expect(info.environments, "no environments")
    names = [e.name for e in info.environments]
    found.check(all(names), "an environment has no name")
    found.check(len(set(names)) == len(names), f"duplicate environment names: {names}")
    for env in info.environments:
        found.check(env.max_turns >= 1, f"{env.name}: max_turns {env.max_turns} < 1")
        found.check(env.kind != env_pb.ENVIRONMENT_KIND_UNSPECIFIED, f"{env.name}: kind is UNSPECIFIED")
        if found.check(env.splits, f"{env.name}: no splits"):
            found.check(
                env.default_split in env.splits,
                f"{env.name}: default_split {env.default_split!r} is not one of its splits {sorted(env.splits)}",
            )
    found.check(info.HasField("limits"), "no limits")
    found.check(
        info.limits.max_concurrent_episodes > 0,
        f"limits.max_concurrent_episodes {info.limits.max_concurrent_episodes}",
    )
    found.check(info.limits.max_message_bytes > 0, f"limits.max_message_bytes {info.limits.max_message_bytes}")
    found.check(info.limits.episode_idle_timeout_s >= 0, f"episode_idle_timeout_s {info.limits.episode_idle_timeout_s}")
    lang = f" ({info.server.language})" if info.server.language else ""
    return found.verdict(f"v1{lang}: {', '.join(names)}")


@check("list-tasks", "5")
async def check_list_tasks(probe: Probe) -> str:
    """ListTasks streams every task of a split with the same total on every message, and pages by opaque tokens."""
    info = await probe.info()
    found = Findings()
    walked = 0
    for env in info.environments:
        for split, count in sorted(env.splits.items()):
            where = f"{env.name}/{split}"
            tasks, token, totals = await probe.list_tasks(env.name, split)
            ids = [t.task_id for t in tasks]
            found.check(totals == {count}, f"{where}: totals {sorted(totals)} sent, Describe says {count}")
            found.check(not token, f"{where}: a full listing ended with next_page_token {token!r}")
            found.check(len(ids) == count, f"{where}: {len(ids)} tasks streamed, Describe says {count}")
            found.check(len(set(ids)) == len(ids), f"{where}: duplicate task ids")
            wrong = [t.task_id for t in tasks if t.env != env.name]
            found.check(not wrong, f"{where}: tasks {wrong[:3]} have another env field")
            wrong = [t.task_id for t in tasks if t.split != split]
            found.check(not wrong, f"{where}: tasks {wrong[:3]} have another split field")
            walked += await walk_pages(probe, env.name, split, ids, found)
        if env.default_split in env.splits:
            default, _, _ = await probe.list_tasks(env.name)
            named, _, _ = await probe.list_tasks(env.name, env.default_split)
            found.check(
                [t.task_id for t in default] == [t.task_id for t in named],
                f"{env.name}: an empty split does not list default_split {env.default_split!r}",
            )
    return found.verdict(f"{len(info.environments)} env(s); {walked} tasks walked by pages of 2")


async def walk_pages(probe: Probe, env: str, split: str, all_ids: list[str], found: Findings) -> int:
    """Follows next_page_token with page_size 2 from the start; returns the tasks walked."""
    walked: list[str] = []
    token = ""
    for page in range(MAX_PAGES_WALKED):
        tasks, token, totals = await probe.list_tasks(env, split, page_size=2, page_token=token)
        found.check(len(tasks) <= 2, f"{env}/{split}: page_size 2 returned {len(tasks)} tasks")
        found.check(totals == {len(all_ids)}, f"{env}/{split}: page {page} sent totals {sorted(totals)}")
        walked += [t.task_id for t in tasks]
        if page == 0 and len(all_ids) > 2:
            found.check(token, f"{env}/{split}: no next_page_token after the first 2 of {len(all_ids)} tasks")
        if not token:
            found.check(
                walked == all_ids, f"{env}/{split}: the pages ended after {len(walked)} of {len(all_ids)} tasks"
            )
            break
    found.check(walked == all_ids[: len(walked)], f"{env}/{split}: paging yields other ids than the full listing")
    return len(walked)


@check("list-tasks-errors", "5")
async def check_list_tasks_errors(probe: Probe) -> str:
    """ListTasks refuses a foreign page token, a negative page size, and unknown environments and splits."""
    env = await probe.first_env()
    found = Findings()
    cases = [
        ("bad page_token", dict(env=env.name, page_size=2, page_token="not-a-page-token-xyz"),
         Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"),
        ("page_size -1", dict(env=env.name, page_size=-1), Code.INVALID_ARGUMENT, "INVALID_PAGE_SIZE"),
        ("unknown env", dict(env="no-such-env-xyz"), Code.NOT_FOUND, "UNKNOWN_ENVIRONMENT"),
        ("empty env", dict(env=""), Code.INVALID_ARGUMENT, "NO_ENVIRONMENT"),
        ("unknown split", dict(env=env.name, split="no-such-split-xyz"), Code.NOT_FOUND, "UNKNOWN_SPLIT"),
    ]  # fmt: skip
    seen = []
    for what, fields, code, reason in cases:
        call = probe.stub.ListTasks(env_pb.ListTasksRequest(**fields), timeout=probe.timeout_s)
        seen.append(expect_error(found, await unary_outcome(call), code, reason, what))
    return found.verdict("; ".join(seen))


# --- 3: episodes ----------------------------------------------------------------------------------------


@check("episode", "3.3", per_env=True)
async def check_episode(probe: Probe, env: env_pb.EnvironmentInfo) -> str:
    """An episode plays to a final step (DONE or MAX_TURNS), one step per action, and ends OK on half-close."""
    task = await probe.first_task(env.name)
    found = Findings()
    played = await play(probe, env, task, found)
    await expect_ok_end(played.call, found)
    return found.verdict(f"task {task.task_id}: {played.describe()}; OK on half-close")


@check("empty-action", "3.3")
async def check_empty_action(probe: Probe) -> str:
    """An action without a message is EMPTY_ACTION; an empty assistant message is a move that gets a step."""
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    found = Findings()
    async with probe.started(env.name, task.task_id) as (stream, _):
        missing = expect_error(
            found, await final_outcome(stream.call, action_request(None)), Code.INVALID_ARGUMENT, "EMPTY_ACTION",
            "action without message",
        )  # fmt: skip
    async with probe.started(env.name, task.task_id) as (stream, _):
        try:
            step = await stream.act(text(""))
            found.check(step.turn == 1, f"the empty message's step has turn {step.turn}, not 1")
            empty = f"empty assistant message: step (done={step.done})"
        except Exception as e:  # any failure is the finding
            found.check(False, f"an assistant message with empty content got {describe_error(e)}, not a step")
            empty = ""
    return found.verdict(f"{missing}; {empty}")


@check("inline-task", "3.2")
async def check_inline_task(probe: Probe) -> str:
    """`start` with an inline task plays it; the inline task takes precedence over task_id."""
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    inline = msg_pb.Task(task_id="conformance-inline", prompt=task.prompt, answer=task.answer, info=task.info)
    found = Findings()
    stream = probe.stream()
    try:
        started = await stream.start(start_request(env.name, "no-such-task-xyz", task=inline).start)
        found.check(
            started.task.task_id == inline.task_id,
            f"started.task.task_id is {started.task.task_id!r}, not the inline task's {inline.task_id!r}",
        )
        found.check(started.messages, "`started` has no messages for the inline task")
        step = await stream.act(next(policy(started.tools, task.answer)))
        found.check(step.turn == 1, f"step.turn {step.turn} after one action")
    finally:
        stream.end()
    return found.verdict(f"inline copy of {task.task_id} started and stepped")


@check("score", "6")
async def check_score(probe: Probe) -> str:
    """Score returns finite rewards when has_score, and UNIMPLEMENTED (NOT_SUPPORTED) otherwise."""
    found = Findings()
    notes = []
    for env in (await probe.info()).environments:
        played = await play(probe, env, await probe.first_task(env.name))
        await expect_ok_end(played.call, found)
        request = env_pb.ScoreRequest(
            env=env.name, task=played.started.task, messages=played.conversation, state=played.last.state
        )
        call = probe.stub.Score(request, timeout=probe.timeout_s)
        if not env.has_score:
            notes.append(expect_error(found, await unary_outcome(call), Code.UNIMPLEMENTED, "NOT_SUPPORTED", env.name))
            continue
        response = await call
        found.check(
            finite(response.reward, response.rewards), f"{env.name}: non-finite rewards {dict(response.rewards)}"
        )
        notes.append(f"{env.name}: {response.reward:g}")
    return found.verdict("; ".join(notes))


@check("run-episode", "7")
async def check_run_episode(probe: Probe) -> str:
    """RunEpisode plays a whole episode when has_run_episode, its model calls through the caller's
    openai_base_url (a real interception endpoint in front of --inference) and its conversation holding
    every answer the agent got; UNIMPLEMENTED (NOT_SUPPORTED) otherwise."""
    found = Findings()
    notes = []
    for env in (await probe.info()).environments:
        task = await probe.first_task(env.name)
        start = env_pb.StartEpisode(env=env.name, task_id=task.task_id)
        if not env.has_run_episode:
            request = env_pb.RunEpisodeRequest(start=start, inference_address="127.0.0.1:1")
            got = await unary_outcome(probe.stub.RunEpisode(request, timeout=probe.timeout_s))
            notes.append(expect_error(found, got, Code.UNIMPLEMENTED, "NOT_SUPPORTED", env.name))
            continue
        if not probe.options.inference:
            notes.append(f"{env.name}: advertised; pass --inference ADDRESS to play one")
            continue
        played = await intercepted.play(probe.stub, start, probe.options.inference, probe.timeout_s)
        trajectory = played.trajectory
        found.check(trajectory.messages, f"{env.name}: RunEpisode returned a trajectory without messages")
        found.check(finite(trajectory.reward, trajectory.rewards), f"{env.name}: non-finite rewards")
        found.check(played.calls, f"{env.name}: the agent made no model call through openai_base_url")
        found.check(
            played.asked == len(played.calls), f"{env.name}: {played.asked - len(played.calls)} model calls failed"
        )
        # The returned conversation is the agent's: each answer it got is an assistant message, in order.
        answers = iter(m.content for m in trajectory.messages if m.role == "assistant")
        missing = [r.samples[0].text for r in played.calls if not any(a == r.samples[0].text for a in answers)]
        found.check(
            not missing,
            f"{env.name}: {len(missing)} of {len(played.calls)} model answers are not among the trajectory's "
            f"assistant messages in call order (first: {missing[:1]})",
        )
        notes.append(
            f"{env.name}: {len(played.calls)} model calls, {len(trajectory.messages)} messages, "
            f"reward {trajectory.reward:g}"
        )
    return found.verdict("; ".join(notes))


@check("concurrent-episodes", "3.6")
async def check_concurrent_episodes(probe: Probe) -> str:
    """Up to 100 episodes (at most the limit) run at once, and active_episodes returns to its baseline."""
    env, info = await probe.first_env(), await probe.info()
    baseline = await probe.active()
    n = min(CONCURRENT_EPISODES, info.limits.max_concurrent_episodes - baseline)
    if n < 1:
        raise Skipped(f"no room: {baseline} of {info.limits.max_concurrent_episodes} episodes in use")
    tasks = await probe.tasks(env.name, n)

    async def one(i: int) -> None:
        played = await play(probe, env, tasks[i % len(tasks)])
        found = Findings()
        await expect_ok_end(played.call, found)
        found.verdict("")

    start = time.monotonic()
    outcomes = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    elapsed = time.monotonic() - start
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    expect(not errors, f"{len(errors)} of {n} episodes failed; first: {describe_error(errors[0]) if errors else ''}")
    settled = await probe.settle(baseline)
    return f"{n} episodes of {env.name} in {elapsed:.2f} s; active back to {baseline} after {settled:.2f} s"


@check("episode-limit", "3.6")
async def check_episode_limit(probe: Probe) -> str:
    """One episode over limits.max_concurrent_episodes is RESOURCE_EXHAUSTED (EPISODE_LIMIT); the others
    keep playing."""
    env, info = await probe.first_env(), await probe.info()
    limit = info.limits.max_concurrent_episodes
    if limit > MAX_LIMIT_PROBED:
        raise Skipped(f"max_concurrent_episodes {limit} > {MAX_LIMIT_PROBED}: too many streams to open for a check")
    baseline = await probe.active()
    task = await probe.first_task(env.name)
    found = Findings()
    streams = [probe.stream() for _ in range(limit - baseline)]
    try:
        started = await asyncio.gather(
            *(s.start(start_request(env.name, task.task_id).start) for s in streams), return_exceptions=True
        )
        errors = [r for r in started if isinstance(r, BaseException)]
        expect(
            not errors,
            f"{len(errors)} of {len(streams)} episodes below the limit failed: "
            f"{describe_error(errors[0]) if errors else ''}",
        )
        active = await probe.active()
        found.check(active == limit, f"active_episodes is {active} with {limit} episodes open")
        over = await final_outcome(probe.episode(), start_request(env.name, task.task_id))
        detail = expect_error(found, over, Code.RESOURCE_EXHAUSTED, "EPISODE_LIMIT", f"episode {limit + 1}")
        step = await streams[0].act(next(policy(env.tools, task.answer)))
        found.check(step.turn == 1, "an episode under the limit stopped answering")
    finally:
        for s in streams:
            s.end()
    settled = await probe.settle(baseline, within_s=max(5.0, limit / 100))
    return found.verdict(f"{limit} open; {detail}; active back to {baseline} after {settled:.2f} s")


@check("cancel-mid-episode", "3.4")
async def check_cancel_mid_episode(probe: Probe) -> str:
    """A cancelled stream ends its episode: active_episodes goes up while it is open and back down after."""
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


@check("start-errors", "3.2")
async def check_start_errors(probe: Probe) -> str:
    """A bad `start` ends the stream with its status and reason: unknown env, split or task, empty env, no
    task, an inline task without prompt."""
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    found = Findings()
    cases = [
        ("unknown env", start_request("no-such-env-xyz", "t"), Code.NOT_FOUND, "UNKNOWN_ENVIRONMENT"),
        ("empty env", start_request("", task.task_id), Code.INVALID_ARGUMENT, "NO_ENVIRONMENT"),
        ("unknown task", start_request(env.name, "no-such-task-xyz"), Code.NOT_FOUND, "UNKNOWN_TASK"),
        ("unknown split", start_request(env.name, task.task_id, split="no-such-split-xyz"), Code.NOT_FOUND,
         "UNKNOWN_SPLIT"),
        ("no task", start_request(env.name), Code.INVALID_ARGUMENT, "NO_TASK"),
        ("inline task without prompt", start_request(env.name, task=msg_pb.Task(task_id="x", answer="1")),
         Code.INVALID_ARGUMENT, "INVALID_TASK"),
    ]  # fmt: skip
    seen = [
        expect_error(found, await final_outcome(probe.episode(), request), code, reason, what)
        for what, request, code, reason in cases
    ]
    return found.verdict("; ".join(seen))


@check("stream-order", "3.1")
async def check_stream_order(probe: Probe) -> str:
    """An action before `start` is NOT_STARTED; a second `start` is ALREADY_STARTED; an action after done
    is EPISODE_DONE."""
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    found = Findings()
    first = expect_error(
        found, await final_outcome(probe.episode(), action_request(text("hi"))), Code.INVALID_ARGUMENT,
        "NOT_STARTED", "action first",
    )  # fmt: skip
    async with probe.started(env.name, task.task_id) as (stream, _):
        second = expect_error(
            found, await final_outcome(stream.call, start_request(env.name, task.task_id)), Code.INVALID_ARGUMENT,
            "ALREADY_STARTED", "second start",
        )  # fmt: skip
    played = await play(probe, env, task)
    try:
        after = expect_error(
            found, await final_outcome(played.call, action_request(text("one more"))), Code.FAILED_PRECONDITION,
            "EPISODE_DONE", f"action after {played.describe()}",
        )  # fmt: skip
    finally:
        played.call.cancel()
    return found.verdict(f"{first}; {second}; {after}")


@check("malformed", "2.3")
async def check_malformed(probe: Probe) -> str:
    """Bytes that are not the request message are INVALID_ARGUMENT (MALFORMED_REQUEST) on every method, and
    the server keeps serving."""
    found = Findings()
    raw_bytes = {"request_serializer": bytes, "response_deserializer": bytes}
    raw = {
        "Episode": probe.channel.stream_stream(f"/{SERVICE}/Episode", **raw_bytes),
        "Describe": probe.channel.unary_unary(f"/{SERVICE}/Describe", **raw_bytes),
        "ListTasks": probe.channel.unary_stream(f"/{SERVICE}/ListTasks", **raw_bytes),
        "Score": probe.channel.unary_unary(f"/{SERVICE}/Score", **raw_bytes),
    }
    seen = []
    for method, callable_ in raw.items():
        if method == "Episode":
            got = await final_outcome(callable_(timeout=probe.timeout_s), NOT_PROTOBUF)
        else:
            got = await unary_outcome(callable_(NOT_PROTOBUF, timeout=probe.timeout_s))
        seen.append(expect_error(found, got, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST", method))
    await probe.describe()
    return found.verdict("; ".join(seen) + "; Describe still answers")


@check("oversized", "3.6")
async def check_oversized(probe: Probe) -> str:
    """A message over limits.max_message_bytes is RESOURCE_EXHAUSTED, and the server keeps serving."""
    limit = (await probe.info()).limits.max_message_bytes
    if limit <= 0 or limit > MAX_OVERSIZED_BYTES:
        raise Skipped(f"max_message_bytes {limit}: not in 1..{MAX_OVERSIZED_BYTES}")
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    found = Findings()
    async with probe.started(env.name, task.task_id) as (stream, _):
        got = await final_outcome(stream.call, action_request(text("x" * (limit + 1))))
    # gRPC refuses the message before the server's code sees it: a transport status, no details
    detail = expect_error(found, got, Code.RESOURCE_EXHAUSTED, None, f"action of {limit + 1} bytes", details=False)
    await probe.describe()
    return found.verdict(f"{detail}; Describe still answers")


@check("deadline-exceeded", "3.5")
async def check_deadline_exceeded(probe: Probe) -> str:
    """The client's own deadline ends a silent episode with DEADLINE_EXCEEDED and frees it."""
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    baseline = await probe.active()
    found = Findings()
    async with probe.started(env.name, task.task_id, timeout_s=0.5) as (stream, _):
        got = await final_outcome(stream.call)
    detail = expect_error(found, got, Code.DEADLINE_EXCEEDED, None, "silent client, 0.5 s deadline", details=False)
    settled = await probe.settle(baseline)
    return found.verdict(f"{detail}; active back to {baseline} after {settled:.2f} s")


@check("idle-timeout", "3.5")
async def check_idle_timeout(probe: Probe) -> str:
    """A client silent for episode_idle_timeout_s (before start, after start, after done) gets
    DEADLINE_EXCEEDED (IDLE_TIMEOUT)."""
    idle = (await probe.info()).limits.episode_idle_timeout_s
    if idle <= 0:
        raise Skipped("the server has no idle timeout (episode_idle_timeout_s = 0)")
    if idle > probe.options.max_wait_s:
        raise Skipped(
            f"idle timeout {idle:g} s > --max-wait {probe.options.max_wait_s:g} s; rerun with --max-wait {idle + 5:g}"
        )
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    baseline = await probe.active()
    found = Findings()
    budget = idle + 10.0

    async def silent(what: str, *writes: env_pb.EpisodeRequest, after_done: bool = False) -> str:
        call = (await play(probe, env, task)).call if after_done else probe.episode(timeout_s=idle * 3 + 30)
        try:
            start = time.monotonic()
            got = await asyncio.wait_for(final_outcome(call, *writes), budget)
            waited = time.monotonic() - start
            found.check(
                waited >= idle * 0.5, f"{what}: closed after {waited:.2f} s, before the {idle:g} s idle timeout"
            )
            return expect_error(found, got, Code.DEADLINE_EXCEEDED, "IDLE_TIMEOUT", f"{what} ({waited:.1f} s)")
        except TimeoutError:
            found.check(False, f"{what}: still open {budget:g} s into a {idle:g} s idle timeout")
            return f"{what}: open"
        finally:
            call.cancel()

    seen = await asyncio.gather(
        silent("before start"),
        silent("after start", start_request(env.name, task.task_id)),
        silent("after done", after_done=True),
    )
    settled = await probe.settle(baseline)
    return found.verdict(f"{'; '.join(seen)}; active back to {baseline} after {settled:.2f} s")


@check("no-leak", "3.4")
async def check_no_leak(probe: Probe) -> str:
    """After all the checks, active_episodes is back to what it was before them."""
    expect(probe.baseline_active is not None, "no active_episodes reading from before the checks")
    assert probe.baseline_active is not None
    settled = await probe.settle(probe.baseline_active)
    return f"active_episodes {probe.baseline_active} as before the checks (settled in {settled:.2f} s)"


@check("drain", "8", last=True)
async def check_drain(probe: Probe) -> str:
    """On SIGTERM the server goes NOT_SERVING, refuses new episodes with UNAVAILABLE, lets an open one
    finish, then exits."""
    pid = probe.options.drain_pid
    if pid is None:
        raise Skipped("opt-in: pass --drain-pid PID to let conformance send the server SIGTERM (it stops the server)")
    env = await probe.first_env()
    task = await probe.first_task(env.name)
    found = Findings()
    stream = probe.stream()
    try:
        started = await stream.start(start_request(env.name, task.task_id).start)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        health = health_pb2_grpc.HealthStub(probe.channel)
        try:
            status = (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)).status
            found.check(status != SERVING, "health still SERVING 0.5 s after SIGTERM")
        except grpc.aio.AioRpcError:
            pass  # no longer accepting calls at all: not serving either
        refused = await final_outcome(probe.episode(timeout_s=5), start_request(env.name, task.task_id))
        # A server that answers the new episode itself says DRAINING; one whose gRPC library has
        # stopped taking calls answers at the transport: UNAVAILABLE either way.
        found.check(refused.code == Code.UNAVAILABLE, f"a new episode after SIGTERM got {refused}, not UNAVAILABLE")
        if refused.has_details:
            found.check(refused.reason == "DRAINING", f"a new episode after SIGTERM: reason {refused.reason!r}")
        played = 0
        actions = policy(started.tools, started.task.answer or task.answer)
        for _ in range(started.max_turns or env.max_turns):
            step = await stream.act(next(actions))
            played += 1
            if step.done:
                break
        found.check(step.done, "the open episode did not reach done after SIGTERM")
        await stream.finish(wait=True)
    finally:
        stream.end()
    gone = await wait_exit(pid, probe.timeout_s)
    found.check(gone, f"process {pid} still running {probe.timeout_s:g} s after its last episode ended")
    return found.verdict(f"new episode {refused.code.name}; open episode finished ({played} turn(s)); process exited")


async def wait_exit(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if zombie(pid):
            return True
        await asyncio.sleep(0.1)
    return False


def zombie(pid: int) -> bool:
    """An exited child its parent has not reaped yet still answers kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def describe_error(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return str(Outcome.of_error(e))
    if isinstance(e, RollmeshError):  # raised by the shared EpisodeStream for the server's status
        return f"{status_for(e).name} {e.reason}: {e}"
    return str(e) if isinstance(e, CheckFailed | Skipped) else f"{type(e).__name__}: {e}"
