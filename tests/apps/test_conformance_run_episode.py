"""The conformance suite's RunEpisode check against real servers: chain-arithmetic (an agent
program) passes it with a real inference server behind a real interception endpoint; a harness
that hides what its agent was told fails it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from rollmesh.apps.conformance.checks import CheckFailed, check_run_episode
from rollmesh.apps.conformance.probe import Options, Probe
from rollmesh.env import AgentContext, EpisodeResult, MultiTurnEnv, Task
from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer
from rollmesh.inference.backends.scripted import ScriptedBackend
from rollmesh.inference.server import InferenceServer


class ForgetfulEnv(MultiTurnEnv):
    """Runs the agent program, then returns a conversation of its own making."""

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        chain = load_environments("rollmesh.examples.chain_arithmetic", {"num_train": 1, "num_test": 1})[0]
        await chain.run_episode(chain.tasks("test")[0], agent)
        return EpisodeResult(messages=[*task.prompt, {"role": "assistant", "content": "42"}])


@pytest.fixture(scope="module")
async def inference() -> AsyncIterator[str]:
    server = InferenceServer(ScriptedBackend(["12", "36", "30"]))
    await server.start()
    yield server.address
    await server.stop(0)


async def _check(env, **options) -> str:
    async with EnvironmentServer([env]) as server:
        probe = Probe(server.address, Options(timeout_s=30, **options))
        try:
            return await check_run_episode(probe)
        finally:
            await probe.close()


async def test_an_agent_program_environment_passes(inference: str) -> None:
    env = load_environments("rollmesh.examples.chain_arithmetic", {"num_train": 2, "num_test": 2})[0]
    detail = await _check(env, inference=inference)
    assert detail.startswith("chain-arithmetic: 3 model calls, 7 messages"), detail
    skipped = await _check(env)  # no --inference: said, not failed
    assert "pass --inference" in skipped


async def test_a_harness_that_hides_its_agents_conversation_fails(inference: str) -> None:
    env = ForgetfulEnv(name="forgetful", tasks=[{"task_id": "f0", "question": "What is 7 + 5?"}])
    with pytest.raises(CheckFailed, match="3 of 3 model answers are not among"):
        await _check(env, inference=inference)
