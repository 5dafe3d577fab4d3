"""RubricClient: the async Python client of a rubric server.

async with await RubricClient.connect("localhost:50071") as rubric:
    result = await rubric.score("math", trajectory)                 # RewardResult
    results, advantages = await rubric.score_group("math", group)
    print(result.rewards, result.reward, result.errors)
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from .. import registry
from ..errors import InvalidArgumentError
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import rubric_pb2 as rubric_pb
from ..proto.v1 import rubric_pb2_grpc as rubric_grpc
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..rpc import RpcLimits
from ..service_client import ServiceClient
from .config import RubricConfig, to_spec

SpecLike = rubric_pb.RubricSpec | RubricConfig | None


def _spec(spec: SpecLike) -> rubric_pb.RubricSpec | None:
    return to_spec(spec) if isinstance(spec, RubricConfig) else spec


class RubricClient(ServiceClient):
    stub_class = rubric_grpc.RubricServiceStub
    kind = "rubric"

    def __init__(self, channel: grpc.aio.Channel, address: str, *, timeout_s: float = 120.0) -> None:
        super().__init__(channel, address, timeout_s=timeout_s)

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        *,
        nats_url: str | None = None,
        timeout_s: float = 120.0,
        limits: RpcLimits = RpcLimits(),  # noqa: B008
    ) -> RubricClient:
        """Connect by address, or to a random live rubric server found in the registry."""
        if address is None:
            if not nats_url:
                raise InvalidArgumentError("connect needs an address or a NATS URL")
            address = await resolve(nats_url)
        return cls.open(address, limits=limits, timeout_s=timeout_s)

    async def score(
        self, rubric: str, trajectory: traj_pb.Trajectory, *, spec: SpecLike = None
    ) -> rubric_pb.RewardResult:
        """Scores one trajectory with the rubric named `rubric`, or with the inline `spec`."""
        request = rubric_pb.ScoreTrajectoryRequest(rubric=rubric, trajectory=trajectory)
        if (s := _spec(spec)) is not None:
            request.spec.CopyFrom(s)
        return (await self._unary(self.stub.ScoreTrajectory, request)).result

    async def score_group(
        self, rubric: str, trajectories: Sequence[traj_pb.Trajectory], *, spec: SpecLike = None
    ) -> tuple[list[rubric_pb.RewardResult], list[float]]:
        """Scores a group of rollouts of one task; returns (results, advantages), in order."""
        request = rubric_pb.ScoreGroupRequest(rubric=rubric, trajectories=trajectories)
        if (s := _spec(spec)) is not None:
            request.spec.CopyFrom(s)
        response = await self._unary(self.stub.ScoreGroup, request)
        return list(response.results), list(response.advantages)

    async def list_rubrics(self) -> list[rubric_pb.RubricSpec]:
        return list((await self._unary(self.stub.ListRubrics, rubric_pb.ListRubricsRequest())).rubrics)


async def resolve(nats_url: str) -> str:
    """Address of a random live rubric server, from the registry."""
    from .server import REGISTRY_NAME

    return await registry.resolve(nats_url, bus_pb.SERVICE_KIND_RUBRIC, REGISTRY_NAME, "rubric server")
