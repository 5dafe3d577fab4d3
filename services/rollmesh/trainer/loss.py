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
    # tokens left out of the loss by the mismatch guard (mask_log_ratio)
    masked: torch.Tensor
    # tokens sampled by the trained weights themselves (no policy lag), and their mismatch_kl sum
    on_policy_tokens: torch.Tensor
    on_policy_mismatch_kl: torch.Tensor

    def sums(self) -> torch.Tensor:
        """The SUM_NAMES terms as one tensor (for one all-reduce)."""
        terms = [self.tokens, self.pg_loss, self.kl, self.clipped, self.ratio, self.mismatch_kl, self.masked]
        return torch.stack([*terms, self.on_policy_tokens, self.on_policy_mismatch_kl]).detach()


SUM_NAMES = (
    "tokens",
    "pg_loss",
    "kl",
    "clip_fraction",
    "ratio_mean",
    "mismatch_kl",
    "mismatch_masked_tokens",
    "on_policy_tokens",
    "mismatch_kl_on_policy",
)


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
    mask_log_ratio: float | None = None,
    tis_cap: float | None = None,
    on_policy: torch.Tensor | None = None,
) -> LossTerms:
    """GRPO/DAPO token-level clipped importance-ratio loss.

    ratio = exp(logprobs - old_logprobs) against the sampler's logprobs; per token
    pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), with dual clip
    pg = min(pg, -A * dual_clip) where A < 0; plus kl_coef * k3(policy, ref).
    loss = sum(weights * mask * (w * pg + kl_coef * kl)), w = 1 unless tis_cap. `advantages` is
    [rows] or [rows, tokens].

    Mismatch guard: tokens with |logprobs - old_logprobs| > mask_log_ratio leave the loss (the
    step's normalisation in `weights` stays). Truncated importance sampling (tis_cap): the ratio
    is taken against the trainer's own logprobs (detached: 1 in value, the policy gradient in
    derivative) and each token's pg is weighted by min(exp(logprobs - old_logprobs), tis_cap),
    a constant: the sampler/trainer gap corrected apart from the trust region. `on_policy` [rows]
    marks rows sampled by these very weights: their mismatch_kl is the sampler's alone.
    """
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    # Masked positions may hold anything (padding): keep their exp() finite.
    gap = torch.where(mask > 0, logprobs.detach() - old_logprobs, torch.zeros_like(logprobs))
    trained = mask
    if mask_log_ratio is not None:
        trained = mask * (gap.abs() <= mask_log_ratio).to(mask.dtype)
    if tis_cap is not None:
        log_ratio = logprobs - logprobs.detach()
        is_weight = torch.clamp(torch.exp(gap), max=tis_cap)
    else:
        log_ratio = torch.where(mask > 0, logprobs - old_logprobs, torch.zeros_like(logprobs))
        is_weight = torch.ones_like(logprobs)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = -advantages * clipped_ratio
    pg = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).to(logprobs.dtype)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        pg = torch.where(advantages < 0, torch.minimum(pg, cap), pg)
    per_token = is_weight * pg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    loss = (weights * trained * per_token).sum()
    with torch.no_grad():
        k3 = mask * (torch.exp(-gap) + gap - 1.0)  # k3 of the sampler vs the trainer, on `gap`: finite where masked
        fresh = mask * (on_policy[:, None] if on_policy is not None else torch.zeros_like(mask[:, :1]))
        return LossTerms(
            loss=loss,
            tokens=mask.sum(),
            pg_loss=(trained * is_weight * pg).sum(),
            kl=(trained * kl).sum(),
            clipped=(trained * is_clipped).sum(),
            ratio=(mask * torch.exp(gap)).sum(),
            mismatch_kl=k3.sum(),
            masked=(mask - trained).sum(),
            on_policy_tokens=fresh.sum(),
            on_policy_mismatch_kl=(fresh * k3).sum(),
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
            masked=zero,
            on_policy_tokens=zero,
            on_policy_mismatch_kl=zero,
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
