"""Inference backends. Imported lazily: each pulls in torch (and vllm)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..backend import Backend

BACKENDS = ("auto", "hf", "vllm", "scripted")


def pick(kind: str) -> str:
    """`auto` = vllm when a GPU and vllm are present, else hf (the CPU default)."""
    if kind not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind != "auto":
        return kind
    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"


async def create_backend(
    kind: str,
    model: str,
    *,
    dtype: str = "auto",
    max_model_len: int | None = None,
    max_batch_size: int = 32,
    name: str | None = None,
) -> Backend:
    kind = pick(kind)
    if kind == "scripted":  # no model: scripted replies (benchmarks, tests); `model` names the script
        from .scripted import ScriptedBackend

        return ScriptedBackend.from_spec(model, name=name)
    if kind == "hf":
        from .hf import HFBackend

        return await HFBackend.create(model, dtype=dtype, max_batch_size=max_batch_size, name=name)
    from ..models import resolve_model
    from .vllm import VLLMBackend

    resolved = resolve_model(model)
    if resolved.gguf_file:
        raise InvalidArgumentError(
            f"vllm serves Hugging Face directories; convert the GGUF first: rollmesh model import {model} --out DIR"
        )
    return await VLLMBackend.create(str(resolved.path), dtype=dtype, max_model_len=max_model_len, name=name)
