"""Runs inside vLLM's worker processes (`worker_extension_cls`): weight loading for
`VLLMBackend`, and the logprobs the rollmesh contract promises.

Weights: vLLM on CPU repacks weights at load time, so editing parameters in place does not
reach the kernels; vLLM's in-place reload path (`Worker.reload_weights`) re-runs the loader and
the repacking. Tensors cannot travel through `collective_rpc`, so they come as safetensors bytes
or as a safetensors file on this host.

Fused modules (q/k/v -> qkv_proj, gate/up -> gate_up_proj) are reloaded as a whole: vLLM
rebuilds a layer from the tensors it was given, so an update that names only some of a layer's
tensors is completed here with the current values of the rest of that layer (`_complete`). The
current checkpoint-format weights are therefore kept: the served checkpoint files (read lazily,
never copied) overlaid with the tensors of later updates.

Logprobs: vLLM offers the raw model's log softmax (no temperature) or the "processed" one, after
bans, penalties, temperature AND min-p/top-k/top-p masking. The contract wants what a trainer
recomputes with a forward pass: log softmax(logits / T) of the model's raw logits, before
repetition/presence/frequency penalties, bans (min_tokens' EOS) and truncation, as the hf
backend reports them. `_patch_sampler` keeps a copy of the raw logits when logprobs are asked
for and reports log softmax(raw / T) in place of vLLM's processed logprobs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .vllm import safetensors_files

_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3." -> a transformer block


def _block_of(name: str) -> str:
    m = _BLOCK.match(name)
    return m.group(1) if m else name


# ---- logprobs before truncation -----------------------------------------------------------------

_state = threading.local()


def _patch_sampler() -> None:
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler
    from vllm.v1.sample.sampler import _SAMPLING_EPS, Sampler

    if getattr(Sampler, "_rollmesh_patched", False):
        return
    orig_sample = Sampler.sample
    orig_processors = Sampler.apply_logits_processors
    orig_topk_init = TopKTopPSampler.__init__

    def topk_init(self: Any, logprobs_mode: Any = "raw_logprobs", *args: Any, **kwargs: Any) -> None:
        # Its post-truncation log softmax is never used (see `sample`); in "raw" mode it skips
        # computing one at every step and may use FlashInfer on CUDA.
        orig_topk_init(self, "raw_logprobs", *args, **kwargs)

    def apply_logits_processors(self: Any, logits: torch.Tensor, sampling_metadata: Any, *args: Any) -> torch.Tensor:
        want = self.logprobs_mode == "processed_logprobs" and (
            sampling_metadata.max_num_logprobs is not None or bool(sampling_metadata.logprob_token_ids)
        )
        # bans and penalties edit the logits in place: keep the model's own
        _state.raw = logits.to(torch.float32, copy=True) if want else None
        return orig_processors(self, logits, sampling_metadata, *args)

    def sample(self: Any, logits: torch.Tensor, sampling_metadata: Any, logprobs_mode_override: Any = None) -> Any:
        raw, _state.raw = getattr(_state, "raw", None), None
        sampled, processed = orig_sample(self, logits, sampling_metadata, logprobs_mode_override)
        if raw is not None:  # (random rows: the raw-mode top-k/top-p sampler returned none)
            temp = sampling_metadata.temperature  # None when every request is greedy
            if temp is not None:
                raw = raw / torch.where(temp < _SAMPLING_EPS, 1.0, temp).unsqueeze(1)
            processed = raw.log_softmax(dim=-1)
        return sampled, processed

    TopKTopPSampler.__init__ = topk_init
    Sampler.apply_logits_processors = apply_logits_processors
    Sampler.sample = sample
    Sampler._rollmesh_patched = True


_patch_sampler()


# ---- weights ------------------------------------------------------------------------------------


class RollmeshWorkerExtension:
    """Methods added to vLLM's worker class; the backend calls them through `collective_rpc`."""

    def _rm_checkpoint(self) -> dict[str, Any]:
        """name -> a tensor (from an update) or the checkpoint file that holds it."""
        if not hasattr(self, "_rm_weights"):
            from safetensors import safe_open

            weights: dict[str, Any] = {}
            model_dir = self.vllm_config.model_config.model  # type: ignore[attr-defined]
            for f in safetensors_files(model_dir):
                with safe_open(str(f), framework="pt") as st:
                    for k in st.keys():
                        weights[k] = f
            self._rm_weights = weights
        return self._rm_weights

    def _complete(self, tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """The update's tensors, plus the current values of every other tensor of the blocks
        (transformer layers) they belong to."""
        from safetensors import safe_open

        current = self._rm_checkpoint()
        blocks = {_block_of(k) for k in tensors}
        yield from tensors.items()
        by_file: dict[Path, list[str]] = {}
        for name, where in current.items():
            if name in tensors or _block_of(name) not in blocks:
                continue
            if isinstance(where, torch.Tensor):
                yield name, where
            else:
                by_file.setdefault(where, []).append(name)
        for f, names in by_file.items():
            with safe_open(str(f), framework="pt") as st:
                for name in names:
                    yield name, st.get_tensor(name)

    def _rm_reload(self, tensors: dict[str, torch.Tensor]) -> int:
        self.reload_weights(weights_iterator=self._complete(tensors))  # type: ignore[attr-defined]
        current = self._rm_checkpoint()
        for k, v in tensors.items():
            current[k] = v
        return len(tensors)

    def rm_load_safetensors_bytes(self, blob: bytes) -> int:
        from safetensors.torch import load

        return self._rm_reload(load(blob))

    def rm_load_safetensors_files(self, paths: Iterable[str], copy: bool = False) -> int:
        """`copy`: the files may change after the call (a sender's shared memory); else they stay
        as they are (a checkpoint, or a file nobody writes again)."""
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = {}
        for p in paths:
            # views of the file's pages (a shared mapping), kept for later partial updates: they
            # stay valid if the file is removed, not if it is rewritten
            loaded = load_file(p)
            tensors.update({k: v.clone() for k, v in loaded.items()} if copy else loaded)
        return self._rm_reload(tensors)
