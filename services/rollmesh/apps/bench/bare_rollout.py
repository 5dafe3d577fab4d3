"""The transport's limit for `bench rollouts`: the messages of a real episode of the run, sent the
way the mesh sends them, over bare grpc.aio and JetStream, with nothing done with them.

An "env" process answers an Episode-shaped bidirectional stream with the environment's replies in
order; an "inference" process answers a Generate-shaped unary call with that turn's response. The
client plays each episode as the orchestrator does: open the stream, exchange the start, then per
turn one unary call and one action, half-close, and publish the trajectory's bytes to JetStream
with a Nats-Msg-Id, waiting for the ack. Raw bytes both ways (no protobuf, servicer, interceptor,
environment or model), the rollmesh servers' own channel and server options.

    python -m rollmesh.apps.bench.bare_rollout env|inference FILE   (FILE: the recorded messages)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import grpc.aio

from ... import bus, convert
from ...env.loader import load_environments
from ...proto.v1 import environment_pb2 as env_pb
from ...proto.v1 import inference_pb2 as inf_pb
from ...proto.v1 import trajectory_pb2 as traj_pb
from ...rpc import RpcLimits

SERVICE = "rollmesh.bench.BareRollout"
LIMITS = RpcLimits().with_headroom_for(1024)
STREAM = bus.StreamSpec("BARE_ROLLOUTS", ("bench.bare.rollouts.>",), duplicate_window_s=bus.DAY_S)


@dataclass(frozen=True)
class EpisodeMessages:
    """One episode's messages as serialized bytes, in the order they are sent."""

    env_requests: list[bytes]  # the start, then one action per turn
    env_replies: list[bytes]  # started, then one step per action
    generate_requests: list[bytes]  # one per turn
    generate_replies: list[bytes]
    trajectory: bytes

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({k: [b.hex() for b in v] if isinstance(v, list) else v.hex() for k, v in asdict(self).items()}, f)

    @classmethod
    def load(cls, path: str) -> EpisodeMessages:
        with open(path) as f:
            raw: dict[str, Any] = json.load(f)
        return cls(
            **{k: [bytes.fromhex(x) for x in v] if isinstance(v, list) else bytes.fromhex(v) for k, v in raw.items()}
        )


async def record(target: str, t: traj_pb.Trajectory, replies: Sequence[str]) -> EpisodeMessages:
    """The messages of trajectory `t` (a rollout of the mesh run), rebuilt as the environment
    server, the orchestrator and the inference server build them: the environment's answers by
    replaying the trajectory's actions in-process, the model calls from its turns; `replies`: the
    scripted model's text per turn."""
    env = load_environments(target, {})[0]
    task = next(x for x in env.tasks(t.task.split or None) if x.task_id == t.task.task_id)
    episode = env.episode(task, seed=t.provenance.seed)
    opening = await episode.start()
    start = env_pb.StartEpisode(env=env.name, task_id=t.task.task_id, split=t.task.split, seed=t.provenance.seed)
    start.episode_id = f"{t.trajectory_id}.1"
    env_requests = [env_pb.EpisodeRequest(start=start).SerializeToString()]
    started = env_pb.EpisodeStarted(
        episode_id=start.episode_id,
        task=convert.task_to_pb(task, env.name),
        messages=convert.messages_to_pb(opening),
        tools=[convert.tool_spec_to_pb(s) for s in env.tool_specs()],
        max_turns=env.max_turns,
    )
    env_replies = [env_pb.EpisodeResponse(started=started).SerializeToString()]
    generate_requests: list[bytes] = []
    generate_replies: list[bytes] = []
    actions = [m for m in t.messages if m.role == "assistant"]
    previous: traj_pb.Turn | None = None
    step = env_pb.Step()
    for k, (turn, action) in enumerate(zip(t.turns, actions, strict=False)):
        request = inf_pb.GenerateRequest(sampling=t.provenance.sampling, session_id=t.trajectory_id)
        if previous is None:
            request.tokens.prompt_ids.extend(turn.prompt_ids)
        else:
            nt = request.next_turn
            nt.prompt_ids.extend(previous.prompt_ids)
            nt.completion_ids.extend(previous.completion_ids)
            nt.assistant.CopyFrom(actions[k - 1])
            nt.messages.extend(step.messages)
        generate_requests.append(request.SerializeToString())
        sample = inf_pb.Sample(
            text=replies[min(k, len(replies) - 1)],
            completion_ids=turn.completion_ids,
            logprobs=turn.completion_logprobs,
            finish_reason=turn.finish_reason,
            policy_version=turn.policy_version,
        )
        usage = inf_pb.Usage(prompt_tokens=len(turn.prompt_ids), completion_tokens=len(turn.completion_ids))
        reply = inf_pb.GenerateResponse(model=t.provenance.model, prompt_ids=turn.prompt_ids, samples=[sample])
        reply.usage.CopyFrom(usage)
        generate_replies.append(reply.SerializeToString())
        env_requests.append(env_pb.EpisodeRequest(action=env_pb.Action(message=action)).SerializeToString())
        step = convert.step_to_pb(await episode.step(convert.message_from_pb(action)))
        env_replies.append(env_pb.EpisodeResponse(step=step).SerializeToString())
        previous = turn
    await episode.close()
    return EpisodeMessages(env_requests, env_replies, generate_requests, generate_replies, t.SerializeToString())


