"""Shared fixtures: real infrastructure (nats-server, gRPC on loopback), never mocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rollmesh.natsd import EmbeddedNats


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """One embedded nats-server with JetStream for the whole session (temp store, removed after)."""
    with EmbeddedNats() as server:
        yield server.url
