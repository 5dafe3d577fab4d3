"""Shared fixtures: real infrastructure (nats-server, gRPC on loopback), never mocks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollmesh.natsd import EmbeddedNats

# The suite runs every process with tracing on (interceptors, bus headers), as a mesh that exports
# spans does, so those paths are exercised everywhere; off is the default without an exporter.
os.environ.setdefault("ROLLMESH_TRACING", "1")


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """One embedded nats-server with JetStream for the whole session (temp store, removed after)."""
    with EmbeddedNats() as server:
        yield server.url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face directory with the tiny deterministic Llama-style model (seed 0)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rollmesh.inference.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_dir_seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with other weights (seed 1): a checkpoint to load into a server."""
    pytest.importorskip("torch")
    from rollmesh.inference.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-seed1"), seed=1)
