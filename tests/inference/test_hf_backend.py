"""The hf backend on the tiny model: real transformers forward passes, no mocks. Generation is
checked against transformers' own `generate` and against teacher-forced forward passes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rollmesh.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rollmesh.inference.backend import GenerationRequest, Sampling  # noqa: E402
from rollmesh.inference.backends.hf import HFBackend, TextStream  # noqa: E402
from rollmesh.inference.backends.sampling import RowSampling, pick_tokens  # noqa: E402

GREEDY = Sampling(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=True)


@dataclass
class Out:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    deltas: list[str] = field(default_factory=list)
    finish: str | None = None
    versions: set[int] = field(default_factory=set)


async def run(backend: Any, prompt: list[int], sampling: Sampling, rid: str = "r") -> list[Out]:
    outs = [Out() for _ in range(sampling.n)]
    async for d in backend.generate(GenerationRequest(rid, prompt, sampling)):
        o = outs[d.index]
        assert o.finish is None, "no delta after the last one of a sample"
        o.ids += d.token_ids
        o.logprobs += d.logprobs
        o.text += d.text
        o.deltas.append(d.text)
        o.finish = d.finish_reason
        o.versions.add(d.policy_version)
    assert all(o.finish for o in outs)
    return outs


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    """Polls the backend's state (its counters are plain attributes, not events)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def chat_ids(backend: Any, text: str) -> list[int]:
    tok = backend.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return list(tok(prompt, add_special_tokens=False)["input_ids"])


def prompts(backend: Any, k: int) -> list[list[int]]:
    return [chat_ids(backend, f"Question {i}: what is {i} + {3 * i + 1}? " + "Think. " * (i % 4)) for i in range(k)]


def reference_greedy(backend: Any, prompt: list[int], max_new: int) -> list[int]:
    out = backend.hf_model.generate(
        torch.tensor([prompt], device=backend.device),
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        do_sample=False,
        eos_token_id=None,
    )
    return out[0, len(prompt) :].tolist()


