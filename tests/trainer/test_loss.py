"""The losses against values worked out by hand (each constant below is derived in the comments)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rollmesh.trainer.batching import Sample, token_weights  # noqa: E402
from rollmesh.trainer.loss import k3_kl, policy_loss, sft_loss, token_logprobs  # noqa: E402

# Two rows of three tokens; row 1's last token is masked out.
LP = [[-1.0, -0.5, -2.0], [-0.2, -1.5, -0.7]]
OLD = [[-1.0, -0.8, -1.0], [-0.5, -1.5, -0.1]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
ADV = [1.0, -2.0]
# Per-token terms, pg = max(-A r, -A clip(r, 0.8, 1.28)):
#   row 0, A=+1: r = e^0 = 1 -> -1; r = e^0.3 = 1.3498588 -> clipped to 1.28 -> -1.28 (clipped);
#                r = e^-1 = 0.3678794 -> max(-0.3678794, -0.8) = -0.3678794
#   row 1, A=-2: r = e^0.3 -> max(2.6997176, 2.56) = 2.6997176; r = 1 -> 2
PG = [[-1.0, -1.28, -0.36787944], [2.69971762, 2.0, 0.0]]
TOKEN_MEAN_LOSS = (-1.0 - 1.28 - 0.36787944 + 2.69971762 + 2.0) / 5  # = 0.41036764


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def _token_weights():
    return _t(MASK) / 5.0  # "token" normalisation: 5 trained tokens in the step


def test_clipped_ratio_loss_matches_hand_computation() -> None:
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), clip_low=0.2, clip_high=0.28)
    assert out.loss.item() == pytest.approx(0.41036764, abs=1e-6)
    assert out.loss.item() == pytest.approx(TOKEN_MEAN_LOSS, abs=1e-6)
    assert out.tokens.item() == 5
    assert out.clipped.item() == 1  # only row 0 token 1
    assert out.pg_loss.item() == pytest.approx(sum(sum(r) for r in PG), abs=1e-5)
    # ratios 1 + 1.3498588 + 0.3678794 + 1.3498588 + 1
    assert out.ratio.item() == pytest.approx(5.067597, abs=1e-5)


def test_gradient_pushes_logprobs_along_the_advantage_and_stops_at_the_clip() -> None:
    lp = _t(LP).requires_grad_(True)
    policy_loss(lp, _t(OLD), _t(ADV), _token_weights(), _t(MASK)).loss.backward()
    g = lp.grad
    # d/dlp of -A r w = -A r w: row 0 token 0: -1 * 1 * 0.2
    assert g[0, 0].item() == pytest.approx(-0.2, abs=1e-6)
    assert g[0, 1].item() == 0.0  # clipped: no gradient
    assert g[0, 2].item() == pytest.approx(-0.36787944 * 0.2, abs=1e-6)
    # row 1, A = -2: +2 * 1.3498588 * 0.2 (descent lowers the logprob of a bad sample)
    assert g[1, 0].item() == pytest.approx(2 * 1.34985881 * 0.2, abs=1e-5)
    assert g[1, 2].item() == 0.0  # masked


def test_kl_term_k3_estimator() -> None:
    ref = _t([[-1.0] * 3, [-1.0] * 3])
    # k3(d) = e^d - d - 1 with d = ref - lp: d = 0 -> 0; -0.5 -> 0.1065307; 1.0 -> 0.7182818;
    # -0.8 -> 0.2493290; 0.5 -> 0.1487213 (row 1 token 2 masked). Sum 1.2228628.
    kl = k3_kl(_t(LP), ref)
    assert kl[0, 1].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1, abs=1e-6)
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), ref_logprobs=ref, kl_coef=0.1)
    assert out.kl.item() == pytest.approx(1.2228628, abs=1e-5)
    assert out.loss.item() == pytest.approx(0.41036764 + 0.1 * 1.2228628 / 5, abs=1e-6)  # 0.43482490


def test_dual_clip_caps_negative_advantage_tokens() -> None:
    # c = 1.2, A = -2: cap = 2.4 -> row 1 token 0 becomes min(2.6997176, 2.4) = 2.4; token 1 stays 2.
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), dual_clip=1.2)
    assert out.loss.item() == pytest.approx((-1.0 - 1.28 - 0.36787944 + 2.4 + 2.0) / 5, abs=1e-6)  # 0.35042411


def test_sequence_normalisation_weights() -> None:
    # "sequence": 1 / (tokens of the sequence x sequences): row 0 -> 1/6, row 1 -> 1/4.
    samples = [
        Sample("a", [0, 1, 2, 3], [0, 1, 1, 1], [0.0] * 4, 1.0),
        Sample("b", [0, 1, 2], [0, 1, 1], [0.0] * 3, -2.0),
    ]
    w = token_weights(samples, "sequence", 0)
    assert w == pytest.approx([1 / 6, 1 / 4])
    weights = torch.tensor([[w[0]] * 3, [w[1]] * 3]) * _t(MASK)
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), weights, _t(MASK))
    # (-1 - 1.28 - 0.3678794) / 6 + (2.6997176 + 2) / 4 = -0.4413132 + 1.1749294
    assert out.loss.item() == pytest.approx(0.73361617, abs=1e-6)
    assert token_weights(samples, "token", 0) == pytest.approx([1 / 5, 1 / 5])
    assert token_weights(samples, "constant", 10) == pytest.approx([1 / 20, 1 / 20])
    samples[1].weight = 0.5  # a down-weighted stale sample
    assert token_weights(samples, "token", 0) == pytest.approx([1 / 5, 0.5 / 5])


def test_sft_loss_is_mean_negative_logprob() -> None:
    out = sft_loss(_t(LP), _token_weights(), _t(MASK))
    assert out.loss.item() == pytest.approx((1.0 + 0.5 + 2.0 + 0.2 + 1.5) / 5, abs=1e-6)  # 1.04


def test_token_logprobs_at_temperature() -> None:
    logits = _t([[[1.0, 2.0, 3.0]]])
    # T = 2: logits / 2 = [0.5, 1, 1.5]; logsumexp = ln(1.6487213 + 2.7182818 + 4.4816891) = ln(8.8486922) = 2.1802697
    lp = token_logprobs(logits, torch.tensor([[2]]), _t([2.0]))
    assert lp.item() == pytest.approx(1.5 - 2.1802697, abs=1e-6)
    # T = 1: 3 - ln(e + e^2 + e^3) = 3 - 3.4076059
    assert token_logprobs(logits, torch.tensor([[2]])).item() == pytest.approx(-0.4076059, abs=1e-6)


# ---- the sampler/trainer mismatch: guard and truncated importance sampling --------------------
# gap = LP - OLD on trained tokens: row 0 [0, 0.3, -1.0], row 1 [0.3, 0, (masked)]


def test_mismatch_kl_is_k3_of_the_gap() -> None:
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK))
    # k3 = e^-g + g - 1: 0 + (e^-0.3 + 0.3 - 1) * 2 + (e^1 - 1 - 1) + 0
    want = 2 * (math.exp(-0.3) + 0.3 - 1) + (math.e - 2)
    assert out.mismatch_kl.item() == pytest.approx(want, abs=1e-6)
    assert out.masked.item() == 0  # the guard is off by default in the function


def test_mismatch_kl_of_the_rows_without_policy_lag() -> None:
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), on_policy=_t([1.0, 0.0]))
    assert out.on_policy_tokens.item() == 3  # row 0 only
    assert out.on_policy_mismatch_kl.item() == pytest.approx((math.exp(-0.3) + 0.3 - 1) + (math.e - 2), abs=1e-6)
    unknown = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK))
    assert unknown.on_policy_tokens.item() == 0 and unknown.on_policy_mismatch_kl.item() == 0


def test_guard_masks_tokens_whose_gap_exceeds_the_bound() -> None:
    lp = _t(LP).requires_grad_(True)
    out = policy_loss(lp, _t(OLD), _t(ADV), _token_weights(), _t(MASK), mask_log_ratio=0.5)
    out.loss.backward()
    # row 0 token 2 (|gap| = 1) leaves the loss; the normalisation (1/5) stays
    assert out.loss.item() == pytest.approx((-1.0 - 1.28 + 2.69971762 + 2.0) / 5, abs=1e-6)
    assert out.masked.item() == 1 and out.tokens.item() == 5
    assert lp.grad[0, 2].item() == 0.0
    assert lp.grad[0, 0].item() == pytest.approx(-0.2, abs=1e-6)  # the others train as before
    # the diagnostics of the sampler gap still cover every token
    assert out.mismatch_kl.item() == pytest.approx(2 * (math.exp(-0.3) + 0.3 - 1) + (math.e - 2), abs=1e-6)
    # a bound above every gap masks nothing and gives the plain loss
    plain = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), mask_log_ratio=1.01)
    assert plain.masked.item() == 0 and plain.loss.item() == pytest.approx(TOKEN_MEAN_LOSS, abs=1e-6)


def test_truncated_importance_sampling_weights_each_token() -> None:
    lp = _t(LP).requires_grad_(True)
    out = policy_loss(lp, _t(OLD), _t(ADV), _token_weights(), _t(MASK), tis_cap=1.2)
    out.loss.backward()
    # ratio against the trainer's own logprobs = 1 (nothing clipped); weight w = min(e^gap, 1.2):
    # row 0 (A = 1): w = [1, 1.2, e^-1] -> -w; row 1 (A = -2): w = [1.2, 1] -> 2w
    w = [[1.0, 1.2, math.exp(-1.0)], [1.2, 1.0]]
    want = (-sum(w[0]) + 2 * sum(w[1])) / 5
    assert out.loss.item() == pytest.approx(want, abs=1e-6)
    assert out.clipped.item() == 0
    # d/dlp (-A w e^(lp - sg(lp))) = -A w, times the token weight 1/5
    assert lp.grad[0, 1].item() == pytest.approx(-1.2 / 5, abs=1e-6)
    assert lp.grad[0, 2].item() == pytest.approx(-math.exp(-1.0) / 5, abs=1e-6)
    assert lp.grad[1, 0].item() == pytest.approx(2 * 1.2 / 5, abs=1e-6)
    assert lp.grad[1, 2].item() == 0.0  # masked
    assert out.ratio.item() == pytest.approx(5.067597, abs=1e-5)  # the sampler ratio, as without TIS


def test_guard_and_truncated_importance_sampling_together() -> None:
    out = policy_loss(_t(LP), _t(OLD), _t(ADV), _token_weights(), _t(MASK), mask_log_ratio=0.5, tis_cap=1.2)
    assert out.masked.item() == 1
    assert out.loss.item() == pytest.approx((-1.0 - 1.2 + 2 * (1.2 + 1.0)) / 5, abs=1e-6)


def test_guard_keeps_a_forged_logprob_from_the_gradient() -> None:
    """A sampler logprob at the batching floor (-80) on a negative-advantage token: unguarded, its
    ratio e^79 blows up the step; guarded, the step is the other tokens' alone."""
    lp = _t([[-1.0, -1.0]]).requires_grad_(True)
    old = _t([[-1.0, -80.0]])
    args = (_t([-1.0]), _t([[0.5, 0.5]]), _t([[1.0, 1.0]]))
    unguarded = policy_loss(lp, old, *args)
    assert unguarded.loss.item() > 1e30
    out = policy_loss(lp, old, *args, mask_log_ratio=2.0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6) and out.masked.item() == 1
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 1].item() == 0.0
