"""Fixtures of the trainer tests: the tiny model (built locally, no network) and trajectories made
from a real inference server's generations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports deepspeed: CPU accelerator (its JIT-built op is cached in ~/.cache/torch_extensions).
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny deterministic Llama-style model (seed 0), as tests/inference builds it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rollmesh.inference.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