def teacher_forced_logprobs(backend: Any, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    with torch.no_grad():
        logits = backend.hf_model(torch.tensor([prompt + completion], device=backend.device)).logits[0].float()
    t = temperature or 1.0
    lp = (logits / t).log_softmax(-1)
    return [lp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(completion)]


@pytest.fixture
async def own_backend(tiny_model_dir: Path):
    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", max_batch_size=32)
    yield backend
    await backend.close()


# ---- exactness -----------------------------------------------------------------------------


async def test_greedy_equals_transformers_generate(hf_backend) -> None:
    for prompt in prompts(hf_backend, 3):
        [out] = await run(hf_backend, prompt, GREEDY)
        assert out.ids == reference_greedy(hf_backend, prompt, GREEDY.max_tokens)
        assert out.finish == "length"


async def test_greedy_in_a_batch_equals_transformers_generate(hf_backend) -> None:
    ps = prompts(hf_backend, 6)  # different lengths: left padding inside one batch
    outs = await asyncio.gather(*(run(hf_backend, p, GREEDY, f"g{i}") for i, p in enumerate(ps)))
    for p, [out] in zip(ps, outs, strict=True):
        assert out.ids == reference_greedy(hf_backend, p, GREEDY.max_tokens)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
async def test_logprobs_match_teacher_forced_forward(hf_backend, temperature: float) -> None:
    ps = prompts(hf_backend, 4)
    s = Sampling(temperature=temperature, top_k=40, top_p=0.9, seed=11, max_tokens=16, ignore_eos=True, logprobs=True)
    outs = await asyncio.gather(*(run(hf_backend, p, s, f"lp{i}") for i, p in enumerate(ps)))
    for p, [out] in zip(ps, outs, strict=True):
        assert len(out.logprobs) == len(out.ids) == 16
        ref = teacher_forced_logprobs(hf_backend, p, out.ids, temperature)
        assert max(abs(a - b) for a, b in zip(ref, out.logprobs, strict=True)) < 1e-4


async def test_text_is_the_decoded_completion(hf_backend) -> None:
    [out] = await run(hf_backend, chat_ids(hf_backend, "Say something."), Sampling(seed=1, max_tokens=40))
    expected = hf_backend.tokenizer.decode(out.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert out.text == expected
    assert out.logprobs == []  # not requested


def test_incremental_detokenization_handles_multibyte_characters(hf_backend) -> None:
    tok = hf_backend.tokenizer
    text = "Café, 東京 and 😀: 12 + 7 = 19"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, [1], stops=())
    deltas = []
    for i in ids:
        stream.push(i)
        deltas.append(stream.take(final=False))
    deltas.append(stream.take(final=True))
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert len([d for d in deltas if d]) > 5  # streamed, not all at the end


# ---- sampling --------------------------------------------------------------------------------


async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(hf_backend) -> None:
    ps = prompts(hf_backend, 8)
    s = Sampling(temperature=1.0, seed=1234, max_tokens=20, ignore_eos=True)
    [alone] = await run(hf_backend, ps[0], s)
    [again] = await run(hf_backend, ps[0], s)
    others = [
        run(hf_backend, p, Sampling(temperature=0.9, max_tokens=30, ignore_eos=True), f"o{i}")
        for i, p in enumerate(ps[1:])
    ]
    together = await asyncio.gather(run(hf_backend, ps[0], s, "seeded"), *others)
    assert alone.ids == again.ids == together[0][0].ids
    [other_seed] = await run(hf_backend, ps[0], Sampling(temperature=1.0, seed=1235, max_tokens=20, ignore_eos=True))
    assert other_seed.ids != alone.ids


async def test_n_samples_share_one_prefill(own_backend) -> None:
    prompt = chat_ids(own_backend, "Tell me a story.")
    before = own_backend.forward_passes
    outs = await run(own_backend, prompt, Sampling(temperature=1.0, n=5, seed=3, max_tokens=10, ignore_eos=True))
    assert own_backend.forward_passes - before == 10  # one prefill + 9 decode steps for all 5 samples
    assert len({tuple(o.ids) for o in outs}) == 5
    assert all(len(o.ids) == 10 and o.finish == "length" for o in outs)
    greedy = await run(own_backend, prompt, Sampling(temperature=0.0, n=3, max_tokens=10, ignore_eos=True))
    assert greedy[0].ids == greedy[1].ids == greedy[2].ids == reference_greedy(own_backend, prompt, 10)


def test_truncation_keeps_logprobs_untruncated() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    greedy = logits.argmax(-1).tolist()
    for s in (Sampling(top_k=1), Sampling(top_p=1e-6), Sampling(min_p=1.0)):
        rows = [RowSampling(s, torch.Generator().manual_seed(i), history=[]) for i in range(4)]
        picks = pick_tokens(logits, rows)
        assert [t for t, _ in picks] == greedy
        expected = logits.log_softmax(-1).gather(1, torch.tensor(greedy).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor([lp for _, lp in picks]), expected, atol=1e-6)


def test_repetition_penalty_and_bans() -> None:
    logits = torch.tensor([[3.0, 2.9, -1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    [(tok, _)] = pick_tokens(logits, [RowSampling(Sampling(temperature=0, repetition_penalty=2.0), gen, history=[0])])
    assert tok == 1  # 3.0 / 2 < 2.9
    [(tok, _)] = pick_tokens(logits, [RowSampling(Sampling(temperature=0), gen, history=[], banned=(0, 1))])
    assert tok == 3


# ---- stopping --------------------------------------------------------------------------------


async def test_stop_strings_cut_the_text(hf_backend) -> None:
    prompt = chat_ids(hf_backend, "Count.")
    [full] = await run(hf_backend, prompt, Sampling(temperature=0.0, max_tokens=40, ignore_eos=True))
    stop = full.text[10:14]
    assert len(stop) == 4 and stop.strip()
    cut = full.text[: full.text.index(stop)]
    [out] = await run(
        hf_backend, prompt, Sampling(temperature=0.0, max_tokens=40, ignore_eos=True, stop=("zzzz", stop))
    )
    assert out.finish == "stop"
    assert out.text == cut
    assert not any(stop in d for d in out.deltas)
    assert out.ids == full.ids[: len(out.ids)] and len(out.ids) < len(full.ids)


async def test_stop_token_ids_max_tokens_and_min_tokens(hf_backend) -> None:
    prompt = chat_ids(hf_backend, "Count again.")
    [full] = await run(hf_backend, prompt, Sampling(temperature=0.0, max_tokens=30, ignore_eos=True))
    stop_tok = full.ids[5]
    first = full.ids.index(stop_tok)
    [out] = await run(
        hf_backend, prompt, Sampling(temperature=0.0, max_tokens=30, ignore_eos=True, stop_token_ids=(stop_tok,))
    )
    assert out.finish == "stop" and out.ids == full.ids[: first + 1]  # the stop token is returned
    [short] = await run(hf_backend, prompt, Sampling(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert short.finish == "length" and short.ids == full.ids[:3]
    # min_tokens: the stop token cannot end the sample early
    s = Sampling(temperature=0.0, max_tokens=30, ignore_eos=True, stop_token_ids=(stop_tok,), min_tokens=first + 2)
    [late] = await run(hf_backend, prompt, s)
    assert len(late.ids) >= first + 2
    assert stop_tok not in late.ids[: first + 2]


async def test_eos_ignore_eos_and_min_tokens(own_backend) -> None:
    """Swap two rows of the output layer so that the greedy first token becomes </s>."""
    prompt = chat_ids(own_backend, "Stop right away.")
    eos = own_backend.tokenizer.eos_token_id
    [before] = await run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=8))
    t1 = before.ids[0]
    assert t1 != eos
    w = own_backend.hf_model.lm_head.weight.detach().clone()
    w[[t1, eos]] = w[[eos, t1]]
    await own_backend.update_weights({"lm_head.weight": w}, 1)
    [out] = await run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=8))
    assert out.ids == [eos] and out.finish == "stop" and out.text == ""
    [ignored] = await run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert ignored.ids[0] == eos and len(ignored.ids) == 8 and ignored.finish == "length"
    [late] = await run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=8, min_tokens=3))
    assert eos not in late.ids[:3] and len(late.ids) >= 3


