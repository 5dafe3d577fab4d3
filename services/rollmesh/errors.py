"""Domain errors. Transport adapters map each to one gRPC status code (see rpc_errors), with a
machine-readable `reason` (sent as google.rpc.ErrorInfo) so clients can act without parsing text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A status message (and each ErrorInfo metadata value) is capped: clients may send megabytes of
# name or path, and an error that quotes them must not become a megabyte of trailer and log.
MAX_MESSAGE_CHARS = 2000
MAX_QUOTED_CHARS = 120


def quoted(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """repr() of a client-supplied value for an error message, cut to `limit` characters (with how
    long it really was), so that no client string is echoed unbounded."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} chars)"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class RollmeshError(Exception):
    """Base class: the message must tell a person what to do about it."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(clip(message))
        if reason:
            self.reason = reason
        self.metadata = {k: clip(str(v), 512) for k, v in (metadata or {}).items()}


class NotFoundError(RollmeshError):
    """An environment, task, rubric or model that does not exist."""

    reason = "NOT_FOUND"


class InvalidArgumentError(RollmeshError):
    """A request that can never succeed as written."""

    reason = "INVALID_ARGUMENT"


class FailedPreconditionError(RollmeshError):
    """A request that is valid but not in the current state (e.g. an action after done)."""

    reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(RollmeshError):
    """A limit was hit (concurrent episodes, sizes)."""

    reason = "RESOURCE_EXHAUSTED"


class UnavailableError(RollmeshError):
    """The server is shutting down or a dependency is unreachable; retrying elsewhere may work."""

    reason = "UNAVAILABLE"


class DeadlineExceededError(RollmeshError):
    """A deadline or idle timeout passed before the work finished."""

    reason = "DEADLINE_EXCEEDED"


class UnimplementedError(RollmeshError):
    """A method the server knows but does not offer here (Score of an environment without one)."""

    reason = "NOT_SUPPORTED"


class InternalError(RollmeshError):
    """Code behind the server (an environment, a reward function) failed."""

    reason = "INTERNAL"


class DataLossError(RollmeshError):
    """Data arrived corrupted or incomplete (e.g. a weights checksum mismatch)."""

    reason = "DATA_LOSS"


class UnauthenticatedError(RollmeshError):
    """The caller did not say who it is (no client certificate, no or an unknown bearer token)."""

    reason = "NO_CREDENTIALS"


class PermissionDeniedError(RollmeshError):
    """The caller is known but may not do this."""

    reason = "MISSING_ROLE"
