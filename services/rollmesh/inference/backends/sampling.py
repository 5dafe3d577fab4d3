"""Token sampling for a batch whose rows each have their own parameters and random generator.

Pure torch, no model: `pick_tokens(logits, rows)` returns one token and its logprob per row.
Logprobs follow `Sampling.logprobs`: log_softmax(logits / temperature) of the chosen token from the
model's raw logits, before repetition penalty, bans and top-k/top-p/min-p truncation (greedy rows,
temperature 0: log_softmax(logits)). That is what a trainer recomputes with a forward pass.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backend import Sampling


def sample_seed(seed: int | None, index: int) -> int:
    """The seed of sample `index` of a request: independent streams for the n samples and for
    nearby request seeds; random when the request has no seed."""
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class RowSampling:
    """What the sampler needs about one row."""

    sampling: Sampling
    generator: torch.Generator
    history: list[int]  # prompt + generated ids (for the repetition penalty)
    banned: Sequence[int] = ()  # ids that must not be chosen now (eos and stop ids before min_tokens)


def apply_repetition_penalty(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """CTRL-style penalty on every id seen in the prompt or output: positive logits divided,
    negative ones multiplied (as transformers and vLLM do)."""
    for i, r in enumerate(rows):
        p = r.sampling.repetition_penalty
        if p == 1.0 or not r.history:
            continue
        ids = torch.tensor(sorted(set(r.history)), device=logits.device)
        seen = logits[i, ids]
        logits[i, ids] = torch.where(seen > 0, seen / p, seen * p)
    return logits


def truncate(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Masks (to -inf) what top-k, then top-p, then min-p exclude, row by row; the most likely
    token always stays. `top_k` 0 means off."""
    vocab = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
    drop = before > top_p.unsqueeze(1)
    drop |= probs < min_p.unsqueeze(1) * probs[:, :1]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)


def pick_tokens(
    logits: torch.Tensor, rows: Sequence[RowSampling], want_logprobs: bool = True
) -> list[tuple[int, float]]:
    """One (token, logprob) per row of `logits` [rows, vocab]."""
    logits = logits.float()
    raw = logits
    if any(r.sampling.repetition_penalty != 1.0 for r in rows) or any(r.banned for r in rows):
        logits = apply_repetition_penalty(logits.clone(), rows)
        for i, r in enumerate(rows):
            if r.banned:
                logits[i, list(r.banned)] = float("-inf")
    dev = logits.device
    temps = torch.tensor([r.sampling.temperature for r in rows], device=dev, dtype=torch.float32)
    greedy = temps == 0
    safe_t = torch.where(greedy, torch.ones_like(temps), temps).unsqueeze(1)
    scaled = logits / safe_t
    if any(r.sampling.top_k > 0 or r.sampling.top_p < 1.0 or r.sampling.min_p > 0.0 for r in rows):
        scaled = truncate(
            scaled,
            torch.tensor([r.sampling.top_k for r in rows], device=dev),
            torch.tensor([r.sampling.top_p for r in rows], device=dev, dtype=torch.float32),
            torch.tensor([r.sampling.min_p for r in rows], device=dev, dtype=torch.float32),
        )
    probs = scaled.softmax(dim=-1)
    chosen = logits.argmax(dim=-1)  # greedy rows keep this
    for i, r in enumerate(rows):
        if not bool(greedy[i]):
            chosen[i] = torch.multinomial(probs[i], 1, generator=r.generator)[0]
    if want_logprobs:
        lp = (raw / safe_t).log_softmax(dim=-1).gather(1, chosen.unsqueeze(1)).squeeze(1)
        return list(zip(chosen.tolist(), lp.tolist(), strict=True))
    return [(t, 0.0) for t in chosen.tolist()]