async def test_context_length_ends_a_sample(own_backend) -> None:
    ctx = own_backend.context_length
    prompt = [5 + i % 300 for i in range(ctx - 4)]
    [out] = await run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=100, ignore_eos=True))
    assert out.finish == "length" and len(out.ids) == 4


# ---- batching --------------------------------------------------------------------------------


async def test_concurrent_requests_share_forward_passes(own_backend) -> None:
    ps = prompts(own_backend, 16)
    s = Sampling(temperature=0.8, max_tokens=20, ignore_eos=True)
    before = own_backend.forward_passes
    outs = await asyncio.gather(*(run(own_backend, p, s, f"c{i}") for i, p in enumerate(ps)))
    passes = own_backend.forward_passes - before
    assert all(len(o[0].ids) == 20 for o in outs)
    assert passes < 16 * 20 / 4, f"{passes} forward passes for 16 requests of 20 tokens: not batched"


async def test_requests_join_a_running_batch(own_backend) -> None:
    ps = prompts(own_backend, 4)
    first = asyncio.create_task(run(own_backend, ps[0], Sampling(temperature=0.0, max_tokens=40, ignore_eos=True)))
    await until(lambda: own_backend.forward_passes >= 5)
    later = await asyncio.gather(*(run(own_backend, p, GREEDY, f"j{i}") for i, p in enumerate(ps[1:])))
    [a] = await first
    assert a.ids == reference_greedy(own_backend, ps[0], 40)
    for p, [o] in zip(ps[1:], later, strict=True):
        assert o.ids == reference_greedy(own_backend, p, GREEDY.max_tokens)
    assert own_backend.forward_passes < 40 + 3 * GREEDY.max_tokens


async def test_abandoned_request_frees_its_rows(own_backend) -> None:
    agen = own_backend.generate(
        GenerationRequest("gone", chat_ids(own_backend, "hi"), Sampling(max_tokens=500, ignore_eos=True))
    )
    await agen.__anext__()
    await agen.aclose()
    applied = await asyncio.wait_for(own_backend.update_weights({}, 1), 10)  # nothing left in flight
    assert applied == 0 and own_backend.policy_version == 1
    await until(lambda: own_backend.active_sequences == 0)


async def test_bad_requests_are_refused(hf_backend) -> None:
    for prompt in ([], [10**6], list(range(5, 5 + hf_backend.context_length))):
        with pytest.raises(InvalidArgumentError):
            await run(hf_backend, prompt, GREEDY)


# ---- weights -----------------------------------------------------------------------------------


