"""The sampler and the trainer agree: the logprobs the hf backend reports for real sampled tokens
are, token for token, what the trainer recomputes (trajectory_samples -> plan_step -> the DeepSpeed
engine's forward), for every sampling setting the contract supports.

The contract (docs/protocol.md section 9): a sample's logprob is log softmax(raw logits / T) of the
model, whatever the repetition penalty, bans and top-k/top-p truncation did to the sampling; the
trainer recomputes it at the trajectory's temperature from provenance.sampling.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh.inference.backend import GenerationRequest, Sampling  # noqa: E402
from rollmesh.inference.backends.hf import HFBackend  # noqa: E402
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.batching import plan_step, trajectory_samples  # noqa: E402
from rollmesh.trainer.config import TrainerConfig  # noqa: E402
from rollmesh.trainer.model import DeepSpeedPolicy  # noqa: E402

BOUND = 1e-3  # per token, float32 on both sides (measured: ~5e-6 on the tiny model, ~3e-5 on SmolLM2-135M)
PROMPTS = ["What is 12 + 7?", "Hello! How can I help you today? Please think step by step.", "A", "Count to three."]
# name -> sampling; every case samples n=2 from every prompt, all at once (one shared, left-padded batch)
CASES = {
    "t1_length": Sampling(temperature=1.0, max_tokens=12),
    "t0_greedy": Sampling(temperature=0.0, max_tokens=12),
    "t07_top_p_top_k": Sampling(temperature=0.7, top_p=0.8, top_k=8, max_tokens=12),
    "t13_min_p": Sampling(temperature=1.3, min_p=0.05, max_tokens=12),
    "penalty": Sampling(temperature=0.9, repetition_penalty=1.8, max_tokens=12),
    "stop_string": Sampling(temperature=1.0, stop=("e",), max_tokens=12),
    "min_tokens": Sampling(temperature=1.0, min_tokens=6, max_tokens=8),
}
ENV_REPLY = "<|user|>And then?</s><|assistant|>"  # the tiny model's template around a user turn


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DeepSpeedPolicy:
    checkpoint = {"dir": str(tmp_path_factory.mktemp("checkpoints"))}
    return DeepSpeedPolicy(TrainerConfig(run_id="agree", model=str(tiny_model_dir), checkpoint=checkpoint))


def _trajectory(tid: str, sampling: Sampling, turns: list[dict[str, Any]]) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=tid, advantage=1.0)
    t.provenance.sampling.temperature = sampling.temperature  # as the orchestrator stamps it
    for turn in turns:
        t.turns.append(traj_pb.Turn(**turn, completion_mask=[1] * len(turn["completion_ids"])))
    return t


async def _generate(backend: HFBackend, ids: list[int], sampling: Sampling, rid: str) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    async for d in backend.generate(GenerationRequest(rid, ids, sampling)):
        s = out.setdefault(d.index, {"prompt_ids": ids, "completion_ids": [], "completion_logprobs": []})
        s["completion_ids"] += d.token_ids
        s["completion_logprobs"] += d.logprobs
        if d.finish_reason:
            s["finish_reason"] = d.finish_reason
    return [out[i] for i in sorted(out)]


async def _sample_all(model_dir: Path) -> list[traj_pb.Trajectory]:
    """Single-turn trajectories for every case and prompt, and two-turn ones whose second prompt is
    built from the first turn's ids (prompt + completion + the turn's end + the environment's reply)."""
    backend = await HFBackend.create(str(model_dir))  # dtype "auto": float32 on a CPU, as the trainer
    try:
        assert next(backend.hf_model.parameters()).dtype == torch.float32
        tok, seeds = backend.tokenizer, itertools.count(1)
        chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False) for p in PROMPTS]
        prompts = [tok(c + "<|assistant|>", add_special_tokens=False)["input_ids"] for c in chats]
        jobs = [
            (name, p, Sampling(**{**vars(s), "n": 2, "seed": next(seeds), "logprobs": True}))
            for name, s in CASES.items()
            for p in prompts
        ]
        firsts = await asyncio.gather(*(_generate(backend, p, s, f"{name}-{i}") for i, (name, p, s) in enumerate(jobs)))
        trajs = []
        for (name, _, s), samples in zip(jobs, firsts, strict=True):
            trajs += [_trajectory(f"{name}/{len(trajs)}", s, [x]) for x in samples]
        # multi-turn: the second call's prompt extends the first call's ids exactly
        reply = tok(ENV_REPLY, add_special_tokens=False)["input_ids"]
        # one temperature per trajectory (the orchestrator's sampling, the trainer's recomputation)
        second = Sampling(temperature=1.0, top_k=10, max_tokens=10, n=1, logprobs=True, seed=99)
        turn1 = [(t, t.turns[0]) for t in trajs if t.trajectory_id.startswith("t1_length")]
        nexts = []
        for _, turn in turn1:
            end = [] if turn.completion_ids[-1] == tok.eos_token_id else [tok.eos_token_id]
            nexts.append(list(turn.prompt_ids) + list(turn.completion_ids) + end + reply)
        seconds = await asyncio.gather(*(_generate(backend, p, second, f"turn2-{i}") for i, p in enumerate(nexts)))
        for (t, turn), (x,) in zip(turn1, seconds, strict=True):
            first = {k: list(getattr(turn, k)) for k in ("prompt_ids", "completion_ids", "completion_logprobs")}
            trajs.append(_trajectory(f"two_turns/{t.trajectory_id}", second, [first, x]))
        return trajs
    finally:
        await backend.close()


