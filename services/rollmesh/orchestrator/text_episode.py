"""One rollout with a model that gives no token ids (an inference server whose capabilities lack
`token_ids`, e.g. the `openai` backend in front of a hosted API): each turn sends the whole
conversation as chat messages and takes the answer's text.

Each model call is still one Turn (finish reason, policy version) but without token ids or
logprobs, and the trajectory's provenance says `text_only` (and which endpoint answered): it is
scored and reported like any other, and the trainer refuses it (TEXT_ONLY) instead of training on
tokens nobody sampled. EpisodeRunner dispatches here; failures and retries are its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..env.stream import EpisodeStream
from ..proto.v1 import environment_pb2 as env_pb
from .toolcalls import assistant_message

if TYPE_CHECKING:
    from .episode_runner import EpisodeOutcome, EpisodeRunner, Rollout
    from .routing import EnvReplica


def text_only(runner: EpisodeRunner) -> bool:
    """True when the run's inference servers all answer text only."""
    active = runner.inference_pool.active
    return bool(active) and not any(r.token_ids for r in active)


async def run_text_episode(
    runner: EpisodeRunner,
    rollout: Rollout,
    env: EnvReplica,
    outcome: EpisodeOutcome,
    start: env_pb.StartEpisode,
    state: Any,
) -> None:
    """The episode on `env`, model calls as chat messages; `state` is the runner's sticky replica."""
    cfg = runner.config
    traj = outcome.trajectory
    timing = traj.timing
    p = traj.provenance
    p.text_only = True
    p.sampling.logprobs = False  # logprobs without token ids train nothing
    stream = EpisodeStream(env.stub, timeout_s=cfg.episode_timeout_s + 5.0, step_timeout_s=cfg.step_timeout_s)
    done = False
    try:
        started = await runner._env_call(stream.start(start), timing)
        traj.messages.extend(started.messages)
        turn_index = 0
        while True:
            turn_index += 1
            request = runner._request(rollout, p.sampling)
            request.chat.messages.extend(traj.messages)
            request.chat.tools.extend(started.tools)
            if rollout.sampling_seed is not None:
                request.sampling.seed = (rollout.sampling_seed + turn_index) % (2**63)
            generated = await runner._generate(state, request, timing)
            sample = generated.samples[0]
            outcome.record_call(generated, runner.stats, token_ids=False)
            action = assistant_message(sample.text, list(sample.tool_calls), call_prefix=f"call_{turn_index}")
            step = await runner._env_call(stream.act(action), timing)
            traj.messages.append(action)
            traj.messages.extend(step.messages)
            if step.done:
                done = True
                outcome.record_done(step)
                break
    except BaseException:
        stream.end()
        raise
    outcome.record_replica(state.replica)
    if done:
        await stream.finish()
    else:
        stream.end()
