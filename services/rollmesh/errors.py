"""Domain errors. Transport adapters map each to one gRPC status code (see rpc_errors)."""

from __future__ import annotations


class RollmeshError(Exception):
    """Base class: the message must tell a person what to do about it."""


class NotFoundError(RollmeshError):
    """An environment, task, rubric or model that does not exist."""


class InvalidArgumentError(RollmeshError):
    """A request that can never succeed as written."""


class FailedPreconditionError(RollmeshError):
    """A request that is valid but not in the current state (e.g. an action after done)."""


class ResourceExhaustedError(RollmeshError):
    """A limit was hit (concurrent episodes, sizes)."""


class UnavailableError(RollmeshError):
    """The server is shutting down or a dependency is unreachable; retrying elsewhere may work."""


class DeadlineExceededError(RollmeshError):
    """A deadline or idle timeout passed before the work finished."""
