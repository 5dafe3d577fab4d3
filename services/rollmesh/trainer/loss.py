"""The trainer's losses, in plain torch on per-token tensors (no model, no transport).

Every tensor is [rows, tokens] over the predicted positions of a micro-batch. `weights` carries
the normalisation (1 / tokens of the step, or 1 / (tokens of the sequence x sequences), ...) and
the sample weight, computed once per step by batching.py, so that summing `weights * loss` over
all micro-batches and ranks gives exactly the normalised step loss whatever the packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossTerms:
    """The loss to backpropagate and the token sums of its diagnostics (summed over trained tokens;
    divide by `tokens` for means after adding up micro-batches and ranks)."""

    loss: torch.Tensor
    tokens: torch.Tensor
    pg_loss: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor
    ratio: torch.Tensor
    # k3 KL between the inference sampler and the trainer (train/inference mismatch).
    mismatch_kl: torch.Tensor

    def sums(self) -> torch.Tensor:
        """[tokens, pg_loss, kl, clipped, ratio, mismatch_kl] as one tensor (for one all-reduce)."""
        return torch.stack([self.tokens, self.pg_loss, self.kl, self.clipped, self.ratio, self.mismatch_kl]).detach()


SUM_NAMES = ("tokens", "pg_loss", "kl", "clip_fraction", "ratio_mean", "mismatch_kl")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0,
    unbiased, low variance; Schulman's "Approximating KL divergence")."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> LossTerms:
    """GRPO/DAPO token-level clipped importance-ratio loss.

    ratio = exp(logprobs - old_logprobs) against the sampler's logprobs; per token
    pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), with dual clip
    pg = min(pg, -A * dual_clip) where A < 0; plus kl_coef * k3(policy, ref).
    loss = sum(weights * mask * (pg + kl_coef * kl)). `advantages` is [rows] or [rows, tokens].
    """
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    # Masked positions may hold anything (padding): keep their exp() finite.
    log_ratio = torch.where(mask > 0, log_ratio, torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = -advantages * clipped_ratio
    pg = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).to(logprobs.dtype)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        pg = torch.where(advantages < 0, torch.minimum(pg, cap), pg)
    per_token = pg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    loss = (weights * mask * per_token).sum()
    with torch.no_grad():
        return LossTerms(
            loss=loss,
            tokens=mask.sum(),
            pg_loss=(mask * pg).sum(),
            kl=(mask * kl).sum(),
            clipped=(mask * is_clipped).sum(),
            ratio=(mask * ratio).sum(),
            mismatch_kl=(mask * k3_kl(logprobs, old_logprobs)).sum(),
        )


def sft_loss(logprobs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> LossTerms:
    """Negative log-likelihood of the masked tokens: sum(weights * mask * -logprobs)."""
    mask = mask.to(logprobs.dtype)
    nll = -logprobs
    loss = (weights * mask * nll).sum()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    with torch.no_grad():
        return LossTerms(
            loss=loss,
            tokens=mask.sum(),
            pg_loss=(mask * nll).sum(),
            kl=zero,
            clipped=zero,
            ratio=mask.sum(),
            mismatch_kl=zero,
        )


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor | None = None
) -> torch.Tensor:
    """log softmax(logits / temperature)[target] per position, without materialising the full
    log-softmax (gather minus logsumexp). logits [rows, tokens, vocab], targets [rows, tokens],
    temperature [rows] or None."""
    logits = logits.float()
    if temperature is not None:
        logits = logits / temperature.to(logits.dtype)[:, None, None]
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
