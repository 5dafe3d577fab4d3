"""Failures of the servers that reward functions call (LLM judges, environment servers), told two
ways: in full to the rubric service's log and to in-process callers (RubricBook users, the live
monitor), and as a fixed text with a reason to gRPC clients. An upstream's own words never reach a
client: they could carry whatever the upstream knows, or tell a caller what answers at an address
(a connection refused, a TLS handshake, a banner), which would make the service a port scanner."""

from __future__ import annotations

import grpc

from ..errors import RollmeshError
from ..proto.v1 import errors_pb2
from ..rpc_errors import status_for

# ErrorInfo reasons are text the upstream chose: only the names of ErrorReason values pass through.
KNOWN_REASONS = frozenset(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
LOG_HINT = "the details are in the rubric service's log"


class UpstreamError(Exception):
    """`detail` is the whole story (log, in-process results); `public` is what a gRPC client is told."""

    def __init__(self, detail: str, *, public: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.public = public


def reason_of(e: BaseException) -> str:
    """A reason from a fixed vocabulary: the upstream's ErrorReason when it is one of ours, else the
    status code name of the error's class (TIMEOUT for a local time-out)."""
    if isinstance(e, RollmeshError):
        return e.reason if e.reason in KNOWN_REASONS else status_for(e).name
    if isinstance(e, TimeoutError):
        return "TIMEOUT"
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code().name
    return grpc.StatusCode.UNKNOWN.name


def upstream_failure(role: str, e: BaseException) -> UpstreamError:
    """`e`, raised by a call to `role` (e.g. "the environment server"), as an UpstreamError."""
    return UpstreamError(f"{type(e).__name__}: {e}", public=f"{role} failed ({reason_of(e)}); {LOG_HINT}")
