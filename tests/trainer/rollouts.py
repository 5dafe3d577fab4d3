"""Scored trajectories from a real inference server's generations, without an orchestrator: the
exact prompt/completion tokens and sampler logprobs, a reward, group-relative advantages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from rollmesh import bus
from rollmesh.inference.client import InferenceClient
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

PROMPTS = ["What is 2 + 3?", "Say hello.", "Count to three.", "Name a colour."]


def length_reward(text: str, ids: Sequence[int]) -> float:
    """Rewards short answers: 1 for one token, 0 at eight and beyond."""
    return max(0.0, 1.0 - (len(ids) - 1) / 7)


async def generate_trajectories(
    client: InferenceClient,
    run_id: str,
    *,
    groups: int,
    group_size: int = 2,
    max_tokens: int = 8,
    temperature: float = 1.0,
    reward: Callable[[str, Sequence[int]], float] = length_reward,
    env: str = "test-env",
    seed: int = 0,
) -> list[traj_pb.Trajectory]:
    out = []
    for g in range(groups):
        messages = [{"role": "user", "content": PROMPTS[g % len(PROMPTS)]}]
        resp = await client.generate(
            messages, n=group_size, max_tokens=max_tokens, temperature=temperature, logprobs=True, seed=seed + g
        )
        group_id = uuid.uuid4().hex[:8]
        group = []
        for sample in resp.samples:
            t = traj_pb.Trajectory(
                trajectory_id=f"{run_id}-{g}-{sample.index}-{uuid.uuid4().hex[:6]}",
                group_id=group_id,
                run_id=run_id,
                reward=reward(sample.text, sample.completion_ids),
                stop_reason=traj_pb.STOP_REASON_DONE,
            )
            t.task.env = env
            t.provenance.env_name = env
            t.provenance.policy_version = sample.policy_version
            t.provenance.sampling.temperature = temperature
            t.turns.append(
                traj_pb.Turn(
                    prompt_ids=resp.prompt_ids,
                    completion_ids=sample.completion_ids,
                    completion_logprobs=sample.logprobs,
                    completion_mask=[1] * len(sample.completion_ids),
                    finish_reason=sample.finish_reason,
                    policy_version=sample.policy_version,
                )
            )
            group.append(t)
        mean = sum(t.reward for t in group) / len(group)
        for t in group:
            t.advantage = t.reward - mean
        out += group
    return out


async def publish(nats_url: str, trajectories: Sequence[traj_pb.Trajectory]) -> None:
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        pub = bus.Publisher(nc, js)
        for t in trajectories:
            assert await pub.publish_trajectory(t)
    finally:
        await nc.close()