# ---- the servers -----------------------------------------------------------------------------


async def serve(role: str, messages: EpisodeMessages, host: str = "127.0.0.1") -> None:
    env_replies = messages.env_replies
    by_request = dict(zip(messages.generate_requests, messages.generate_replies, strict=True))

    async def episode(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        i = 0
        async for _ in requests:
            yield env_replies[min(i, len(env_replies) - 1)]
            i += 1

    async def generate(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return by_request[request]

    handlers = {
        "env": {"Episode": grpc.stream_stream_rpc_method_handler(episode)},
        "inference": {"Generate": grpc.unary_unary_rpc_method_handler(generate)},
    }[role]
    server = grpc.aio.server(options=LIMITS.server_options())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(f"bare {role} server on {host}:{port}: recorded replies", file=sys.stderr, flush=True)  # for harness
    await server.wait_for_termination()


# ---- the client ------------------------------------------------------------------------------


async def run(
    env_address: str, inference_address: str, nats_url: str, messages: EpisodeMessages, episodes: int, concurrency: int
) -> dict[str, float]:
    """Plays `episodes` episodes, `concurrency` at a time: episodes/s and this process's CPU s."""
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js, (STREAM,))
    env_channel = grpc.aio.insecure_channel(env_address, options=LIMITS.channel_options())
    inference_channel = grpc.aio.insecure_channel(inference_address, options=LIMITS.channel_options())
    episode_call = env_channel.stream_stream(f"/{SERVICE}/Episode")
    generate_call = inference_channel.unary_unary(f"/{SERVICE}/Generate")
    semaphore = asyncio.Semaphore(concurrency)
    m = messages
    tag = os.urandom(4).hex()

    async def one(i: int) -> None:
        async with semaphore:
            call = episode_call()
            await call.write(m.env_requests[0])
            await call.read()
            for request, action in zip(m.generate_requests, m.env_requests[1:], strict=False):
                await generate_call(request, timeout=60)
                await call.write(action)
                await call.read()
            await call.done_writing()
            ack = await js.publish(f"bench.bare.rollouts.{tag}", m.trajectory, headers={"Nats-Msg-Id": f"{tag}-{i}"})
            assert not ack.duplicate

    try:
        await asyncio.gather(*(one(-1 - i) for i in range(min(episodes, 64))))  # warm-up
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(episodes)))
        wall = time.perf_counter() - t0
        return {"eps": episodes / wall, "cpu_s": time.process_time() - cpu0}
    finally:
        await env_channel.close()
        await inference_channel.close()
        await js.delete_stream(STREAM.name)
        await nc.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], EpisodeMessages.load(sys.argv[2])))
