"""Domain errors <-> gRPC statuses, in one place for every servicer and client. A status carries
google.rpc.Status details with an ErrorInfo {reason, domain, metadata}."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors

DOMAIN = "rollmesh.dev"  # ErrorInfo.domain of every rollmesh error (protos/rollmesh/v1/errors.proto)

STATUS_FOR: dict[type[errors.RollmeshError], grpc.StatusCode] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.DataLossError: grpc.StatusCode.DATA_LOSS,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}
ERROR_FOR: dict[grpc.StatusCode, type[errors.RollmeshError]] = {v: k for k, v in STATUS_FOR.items()}


def status_for(exc: errors.RollmeshError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: errors.RollmeshError) -> NoReturn:
    """Ends the RPC with the error's status code, message and ErrorInfo details."""
    code = status_for(exc)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata))
    status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=str(exc), details=[detail]))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")


def error_info(e: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call, when the server sent one."""
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


# grpc's local status for a write into a stream that had already ended (the server finished it, or
# its connection broke) in the moment between our check and the write: not the server's answer.
LOCAL_WRITE_FAILURE = "Internal error from Core"


def error_from_rpc(e: grpc.aio.AioRpcError) -> Exception:
    """A domain error (with the server's reason and metadata) for statuses that have one; the
    original error otherwise (CANCELLED, UNIMPLEMENTED, ...)."""
    if e.code() == grpc.StatusCode.INTERNAL and e.details() == LOCAL_WRITE_FAILURE:
        return errors.UnavailableError(
            "the stream ended while a message was being sent (the server closed it or went away)",
            reason="STREAM_BROKEN",
        )
    cls = ERROR_FOR.get(e.code())
    if cls is None:
        return e
    info = error_info(e)
    return cls(
        e.details() or e.code().name, reason=info.reason if info else None, metadata=info.metadata if info else None
    )
