"""A real DeepSpeed engine (CPU, gloo, ZeRO-2) on the tiny model: a step moves logprobs along the
advantage, the KL term sees the reference model, and a DeepSpeed checkpoint restores weights and
optimizer state exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.batching import plan_step, trajectory_samples  # noqa: E402
from rollmesh.trainer.config import TrainerConfig  # noqa: E402
from rollmesh.trainer.model import DeepSpeedPolicy, deepspeed_config  # noqa: E402

PROMPT = [1, 5, 40, 41, 42, 6]  # <s> <|user|> ... <|assistant|>
GOOD = [60, 61, 62, 2]
BAD = [70, 71, 72, 2]


def _cfg(tmp_path, **kw) -> TrainerConfig:
    return TrainerConfig(run_id="engine-test", model=kw.pop("model"), lr=1e-3, checkpoint={"dir": str(tmp_path)}, **kw)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory) -> DeepSpeedPolicy:
    return DeepSpeedPolicy(_cfg(tmp_path_factory.mktemp("ckpt"), model=str(tiny_model_dir)))


def _samples(engine: DeepSpeedPolicy, advantages: dict[str, float]):
    """One sequence per completion, with the current policy's logprobs as the sampler's (ratio 1)."""
    out = []
    for tid, completion in (("good", GOOD), ("bad", BAD)):
        t = traj_pb.Trajectory(trajectory_id=tid, advantage=advantages[tid])
        t.turns.append(traj_pb.Turn(prompt_ids=PROMPT, completion_ids=completion))
        t.turns[0].completion_logprobs.extend([0.0] * len(completion))
        (s,) = trajectory_samples(t)
        out.append(s)
    mb = plan_step(out, pad_id=engine.pad_id).ranks[0][0]
    current = engine.eval_logprobs(mb)
    by_id = {s.trajectory_id: s for s in out}
    for row, tid in enumerate(mb.trajectory_ids):
        by_id[tid].old_logprobs = [0.0, *current[row].tolist()]
    return out


def _completion_logprob(engine: DeepSpeedPolicy, samples) -> dict[str, float]:
    plan = plan_step(samples, pad_id=engine.pad_id)
    mb = plan.ranks[0][0]
    lp = engine.eval_logprobs(mb)
    return {tid: float((lp[i] * mb.mask[i]).sum()) for i, tid in enumerate(mb.trajectory_ids)}


def test_default_deepspeed_config(tiny_model_dir, tmp_path) -> None:
    cfg = _cfg(
        tmp_path,
        model=str(tiny_model_dir),
        deepspeed={"zero_stage": 3, "config": {"zero_optimization": {"stage3_max_live_parameters": 10}}},
    )
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_max_live_parameters"] == 10
    assert ds["managed_gradient_accumulation"] is False  # micro-batches are packed by tokens
    assert ds["optimizer"]["params"]["lr"] == 1e-3 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] is False  # auto on CPU: fp32


def test_step_moves_logprobs_along_the_advantage(engine) -> None:
    samples = _samples(engine, {"good": 1.0, "bad": -1.0})
    before = _completion_logprob(engine, samples)
    plan = plan_step(samples, pad_id=engine.pad_id)
    stats = engine.train_step(plan.ranks[0])
    after = _completion_logprob(engine, samples)
    assert after["good"] > before["good"] + 0.05
    assert after["bad"] < before["bad"] - 0.05
    assert stats.sums["tokens"] == 8 and stats.grad_norm > 0
    assert stats.means()["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # old logprobs = current policy
    assert stats.means()["mismatch_kl"] == pytest.approx(0.0, abs=1e-5)


def test_split_micro_batches_give_the_same_update(tiny_model_dir, tmp_path) -> None:
    """Gradient accumulation over token-packed micro-batches equals one big batch."""
    results = []
    init: dict = {}
    for budget in (64, 10):  # one micro-batch of both rows / one row per micro-batch
        eng = DeepSpeedPolicy(_cfg(tmp_path / str(budget), model=str(tiny_model_dir)))
        init = eng.full_state_dict()
        samples = _samples(eng, {"good": 1.0, "bad": -0.5})
        plan = plan_step(samples, pad_id=eng.pad_id, max_tokens_per_micro_batch=budget)
        assert plan.micro_batches == (1 if budget == 64 else 2)
        eng.train_step(plan.ranks[0])
        results.append(eng.full_state_dict())
    one, two = ({k: w[k] - init[k] for k in w} for w in results)
    # Adam's first update is ~lr x sign(grad): compare the updates as vectors, not elementwise
    # (a gradient of ~1e-9 may flip sign with the summation order).
    diff = sum((one[k] - two[k]).pow(2).sum() for k in one).sqrt()
    norm = sum(one[k].pow(2).sum() for k in one).sqrt()
    assert diff / norm < 1e-3, float(diff / norm)


def test_kl_to_the_reference_model(tiny_model_dir, tmp_path) -> None:
    eng = DeepSpeedPolicy(_cfg(tmp_path, model=str(tiny_model_dir), loss={"kl_coef": 0.5}))
    assert eng.ref is not None
    samples = _samples(eng, {"good": 1.0, "bad": -1.0})
    first = eng.train_step(plan_step(samples, pad_id=eng.pad_id).ranks[0])
    assert first.means()["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    second = eng.train_step(plan_step(samples, pad_id=eng.pad_id).ranks[0])
    assert second.means()["kl"] > 1e-5


def test_checkpoint_restores_weights_and_optimizer(tiny_model_dir, tmp_path) -> None:
    eng = DeepSpeedPolicy(_cfg(tmp_path, model=str(tiny_model_dir)))
    samples = _samples(eng, {"good": 1.0, "bad": -1.0})
    plan = plan_step(samples, pad_id=eng.pad_id)
    eng.train_step(plan.ranks[0])
    eng.save(tmp_path / "ck", {"step": 1})
    eng.train_step(plan.ranks[0])
    expected = eng.full_state_dict()
    eng.train_step(plan.ranks[0])  # drift away, then come back
    assert eng.load(tmp_path / "ck")["step"] == 1
    eng.train_step(plan.ranks[0])  # the same second step: needs Adam's moments back too
    got = eng.full_state_dict()
    assert max((expected[k] - got[k]).abs().max().item() for k in got) < 1e-6
