"""The rubric server: a thin gRPC adapter over RubricBook.

Limits: message size (gRPC), group size, functions per inline spec, concurrent RPCs
(RESOURCE_EXHAUSTED beyond), and a deadline on every call (the client's, else the configured
default: DEADLINE_EXCEEDED when scoring overruns it).

Trust: an inline spec may only name addresses on the service's allow-list (addresses.py), and
results tell failures of judges and environment servers in fixed texts, never in the upstream's
own words (upstream.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from .. import __version__
from ..errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
)
from ..hosting import HostedServer
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import rubric_pb2 as rubric_pb
from ..proto.v1 import rubric_pb2_grpc as rubric_grpc
from ..registry import record_for
from ..rpc import RpcLimits, create_server
from ..rpc_errors import abort
from .addresses import AddressPolicy, config_addresses
from .config import RubricServiceConfig, ServerConfig
from .scoring import CompiledRubric, RubricBook

log = logging.getLogger(__name__)

SERVICE_NAME = rubric_pb.DESCRIPTOR.services_by_name["RubricService"].full_name
REGISTRY_NAME = "rubric"
T = TypeVar("T")


@dataclass(frozen=True)
class RubricLimits:
    max_concurrent_rpcs: int = 256
    max_group_size: int = 1024
    max_functions: int = 64
    default_deadline_s: float = 300.0

    @classmethod
    def of(cls, cfg: ServerConfig) -> RubricLimits:
        return cls(cfg.max_concurrent_rpcs, cfg.max_group_size, cfg.max_functions, cfg.default_deadline_s)


class RubricServicer(rubric_grpc.RubricServiceServicer):
    def __init__(
        self, book: RubricBook, *, limits: RubricLimits = RubricLimits(), addresses: AddressPolicy | None = None
    ) -> None:
        self.book = book
        self.limits = limits
        self.addresses = addresses or AddressPolicy(
            config_addresses(book.configured()), nats_url=book.resources.nats_url
        )
        self.instance_id = uuid.uuid4().hex[:12]
        self.active = 0
        self.draining = False

    async def _rubric(self, name: str, spec: rubric_pb.RubricSpec, has_spec: bool) -> CompiledRubric:
        if has_spec and spec.functions:
            if len(spec.functions) > self.limits.max_functions:
                raise InvalidArgumentError(
                    f"inline spec has {len(spec.functions)} functions; the limit is {self.limits.max_functions}",
                    reason="TOO_MANY_FUNCTIONS",
                    metadata={"limit": str(self.limits.max_functions)},
                )
            # Every call, not once per compiled spec: a server that left the registry is off the list.
            await self.addresses.check(spec)
            if not spec.name and name:
                named = rubric_pb.RubricSpec()
                named.CopyFrom(spec)
                named.name = name
                spec = named
            return self.book.compile(spec)
        if has_spec:
            raise InvalidArgumentError("the inline rubric spec has no functions", reason="BAD_RUBRIC")
        if not name:
            raise InvalidArgumentError(
                f"name a rubric ({self.book.names or 'none configured'}) or send an inline spec", reason="NO_RUBRIC"
            )
        return self.book.get(name)

    async def _serve(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        """Admission, deadline and error mapping shared by the scoring RPCs."""
        try:
            if self.draining:
                raise UnavailableError(
                    "server is shutting down; send the request to another replica", reason="DRAINING"
                )
            if self.active >= self.limits.max_concurrent_rpcs:
                raise ResourceExhaustedError(
                    f"server at its limit of {self.limits.max_concurrent_rpcs} concurrent requests; retry later "
                    "or use another replica",
                    reason="RPC_LIMIT",
                )
            remaining = context.time_remaining()
            budget = self.limits.default_deadline_s if remaining is None else remaining
            self.active += 1
            try:
                async with asyncio.timeout(budget):
                    return await work()
            except TimeoutError:
                raise DeadlineExceededError(
                    f"scoring did not finish within the deadline of {budget:.3g} s",
                    reason="TIMEOUT",
                    metadata={"timeout_s": f"{budget:.3g}"},
                ) from None
            finally:
                self.active -= 1
        except RollmeshError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            log.exception("scoring failed")
            await abort(context, InternalError(f"scoring failed: {type(e).__name__}: {e}", reason="SERVER_FAILED"))

    async def ScoreTrajectory(
        self, request: rubric_pb.ScoreTrajectoryRequest, context: grpc.aio.ServicerContext
    ) -> rubric_pb.ScoreTrajectoryResponse:
        async def work() -> rubric_pb.ScoreTrajectoryResponse:
            rubric = await self._rubric(request.rubric, request.spec, request.HasField("spec"))
            if not request.HasField("trajectory"):
                raise InvalidArgumentError("ScoreTrajectory needs a trajectory", reason="NO_TRAJECTORY")
            return rubric_pb.ScoreTrajectoryResponse(result=await rubric.score(request.trajectory, redact=True))

        return await self._serve(context, work)

    async def ScoreGroup(
        self, request: rubric_pb.ScoreGroupRequest, context: grpc.aio.ServicerContext
    ) -> rubric_pb.ScoreGroupResponse:
        async def work() -> rubric_pb.ScoreGroupResponse:
            rubric = await self._rubric(request.rubric, request.spec, request.HasField("spec"))
            n = len(request.trajectories)
            if n == 0:
                raise InvalidArgumentError(
                    "ScoreGroup needs at least one trajectory; got an empty group",
                    reason="MISSING_FIELD",
                    metadata={"field": "trajectories"},
                )
            if n > self.limits.max_group_size:
                raise ResourceExhaustedError(
                    f"group of {n} trajectories is over the limit of {self.limits.max_group_size}; split it",
                    reason="GROUP_TOO_LARGE",
                    metadata={"limit": str(self.limits.max_group_size)},
                )
            results, advantages = await rubric.score_group(request.trajectories, redact=True)
            return rubric_pb.ScoreGroupResponse(results=results, advantages=advantages)

        return await self._serve(context, work)

    async def ListRubrics(
        self, request: rubric_pb.ListRubricsRequest, context: grpc.aio.ServicerContext
    ) -> rubric_pb.ListRubricsResponse:
        return rubric_pb.ListRubricsResponse(rubrics=self.book.specs())


class RubricServer(HostedServer):
    """Serves a RubricBook over gRPC, registered as kind RUBRIC, name "rubric" when given a NATS URL."""

    def __init__(
        self,
        book: RubricBook,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: RubricLimits = RubricLimits(),
        rpc_limits: RpcLimits = RpcLimits(),  # noqa: B008 (frozen dataclass)
        nats_url: str | None = None,
        advertise_host: str | None = None,
        close_book: bool = True,
        allowed_addresses: Sequence[str] = (),
    ) -> None:
        self.book = book
        self.close_book = close_book
        # Registered servers are looked up where the book resolves names, else where this server registers.
        self.addresses = AddressPolicy(
            config_addresses(book.configured()) | set(allowed_addresses),
            nats_url=book.resources.nats_url or nats_url,
        )
        self.servicer = RubricServicer(book, limits=limits, addresses=self.addresses)
        rpc = create_server(
            [(rubric_grpc.add_RubricServiceServicer_to_server, self.servicer, SERVICE_NAME)],
            host=host,
            port=port,
            limits=rpc_limits,
        )
        self._host(rpc, nats_url=nats_url, advertise_host=advertise_host)

    @classmethod
    def from_config(
        cls, cfg: RubricServiceConfig, *, nats_url: str | None = None, book: RubricBook | None = None
    ) -> RubricServer:
        """A server of the config's rubrics; with `book`, one shared with the caller (who closes it)."""
        s = cfg.server
        return cls(
            book or RubricBook.from_config(cfg, nats_url=nats_url),
            host=s.host,
            port=s.port,
            limits=RubricLimits.of(s),
            rpc_limits=RpcLimits(max_message_bytes=int(s.max_message_mb * 1024 * 1024)),
            nats_url=nats_url,
            advertise_host=s.advertise_host,
            close_book=book is None,
            allowed_addresses=s.allowed_addresses,
        )

    def drain(self) -> None:
        self.servicer.draining = True

    def load(self) -> str:
        return f"{self.servicer.active} requests in flight"

    def records(self) -> list[bus_pb.ServiceRecord]:
        return [
            record_for(
                bus_pb.SERVICE_KIND_RUBRIC,
                REGISTRY_NAME,
                __version__,
                self.advertised_address,
                self.servicer.limits.max_concurrent_rpcs,
                self.servicer.instance_id,
                labels={"rubrics": ",".join(self.book.names)},
            )
        ]

    async def started(self) -> None:
        log.info("rubric server on %s: rubrics %s", self.address, ", ".join(self.book.names) or "(inline only)")

    async def release(self) -> None:
        await self.addresses.close()
        if self.close_book:
            await self.book.close()
