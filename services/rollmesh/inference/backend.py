"""The contract between the inference server and its engines, free of gRPC.

A backend generates from prompt token ids (the server applies chat templates and tokenizes),
streams `TokenDelta`s, and swaps weights atomically between requests: an update waits for the
requests in flight to finish (they report the old version), holds new ones, applies, bumps the
version, and lets the held requests go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: bool = False  # log softmax(logits / temperature) of each sampled token, before truncation


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    # False when the caller only wants the finished samples: a backend may then send one delta per
    # sample instead of one per token (less Python work beside the engine)
    stream: bool = True


@dataclass
class TokenDelta:
    """New tokens of one sample. The last delta of a sample has `finish_reason` set."""

    index: int  # which of the n samples
    token_ids: list[int]
    logprobs: list[float]  # empty unless requested
    text: str  # text of these tokens (stop strings already cut)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    policy_version: int = 0


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do (GetModelInfo's capabilities): token ids (and Tokenize), per-token
    logprobs, weight updates. The token-level backends (hf, vllm, scripted) do all of it."""

    token_ids: bool = True
    logprobs: bool = True
    weight_updates: bool = True


FULL_CAPABILITIES = Capabilities()


def capabilities_of(backend: object) -> Capabilities:
    return getattr(backend, "capabilities", FULL_CAPABILITIES)


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ...


class Backend(Protocol):
    name: str  # "hf" | "vllm" | "scripted" (the chat-only "openai" backend: backends/openai.py)
    model: str  # the served model's name
    tokenizer: Any  # a transformers tokenizer: chat templates and detokenization
    context_length: int
    policy_version: int

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Deltas of all n samples, interleaved, until each has finished."""
        ...

    def param_specs(self) -> Mapping[str, ParamSpec]:
        """Names, shapes and dtypes of the weights an update may replace."""
        ...

    async def update_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> int:
        """Replaces some or all weights between requests; returns the number of tensors applied.
        `tensors` are already validated against param_specs."""
        ...

    async def load_weights(self, path: str, version: int) -> int:
        """Same, from a Hugging Face directory or a safetensors file on the server."""
        ...

    async def pause(self) -> None:
        """Hold new generations; in-flight ones finish."""
        ...

    async def resume(self) -> None: ...

    @property
    def paused(self) -> bool: ...

    async def close(self) -> None: ...
