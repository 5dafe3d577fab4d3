"""Fixtures of the inference tests: the tiny model, built locally once per session (no network),
and a shared hf backend on it. Tests that change weights or pause should make their own backend
(`await HFBackend.create(str(tiny_model_dir))`, well under a second)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
async def hf_backend(tiny_model_dir: Path) -> AsyncIterator[Any]:
    """One hf backend on the tiny model, float32, shared by tests that do not change it."""
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32")
    yield backend
    await backend.close()
