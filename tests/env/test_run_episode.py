"""The Python SDK's RunEpisode (docs/protocol.md section 7) on a real gRPC server: an environment's
own agent loop (a function, an external program) against a real OpenAI-compatible endpoint (the
orchestrator's interception endpoint in front of a scripted inference server), with the server's
limits, errors and cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from rollmesh.env import AgentContext, EpisodeResult, MultiTurnEnv, Rubric, SingleTurnEnv, Task
from rollmesh.env.server import EnvironmentServer, EpisodeLimits
from rollmesh.inference.backends.scripted import ScriptedBackend
from rollmesh.inference.server import InferenceServer
from rollmesh.orchestrator.config import InterceptConfig
from rollmesh.orchestrator.interception import InterceptionEndpoint, Session
from rollmesh.proto.v1 import environment_pb2 as env_pb
from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_from_rpc

TASKS = [{"task_id": "t0", "question": "Say hi.", "answer": "hi"}]


def said_hi(completion: list[dict]) -> float:
    return float(any("hi" in (m.get("content") or "") for m in completion if m["role"] == "assistant"))


def _chat(agent: AgentContext, messages: list[dict]) -> str:
    """One model call as any program would make it: plain HTTP, the session key as API key."""
    request = urllib.request.Request(
        f"{agent.openai_base_url}/chat/completions",
        data=json.dumps({"model": agent.model, "messages": messages}).encode(),
        headers={"Authorization": f"Bearer {agent.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["choices"][0]["message"]["content"]


class TwoCallEnv(MultiTurnEnv):
    """An agent function: two model calls, the second seeing the first answer."""

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        messages = list(task.prompt)
        for _ in range(2):
            text = await asyncio.to_thread(_chat, agent, messages)
            messages.append({"role": "assistant", "content": text})
            messages.append({"role": "user", "content": "Again."})
        agent.state["metrics"] = {"calls": 2.0}
        return EpisodeResult(messages=messages[:-1], rewards=agent.options.get("rewards"))


class ProgramEnv(MultiTurnEnv):
    """Runs the Python code of the start options as its agent program."""

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        timeout_s = agent.options.get("timeout_s", 30.0)
        result = await agent.run_program([sys.executable, "-c", agent.options["code"]], timeout_s=timeout_s)
        return EpisodeResult(messages=[*task.prompt, {"role": "assistant", "content": result.stdout.strip()}])


@dataclass
class Mesh:
    stub: env_grpc.EnvironmentServiceStub
    endpoint: InterceptionEndpoint
    server: EnvironmentServer
    model: inf_grpc.InferenceServiceStub

    def request(self, env: str, **options: object) -> tuple[env_pb.RunEpisodeRequest, Session]:
        async def generate(request):
            return await self.model.Generate(request, timeout=10)

        session = self.endpoint.open(generate, msg_pb.SamplingParams(max_tokens=8), max_calls=4)
        start = env_pb.StartEpisode(env=env, task_id="t0", seed=1)
        start.options.update(options)
        request = env_pb.RunEpisodeRequest(start=start, openai_base_url=self.endpoint.base_url, session_key=session.key)
        return request, session

    async def error(self, request: env_pb.RunEpisodeRequest):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.stub.RunEpisode(request, timeout=30)
        return caught.value.code(), error_from_rpc(caught.value)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    common = {"tasks": TASKS, "reward": Rubric([said_hi])}
    envs = [
        TwoCallEnv(name="two-calls", **common),
        ProgramEnv(name="program", **common),
        SingleTurnEnv(name="plain", **common),
    ]
    inference = InferenceServer(ScriptedBackend(["hi there", "hi again"]))
    await inference.start()
    try:
        model_channel = create_channel(inference.address)
        endpoint = await InterceptionEndpoint(InterceptConfig()).start()
        server = EnvironmentServer(envs, limits=EpisodeLimits(run_timeout_s=20.0))
        await server.start()
        channel = create_channel(server.address)
        try:
            yield Mesh(
                env_grpc.EnvironmentServiceStub(channel), endpoint, server, inf_grpc.InferenceServiceStub(model_channel)
            )
        finally:
            await channel.close()
            await server.stop(0)
            await endpoint.stop()
            await model_channel.close()
    finally:
        await inference.stop(0)


async def wait_until(predicate, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (process and counter state: nothing to wait on)
            await asyncio.sleep(0.02)


async def test_describe_says_which_environments_run_episodes(mesh: Mesh) -> None:
    info = await mesh.stub.Describe(env_pb.DescribeRequest(), timeout=5)
    assert {e.name: e.has_run_episode for e in info.environments} == {
        "two-calls": True,
        "program": True,
        "plain": False,
    }
    request, _ = mesh.request("plain")
    code, error = await mesh.error(request)
    assert code == grpc.StatusCode.UNIMPLEMENTED and error.reason == "NOT_SUPPORTED"


async def test_an_agent_function_plays_and_the_rubric_scores_it(mesh: Mesh) -> None:
    request, session = mesh.request("two-calls")
    t = (await mesh.stub.RunEpisode(request, timeout=30)).trajectory
    assert [(m.role, m.content) for m in t.messages] == [
        ("user", "Say hi."),
        ("assistant", "hi there"),
        ("user", "Again."),
        ("assistant", "hi again"),
    ]
    assert dict(t.rewards) == {"said_hi": 1.0} and t.reward == 1.0  # the environment's rubric
    assert t.metrics["turns"] == 2.0 and t.metrics["calls"] == 2.0
    assert t.stop_reason == traj_pb.STOP_REASON_DONE and not t.turns  # turns are the caller's record
    assert session.calls == 2
    request, _ = mesh.request("two-calls", rewards={"said_hi": 0.25})  # the agent's own rewards win
    t = (await mesh.stub.RunEpisode(request, timeout=30)).trajectory
    assert dict(t.rewards) == {"said_hi": 0.25} and t.reward == 0.25
    assert mesh.server.servicer.active == 0


async def test_an_agent_program_gets_the_endpoint_in_its_environment(mesh: Mesh) -> None:
    code = "import os; e = os.environ; print(e['OPENAI_BASE_URL'], e['OPENAI_API_KEY'] != '', e['OPENAI_MODEL'] == '')"
    request, _ = mesh.request("program", code=code)
    t = (await mesh.stub.RunEpisode(request, timeout=30)).trajectory
    assert t.messages[-1].content == f"{mesh.endpoint.base_url} True True"


async def test_a_failing_agent_program_is_environment_failed_with_the_end_of_its_stderr(mesh: Mesh) -> None:
    code = "import sys; sys.stderr.write('x' * 200000 + '\\nTraceback: the agent broke'); sys.exit(3)"
    request, _ = mesh.request("program", code=code)
    status, error = await mesh.error(request)
    assert status == grpc.StatusCode.INTERNAL and error.reason == "ENVIRONMENT_FAILED"
    assert "exited with status 3" in str(error) and str(error).endswith("the agent broke")
    assert len(str(error)) < 4000  # a tail, not the whole stream


async def test_an_unreachable_model_endpoint_is_unavailable(mesh: Mesh) -> None:
    request, _ = mesh.request("program", code="raise SystemExit(1)")
    request.openai_base_url = "http://127.0.0.1:9/v1"  # nothing listens there
    status, error = await mesh.error(request)
    assert status == grpc.StatusCode.UNAVAILABLE and error.reason == "INFERENCE_UNREACHABLE"
    request.openai_base_url = ""
    status, error = await mesh.error(request)
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "MISSING_FIELD"
    request.openai_base_url = "file:///etc/passwd"
    status, error = await mesh.error(request)
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "INVALID_FIELD"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_a_caller_that_goes_away_stops_the_agent_program(mesh: Mesh, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    request, _ = mesh.request("program", code=code)
    # a plain channel: a client interceptor (OpenTelemetry's) keeps a unary cancel from the server
    async with grpc.aio.insecure_channel(mesh.server.address) as channel:
        call = env_grpc.EnvironmentServiceStub(channel).RunEpisode(request, timeout=30)
        await _cancel_once_started(call, pid_file, mesh)


async def _cancel_once_started(call, pid_file: Path, mesh: Mesh) -> None:
    await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
    pid = int(await asyncio.to_thread(pid_file.read_text))
    assert _alive(pid) and mesh.server.servicer.active == 1
    call.cancel()
    await wait_until(lambda: not _alive(pid) and mesh.server.servicer.active == 0, timeout_s=10)


async def test_an_agent_program_past_its_timeout_is_stopped(mesh: Mesh, tmp_path: Path) -> None:
    request, _ = mesh.request("program", code="import time; time.sleep(60)", timeout_s=0.5)
    status, error = await mesh.error(request)
    assert status == grpc.StatusCode.INTERNAL and error.reason == "ENVIRONMENT_FAILED"
    assert "did not finish within 0.5 s" in str(error)
    assert mesh.server.servicer.active == 0


async def test_what_an_agent_program_leaves_running_is_stopped_with_it(mesh: Mesh, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import subprocess; p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid))"
    request, _ = mesh.request("program", code=code)
    await mesh.stub.RunEpisode(request, timeout=30)
    pid = int(await asyncio.to_thread(pid_file.read_text))
    await wait_until(lambda: not _alive(pid), timeout_s=10)
