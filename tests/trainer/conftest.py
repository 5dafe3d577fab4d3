"""Fixtures of the trainer tests: the tiny model (built locally, no network) and trajectories made
from a real inference server's generations."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Before anything imports deepspeed: CPU accelerator (its JIT-built op is cached in ~/.cache/torch_extensions).
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture
async def served(tiny_model_dir: Path, nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Any, Any]]:
    """An inference server registered under a name of its own (other tests' servers stay out); it
    loads checkpoints from under the test's tmp_path (its weights root)."""
    from rollmesh.inference.backends.hf import HFBackend
    from rollmesh.inference.client import InferenceClient
    from rollmesh.inference.server import InferenceServer

    name = f"tiny-push-{uuid.uuid4().hex[:6]}"
    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name=name)
    server = InferenceServer(backend, nats_url=nats_url, weights_roots=[str(tiny_model_dir), str(tmp_path)])
    await server.start()
    client = await InferenceClient.connect(server.address, timeout_s=60)
    yield name, backend, client
    await client.close()
    await server.stop(0)
