"""RunEpisode as the conformance suite plays it: a real interception endpoint (the orchestrator's)
whose model calls go to the `--inference` server, each call kept, so that the check can hold the
environment's trajectory against what its agent was really told."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...orchestrator.config import InterceptConfig
from ...orchestrator.interception import InterceptionEndpoint
from ...proto.v1 import environment_pb2 as env_pb
from ...proto.v1 import inference_pb2 as inf_pb
from ...proto.v1 import inference_pb2_grpc as inf_grpc
from ...proto.v1 import messages_pb2 as msg_pb
from ...proto.v1 import trajectory_pb2 as traj_pb
from ...rpc import create_channel
from ...rpc_errors import error_from_rpc

SAMPLING = msg_pb.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=32, n=1, logprobs=True, seed=0)
MAX_CALLS = 64


@dataclass
class Played:
    trajectory: traj_pb.Trajectory
    calls: list[inf_pb.GenerateResponse] = field(default_factory=list)  # in the order they were answered
    asked: int = 0  # calls the endpoint took (answered or not)


async def play(stub, start: env_pb.StartEpisode, inference: str, timeout_s: float) -> Played:
    """One RunEpisode against `inference` through a fresh loopback interception endpoint."""
    calls: list[inf_pb.GenerateResponse] = []
    endpoint = await InterceptionEndpoint(InterceptConfig()).start()
    channel = create_channel(inference, kind="inference")
    model = inf_grpc.InferenceServiceStub(channel)

    async def generate(request: inf_pb.GenerateRequest) -> inf_pb.GenerateResponse:
        try:
            response = await model.Generate(request, timeout=timeout_s)
        except Exception as e:
            raise error_from_rpc(e) from e
        calls.append(response)
        return response

    try:
        session = endpoint.open(generate, SAMPLING, max_calls=MAX_CALLS)
        request = env_pb.RunEpisodeRequest(
            start=start, sampling=SAMPLING, openai_base_url=endpoint.base_url, session_key=session.key
        )
        response = await stub.RunEpisode(request, timeout=timeout_s)
        return Played(response.trajectory, calls, session.calls)
    finally:
        await endpoint.stop()
        await channel.close()
