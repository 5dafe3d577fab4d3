"""A tiny, deterministic Llama-style model and tokenizer, built locally without a network.

For tests and the offline quickstart (`rollmesh model tiny --out DIR`). The weights are random
(seeded), so the model babbles, but it is a real transformer: real forward passes, real KV cache,
real sampling. Head size 64 because vLLM's CPU attention refuses smaller heads. Rebuilding with the
same arguments gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]  # ids 0..6, in this order

# One turn per message: `<|role|>content</s>`; assistant tool calls are written as JSON lines.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% elif m['content'] %}{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% for call in m.get('tool_calls') or [] %}"
    "<tool_call>{{ call['function'] | tojson }}</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog.
A small model can still learn to add numbers if it is rewarded for the right answer.
Hello! How can I help you today?
What is 12 + 7? The answer is 19.
What is 3 * 4? The answer is 12.
Compute 100 - 58 = 42, then 42 / 6 = 7.
Please think step by step, then give the final answer.
The weather is sunny, the sky is blue, and the birds are singing.
I searched the wiki for the capital of France: it is Paris.
Call the tool with the arguments {"query": "population of Tokyo"} and wait for the result.
The tool returned an error; try again with a different query.
Guess a number between 1 and 100. Too high! Too low! Correct, you win.
def add(a, b):
    return a + b
Reinforcement learning updates the policy with rewards from an environment.
The trainer sends new weights to the inference server after every step.
Yes. No. Maybe. Thank you! You're welcome.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 50 75 99 100 1000 2024
+ - * / = ( ) [ ] { } < > , . ; : ! ? ' " ` ~ @ # $ % ^ & | _ \\ \t
The user asked a question, and the assistant answered it politely and correctly.
Once upon a time there was a little robot who liked to count stars.
Summarize the document in one sentence. Translate the sentence into French: bonjour, merci.
Numbers: 3.14159, 2.71828, -1, 1e-5, 0.5, 42%.
Café, naïve, über, 東京, 😀 are encoded byte by byte when no merge covers them.
"""


def corpus_lines() -> list[str]:
    """The built-in training text of the tokenizer (a few chat turns are added for the role tokens)."""
    lines = _CORPUS.splitlines()
    lines += [f"{a} + {b} = {a + b}" for a in range(0, 30, 3) for b in range(0, 30, 7)]
    lines += [f"{a} * {b} = {a * b}" for a in range(2, 13, 2) for b in range(3, 13, 3)]
    return lines


def build_tokenizer(vocab_size: int = 512, model_max_length: int = 1024):
    """A byte-level BPE tokenizer (any text encodes, byte by byte at worst) with chat roles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Plain text gets a leading <s> (as Llama tokenizers do); chat prompts get it from the template.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="left",
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    max_position_embeddings: int = 1024,
    init_std: float = 0.1,
) -> Path:
    """Writes config, float32 safetensors weights, generation config and tokenizer to `out_dir`.

    Weights are drawn from one seeded generator in parameter order (norms are ones), independent of
    transformers' own initialisation, so the files only depend on the arguments. `init_std` 0.1
    gives peaked enough next-token distributions for greedy decoding to be stable in tests."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden % heads or hidden // heads < 64:
        raise ValueError(f"hidden={hidden} / heads={heads} must give a head size of at least 64 (vLLM CPU attention)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * init_std)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _llama_cpp_permute(w, n_head: int):
    """llama.cpp stores q/k projections with the rotary halves interleaved (its convert script)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: str | Path, out_file: str | Path) -> Path:
    """Writes a float32 GGUF (llama architecture, gpt2-style BPE tokenizer, chat template) of a
    Llama-style Hugging Face directory such as the tiny model: GGUF loading and `rollmesh model
    import` can then be tested offline, as llama.cpp's converter would have written it."""
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    src = Path(model_dir)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError(f"write_gguf handles llama models, not {cfg.get('model_type')!r}")
    tok_json = json.loads((src / "tokenizer.json").read_text())
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    template_file = src / "chat_template.jinja"
    chat_template = template_file.read_text() if template_file.is_file() else tok_cfg.get("chat_template")

    n_layers, n_head, n_kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = Path(out_file)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(src.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 1e4)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok_json["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = tok_json["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, setter in (
        ("bos_token_id", w.add_bos_token_id),
        ("eos_token_id", w.add_eos_token_id),
        ("pad_token_id", w.add_pad_token_id),
    ):
        if cfg.get(key) is not None:
            setter(cfg[key])
    if "<unk>" in vocab:
        w.add_unk_token_id(vocab["<unk>"])
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for name, t in sorted(load_file(str(src / "model.safetensors")).items()):
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        t = t.astype(np.float32)
        if name.endswith("q_proj.weight"):
            t = _llama_cpp_permute(t, n_head)
        elif name.endswith("k_proj.weight"):
            t = _llama_cpp_permute(t, n_kv)
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
