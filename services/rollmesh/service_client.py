"""What every rollmesh client shares: one channel to one server (by address, or a random live
replica found in the registry), a default deadline per call, and gRPC errors raised as domain
errors (rollmesh.errors, with their reasons)."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import grpc

from .rpc import RpcLimits, create_channel
from .rpc_errors import error_from_rpc


class ServiceClient:
    stub_class: ClassVar[type]
    kind: ClassVar[str]  # "env", "inference" or "rubric": the name its servers' certificates carry

    def __init__(self, channel: grpc.aio.Channel, address: str, *, timeout_s: float) -> None:
        self.channel = channel
        self.address = address
        self.timeout_s = timeout_s  # the deadline of a call that gives none
        self.stub: Any = self.stub_class(channel)

    @classmethod
    def open(cls, address: str, *, limits: RpcLimits = RpcLimits(), **kwargs: Any) -> Self:  # noqa: B008
        return cls(create_channel(address, kind=cls.kind, limits=limits), address, **kwargs)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout_s or self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
