"""Mapping of domain errors to gRPC status codes, in one place for every servicer."""

from __future__ import annotations

import grpc

from . import errors

STATUS_FOR: dict[type[errors.RollmeshError], grpc.StatusCode] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: errors.RollmeshError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


ERROR_FOR: dict[grpc.StatusCode, type[errors.RollmeshError]] = {v: k for k, v in STATUS_FOR.items()}