async def test_param_specs_cover_every_weight(hf_backend) -> None:
    specs = hf_backend.param_specs()
    assert set(specs) == {n for n, _ in hf_backend.hf_model.named_parameters()}
    assert specs["lm_head.weight"].shape == (len(hf_backend.tokenizer), 128)
    assert specs["lm_head.weight"].dtype == "float32"


async def test_update_weights_in_flight_and_after(own_backend) -> None:
    prompt = chat_ids(own_backend, "What is 12 + 7?")
    [before] = await run(own_backend, prompt, GREEDY)
    in_flight = asyncio.create_task(run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=60, ignore_eos=True)))
    await until(lambda: own_backend.active_sequences > 0)
    new = {n: p.detach() * 1.5 for n, p in own_backend.hf_model.named_parameters() if "mlp" in n or "lm_head" in n}
    update = asyncio.create_task(own_backend.update_weights({k: v.to(torch.bfloat16) for k, v in new.items()}, 7))
    await asyncio.sleep(0.01)
    held = asyncio.create_task(run(own_backend, prompt, GREEDY, "held"))  # arrives during the update
    assert await update == len(new)
    [old] = await in_flight
    assert old.versions == {0} and len(old.ids) == 60
    assert old.ids[:24] == before.ids
    [after] = await held
    assert after.versions == {7} and own_backend.policy_version == 7
    assert after.ids != before.ids
    assert after.ids == reference_greedy(own_backend, prompt, GREEDY.max_tokens)  # the new weights are served
    got = own_backend.hf_model.lm_head.weight
    assert torch.equal(got, new["lm_head.weight"].to(torch.bfloat16).to(got.dtype))


async def test_update_with_unknown_or_misshapen_tensors_changes_nothing(own_backend) -> None:
    prompt = chat_ids(own_backend, "Hello")
    [before] = await run(own_backend, prompt, GREEDY)
    w = own_backend.hf_model.lm_head.weight
    with pytest.raises(InvalidArgumentError, match="unknown"):
        await own_backend.update_weights({"lm_head.weight": w * 0, "nope.weight": w}, 1)
    with pytest.raises(InvalidArgumentError, match="shape"):
        await own_backend.update_weights({"lm_head.weight": w[:3] * 0}, 1)
    [after] = await run(own_backend, prompt, GREEDY)
    assert after.ids == before.ids and own_backend.policy_version == 0


async def test_load_weights_from_a_directory_and_a_file(own_backend, tiny_model_dir_seed1: Path) -> None:
    other = await HFBackend.create(str(tiny_model_dir_seed1), dtype="float32")
    try:
        prompt = chat_ids(own_backend, "Load new weights.")
        [want] = await run(other, prompt, GREEDY)
        [before] = await run(own_backend, prompt, GREEDY)
        assert before.ids != want.ids
        applied = await own_backend.load_weights(str(tiny_model_dir_seed1), 3)
        assert applied == len(own_backend.param_specs())
        [got] = await run(own_backend, prompt, GREEDY)
        assert got.ids == want.ids and got.versions == {3}
    finally:
        await other.close()
    # a single safetensors file (here: the seed-0 weights back)
    from rollmesh.inference.tiny import build_tiny_model

    seed0 = build_tiny_model(tiny_model_dir_seed1.parent / "seed0-again")
    await own_backend.load_weights(str(seed0 / "model.safetensors"), 4)
    [back] = await run(own_backend, prompt, GREEDY)
    assert back.ids == before.ids and back.versions == {4}


async def test_pause_holds_new_requests_until_resume(own_backend) -> None:
    prompt = chat_ids(own_backend, "Wait for me.")
    running = asyncio.create_task(run(own_backend, prompt, Sampling(temperature=0.0, max_tokens=30, ignore_eos=True)))
    await until(lambda: own_backend.active_sequences > 0)
    await own_backend.pause()
    assert own_backend.paused
    held = asyncio.create_task(run(own_backend, prompt, GREEDY, "held"))
    [done] = await running  # in flight: finishes while paused
    assert len(done.ids) == 30
    passes = own_backend.forward_passes
    await asyncio.sleep(0.2)
    assert not held.done() and own_backend.forward_passes == passes
    await own_backend.resume()
    [out] = await asyncio.wait_for(held, 10)
    assert len(out.ids) == GREEDY.max_tokens and not own_backend.paused