def test_trainer_recomputes_the_sampler_logprobs(tiny_model_dir: Path, engine: DeepSpeedPolicy) -> None:
    trajs = asyncio.run(_sample_all(tiny_model_dir))
    finishes = {t.trajectory_id.split("/")[0]: set() for t in trajs}
    for t in trajs:
        finishes[t.trajectory_id.split("/")[0]] |= {turn.finish_reason for turn in t.turns}
    assert "length" in finishes["t1_length"] and "stop" in finishes["stop_string"], finishes
    samples = [s for t in trajs for s in trajectory_samples(t, vocab_size=engine.vocab_size)]
    # several rows per micro-batch: right padding, per-row temperatures
    plan = plan_step(samples, max_tokens_per_micro_batch=256, pad_id=engine.pad_id)
    assert any(mb.rows > 1 for mb in plan.ranks[0])
    worst: dict[str, float] = {}
    for mb in plan.ranks[0]:
        diff = ((engine.eval_logprobs(mb) - mb.old_logprobs).abs() * mb.mask).amax(dim=1)
        for tid, d in zip(mb.trajectory_ids, diff.tolist(), strict=True):
            case = tid.split("/")[0]
            worst[case] = max(worst.get(case, 0.0), d)
    assert set(worst) == {*CASES, "two_turns"}
    assert max(worst.values()) < BOUND, worst


def test_a_real_step_masks_and_counts_tokens_past_the_bound(engine: DeepSpeedPolicy) -> None:
    """The guard in the engine's step (loss.mask_log_ratio, 2.0 by default): sampler logprobs equal
    to the policy's except two tokens forged 3 and 5 nats away; both are counted as masked. (Runs
    after the agreement test: its optimizer step moves the engine's weights.)"""
    t = traj_pb.Trajectory(trajectory_id="forged", advantage=-1.0)
    t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 40, 41, 6], completion_ids=[60, 61, 62, 63, 2]))
    t.turns[0].completion_logprobs.extend([0.0] * 5)
    (sample,) = trajectory_samples(t)
    mb = plan_step([sample], pad_id=engine.pad_id).ranks[0][0]
    assert mb.on_policy is None  # no version given: unknown
    current = engine.eval_logprobs(mb)[0].tolist()
    sample.old_logprobs = [0.0, *current]
    sample.old_logprobs[-1] -= 5.0  # the sampler thought the token far less likely (ratio e^5)
    sample.old_logprobs[-2] += 3.0  # or far more likely (ratio e^-3)
    assert engine.cfg.loss.mask_log_ratio == 2.0
    # sampled by the weights being trained (version 0 = the sample's): its gap is the sampler's alone
    stats = engine.train_step(plan_step([sample], pad_id=engine.pad_id, version=0).ranks[0])
    means = stats.means()
    assert stats.sums["tokens"] == 5
    assert means["mismatch_masked_tokens"] == 2 and means["mismatch_masked_fraction"] == pytest.approx(0.4)
    # k3 = e^-g + g - 1 of the gaps g = trainer - sampler = +5 and -3 (the others are 0), over the 5 tokens
    want = ((math.exp(-5.0) + 5.0 - 1.0) + (math.exp(3.0) - 3.0 - 1.0)) / 5
    assert means["mismatch_kl"] == pytest.approx(want, rel=1e-4)
    assert means["mismatch_kl_on_policy"] == pytest.approx(want, rel=1e-4)
