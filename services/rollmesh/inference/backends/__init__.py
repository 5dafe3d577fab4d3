"""Inference backends. Imported lazily: each pulls in torch (and vllm); `openai` only aiohttp."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..backend import Backend

BACKENDS = ("auto", "hf", "vllm", "scripted", "openai")


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
    if kind == "openai":
        raise InvalidArgumentError("the openai backend is made with create_openai_backend (it needs --base-url)")
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


async def create_openai_backend(
    base_url: str,
    model: str | None,
    *,
    api_key_env: str | None = None,
    max_rps: float = 0.0,
    max_concurrency: int = 64,
    max_retries: int = 4,
    timeout_s: float = 600.0,
    context_length: int = 0,
) -> Backend:
    """An OpenAI-compatible endpoint. The API key is read from the variable `api_key_env` (an
    unset one is an error); without it, from OPENAI_API_KEY when set (a local vLLM needs none)."""
    import os

    from .openai import EndpointLimits, OpenAIBackend

    if api_key_env and not os.environ.get(api_key_env):
        raise InvalidArgumentError(f"--api-key-env {api_key_env}: that environment variable is not set")
    api_key = os.environ.get(api_key_env or "OPENAI_API_KEY") or None
    limits = EndpointLimits(
        max_rps=max_rps, max_concurrency=max_concurrency, max_retries=max_retries, timeout_s=timeout_s
    )
    return await OpenAIBackend.create(  # type: ignore[return-value]
        base_url, model, api_key=api_key, limits=limits, context_length=context_length
    )
