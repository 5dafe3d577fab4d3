"""The `hf` backend: transformers + torch, with dynamic (iteration-level) batching.

One background task owns the model and runs a decode loop. All active sequences, from every
request and every one of their n samples, share ONE left-padded KV cache (`BatchCache`), so each
step is one batched forward pass with one new token per sequence. Between steps the loop:

- drops finished or abandoned sequences from the cache (and trims padding columns nobody needs);
- admits waiting requests (up to `max_batch_size` sequences): their prompts are prefilled together
  in one forward pass, each prompt once, and the cache rows are then repeated for the n samples,
  which all draw their first token from the same prefill logits; the new rows are merged into the
  running cache (the shorter side is left-padded).

Each row samples with its own parameters and its own `torch.Generator` (see `sampling.py`), so a
seeded request is reproducible whatever else shares the batch. Forward passes and sampling run in
a worker thread; the event loop only routes `TokenDelta`s.

Weight updates follow `backend.Backend`: new requests are held, the loop drains the ones in
flight, tensors are copied into the parameters, the version is bumped, held requests go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidArgumentError, NotFoundError, UnavailableError, UnimplementedError, quoted
from .. import same_host
from ..backend import GenerationRequest, ParamSpec, Sampling, TokenDelta
from ..models import load_model, load_tokenizer, resolve_model
from .sampling import RowSampling, pick_tokens, sample_seed

log = logging.getLogger(__name__)

PROMPT_CONTEXT_TOKENS = 6  # prompt tokens kept as detokenization context (leading spaces, bytes)


# ---- text ------------------------------------------------------------------------------------


class TextStream:
    """Incremental detokenization of one sample, with stop strings.

    Text is released only once its bytes form whole characters (a multi-byte character split over
    tokens waits for its last byte), and the last `len(longest stop) - 1` characters are held back
    until the sample ends, so a stop string is never half-sent."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self.prefix = 0  # ids[prefix:read] decode to text already accounted for
        self.read = len(self.ids)
        self.text = ""
        self.sent = 0
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        self._advance(final=False)

    def _advance(self, final: bool) -> None:
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.text += now[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)

    def cut_at_stop(self, searched_from: int) -> bool:
        """True when a stop string occurs in the text (searched from about `searched_from`);
        the text is then cut before it."""
        start = max(0, searched_from - self.hold)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def take(self, final: bool) -> str:
        """The text not sent yet (all of it when the sample has finished)."""
        if final and self.read < len(self.ids):
            self._advance(final=True)  # flush bytes that never completed a character
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent : end]
        self.sent = end
        return out


# ---- requests and sequences ------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    request: GenerationRequest
    version: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    samples: list[_Sample] = field(default_factory=list)
    unfinished: int = 0
    cancelled: bool = False
    released: bool = False

    @property
    def sampling(self) -> Sampling:
        return self.request.sampling


@dataclass(eq=False)
class _Sample:
    req: _Request
    index: int
    row: RowSampling
    text: TextStream
    prompt_len: int
    generated: list[int] = field(default_factory=list)
    finished: bool = False

    @property
    def dropped(self) -> bool:
        return self.finished or self.req.cancelled


class BatchCache:
    """The KV cache of all active rows, left-padded to a common length, with its attention mask
    (1 = real token) and each row's number of real tokens (= the next position id)."""

    def __init__(self, kv: Any, mask: torch.Tensor, lengths: torch.Tensor) -> None:
        for layer in kv.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise UnimplementedError(
                    f"the hf backend batches full-attention caches only; this model uses {type(layer).__name__}",
                    reason="NOT_SUPPORTED",
                )
        self.kv, self.mask, self.lengths = kv, mask, lengths

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _map(self, fn: Any) -> None:
        for layer in self.kv.layers:
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)

    def select(self, rows: torch.Tensor) -> None:
        """Keeps these rows, then drops the padding columns no remaining row uses."""
        self._map(lambda t: t.index_select(0, rows))
        self.mask, self.lengths = self.mask.index_select(0, rows), self.lengths.index_select(0, rows)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.width
        if first:
            self._map(lambda t: t[:, :, first:])
            self.mask = self.mask[:, first:]

    def left_pad(self, n: int) -> None:
        if n <= 0:
            return

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3]), t], dim=2)

        self._map(pad)
        self.mask = torch.cat([self.mask.new_zeros(self.rows, n), self.mask], dim=1)

    def extend(self, other: BatchCache) -> None:
        """Appends the rows of `other` (after this batch's rows)."""
        width = max(self.width, other.width)
        self.left_pad(width - self.width)
        other.left_pad(width - other.width)
        for mine, theirs in zip(self.kv.layers, other.kv.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)
        self.lengths = torch.cat([self.lengths, other.lengths], dim=0)


# ---- the backend -----------------------------------------------------------------------------


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        device: str,
        max_batch_size: int = 32,
    ) -> None:
        self.hf_model = model
        self.tokenizer = tokenizer
        self.model = model_name
        # the Hugging Face directory the weights came from (create() sets it; None for a GGUF)
        self.model_path: str | None = None
        self.device = torch.device(device)
        self.max_batch_size = max(1, int(max_batch_size))
        cfg = model.config
        self.context_length = int(
            min(
                getattr(cfg, "max_position_embeddings", None) or 2048,
                getattr(tokenizer, "model_max_length", None) or 10**9,
            )
        )
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.policy_version = 0
        self.forward_passes = 0  # model forward calls (prefill or decode steps): batching is visible here
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = self._eos_ids()
        self._params = dict(model.named_parameters(remove_duplicate=False))

        self._pending: deque[_Request] = deque()
        self._rows: list[_Sample] = []
        self._cache: BatchCache | None = None
        self._inflight: set[_Request] = set()
        self._gate = asyncio.Condition()
        self._paused = False
        self._updating = False
        self._update_lock = asyncio.Lock()
        self._step_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        model_spec: str,
        *,
        dtype: str = "auto",
        device: str | None = None,
        max_batch_size: int = 32,
        name: str | None = None,
    ) -> HFBackend:
        resolved = resolve_model(model_spec)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto" and torch.device(device).type == "cpu":
            # The trainer's "auto" on a CPU is float32 too: a bfloat16 sampler against a float32
            # trainer differs by up to ~0.5 in a token's logprob (SmolLM2), which the importance
            # ratio reads as policy change; float32 is also the faster of the two on most CPUs.
            dtype = "float32"

        def load() -> tuple[Any, Any]:
            tokenizer = load_tokenizer(resolved)
            model = load_model(resolved, dtype).to(device)
            return model, tokenizer

        model, tokenizer = await asyncio.to_thread(load)
        backend = cls(model, tokenizer, model_name=name or resolved.name, device=device, max_batch_size=max_batch_size)
        backend.model_path = None if resolved.gguf_file else str(resolved.path)
        return backend

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.hf_model, "generation_config", None), self.hf_model.config):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    # ---- generation ------------------------------------------------------------------------

    def _check(self, request: GenerationRequest) -> None:
        ids, s = request.prompt_ids, request.sampling
        # InferenceCore checks the same before a request gets here; this guards direct callers
        if not ids:
            raise InvalidArgumentError(
                "the prompt is empty", reason="MISSING_FIELD", metadata={"field": "tokens.prompt_ids"}
            )
        if len(ids) >= self.context_length:
            raise InvalidArgumentError(
                f"prompt of {len(ids)} tokens does not fit the model's context of {self.context_length}",
                reason="PROMPT_TOO_LONG",
            )
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidArgumentError(
                f"token ids out of the vocabulary [0, {self.vocab_size}): {bad[:5]}",
                reason="INVALID_FIELD",
                metadata={"field": "tokens.prompt_ids"},
            )
        if s.n < 1 or s.max_tokens < 1 or s.temperature < 0:
            raise InvalidArgumentError(
                "sampling needs n >= 1, max_tokens >= 1 and temperature >= 0", reason="BAD_PARAMS"
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self._check(request)
        if self._closed:
            raise UnavailableError("the hf backend is closed", reason="ENGINE_STOPPED")
        req = await self._admit(request)
        try:
            remaining = request.sampling.n
            while remaining:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason:
                    remaining -= 1
                yield item
        finally:
            if remaining:
                req.cancelled = True  # the loop drops its rows at the next step
                self._release(req)

    async def _admit(self, request: GenerationRequest) -> _Request:
        async with self._gate:
            await self._gate.wait_for(lambda: not (self._paused or self._updating))
            req = _Request(request, self.policy_version)
            self._inflight.add(req)
        self._pending.append(req)
        self._ensure_loop()
        self._wake.set()
        return req

    def _release(self, req: _Request) -> None:
        if req.released:
            return
        req.released = True
        self._inflight.discard(req)
        if not self._inflight:  # an update may be waiting for the last request in flight
            task = asyncio.get_running_loop().create_task(self._notify())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._gate:
            self._gate.notify_all()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="hf-backend-loop")

    async def _run(self) -> None:
        while not self._closed:
            if not self._rows and not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            admitted = self._take_pending()
            try:
                async with self._step_lock:
                    deliveries = await asyncio.to_thread(self._step, admitted)
            except Exception as e:  # a failed forward fails the requests it carried, not the server
                log.exception("hf backend step failed")
                self._fail_all([*admitted, *{s.req for s in self._rows}], e)
                continue
            self._deliver(deliveries)

    def _take_pending(self) -> list[_Request]:
        rows = sum(1 for s in self._rows if not s.dropped)
        taken: list[_Request] = []
        while self._pending:
            req = self._pending[0]
            if req.cancelled:
                self._pending.popleft()
                continue
            if rows and rows + req.sampling.n > self.max_batch_size:
                break  # FIFO: wait for room rather than let small requests overtake
            self._pending.popleft()
            taken.append(req)
            rows += req.sampling.n
        return taken

    def _fail_all(self, requests: Sequence[_Request], error: Exception) -> None:
        self._rows, self._cache = [], None
        for req in set(requests):
            req.queue.put_nowait(
                UnavailableError(f"generation failed in the hf backend: {error}", reason="BACKEND_FAILED")
            )
            self._release(req)

    def _deliver(self, deliveries: list[tuple[_Request, TokenDelta]]) -> None:
        for req, delta in deliveries:
            if req.cancelled:
                continue
            req.queue.put_nowait(delta)
            if delta.finish_reason:
                req.unfinished -= 1
                if req.unfinished == 0:
                    self._release(req)

    # ---- one step (worker thread) ------------------------------------------------------------

    @torch.inference_mode()
    def _step(self, admitted: list[_Request]) -> list[tuple[_Request, TokenDelta]]:
        """Drops finished rows, decodes one token for every running row, prefills the admitted
        requests (their first tokens come from the prefill) and merges them into the batch."""
        self._compact()
        out: list[tuple[_Request, TokenDelta]] = []
        if self._rows:
            logits = self._decode_forward()
            out += self._advance(self._rows, logits)
        if admitted:
            samples, cache, logits = self._prefill(admitted)
            out += self._advance(samples, logits)
            if self._cache is None:
                self._rows, self._cache = samples, cache
            else:
                self._cache.extend(cache)
                self._rows += samples
        return out

    def _compact(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.dropped]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            return
        assert self._cache is not None
        self._cache.select(torch.tensor(keep, device=self.device))
        self._rows = [self._rows[i] for i in keep]

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, kv: Any) -> Any:
        self.forward_passes += 1
        return self.hf_model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=kv,
            use_cache=True,
            logits_to_keep=1,
        )

    def _decode_forward(self) -> torch.Tensor:
        cache = self._cache
        assert cache is not None
        last = torch.tensor([s.generated[-1] for s in self._rows], device=self.device).unsqueeze(1)
        mask = torch.cat([cache.mask, cache.mask.new_ones(cache.rows, 1)], dim=1)
        out = self._forward(last, mask, cache.lengths.unsqueeze(1), cache.kv)
        cache.kv, cache.mask, cache.lengths = out.past_key_values, mask, cache.lengths + 1
        return out.logits[:, -1]

    def _prefill(self, admitted: list[_Request]) -> tuple[list[_Sample], BatchCache, torch.Tensor]:
        prompts = [r.request.prompt_ids for r in admitted]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self._forward(ids, mask, positions, None)
        cache = BatchCache(out.past_key_values, mask, mask.sum(dim=1))
        # n samples share their prompt's prefill: repeat rows and logits
        repeat = torch.tensor([r.sampling.n for r in admitted], device=self.device)
        rows = torch.repeat_interleave(torch.arange(len(admitted), device=self.device), repeat)
        cache.select(rows)
        logits = out.logits[:, -1].index_select(0, rows)
        samples = []
        for req in admitted:
            req.unfinished = req.sampling.n
            for index in range(req.sampling.n):
                samples.append(self._new_sample(req, index))
            req.samples = samples[-req.sampling.n :]
        return samples, cache, logits

    def _new_sample(self, req: _Request, index: int) -> _Sample:
        s = req.sampling
        gen = torch.Generator(device=self.device).manual_seed(sample_seed(s.seed, index))
        prompt = req.request.prompt_ids
        row = RowSampling(s, gen, history=list(prompt))
        return _Sample(req, index, row, TextStream(self.tokenizer, prompt, s.stop), len(prompt))

    def _advance(self, samples: list[_Sample], logits: torch.Tensor) -> list[tuple[_Request, TokenDelta]]:
        for s in samples:
            s.row.banned = self._banned(s)
        picks = pick_tokens(
            logits, [s.row for s in samples], want_logprobs=any(s.req.sampling.logprobs for s in samples)
        )
        out = []
        for s, (token, logprob) in zip(samples, picks, strict=True):
            if s.dropped:
                continue
            out.append((s.req, self._accept(s, token, logprob)))
        return out

    def _banned(self, s: _Sample) -> tuple[int, ...]:
        sp = s.req.sampling
        if len(s.generated) >= sp.min_tokens:
            return ()
        return tuple(sp.stop_token_ids) + (() if sp.ignore_eos else tuple(self.eos_ids))

    def _accept(self, s: _Sample, token: int, logprob: float) -> TokenDelta:
        """Appends a token to a sample and decides whether the sample ends here."""
        sp = s.req.sampling
        s.generated.append(token)
        if sp.repetition_penalty != 1.0:
            s.row.history.append(token)
        reason = None
        if (token in self.eos_ids and not sp.ignore_eos) or token in sp.stop_token_ids:
            reason = "stop"  # the stop token is returned, its text is not
        else:
            searched_from = len(s.text.text)
            s.text.push(token)
            if sp.stop and len(s.generated) >= sp.min_tokens and s.text.cut_at_stop(searched_from):
                reason = "stop"
        if reason is None and (
            len(s.generated) >= sp.max_tokens or s.prompt_len + len(s.generated) >= self.context_length
        ):
            reason = "length"
        s.finished = reason is not None
        return TokenDelta(
            index=s.index,
            token_ids=[token],
            logprobs=[logprob] if sp.logprobs else [],
            text=s.text.take(final=s.finished),
            finish_reason=reason,
            policy_version=s.req.version,
        )

    # ---- weights ---------------------------------------------------------------------------

    def param_specs(self) -> Mapping[str, ParamSpec]:
        """Every parameter name, tied ones under each of their names."""
        return {
            name: ParamSpec(tuple(p.shape), str(p.dtype).removeprefix("torch.")) for name, p in self._params.items()
        }

    async def update_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> int:
        self._check_tensors(tensors)
        async with self._update_lock:
            async with self._gate:
                self._updating = True
                try:
                    await self._gate.wait_for(lambda: not self._inflight)
                except BaseException:
                    self._updating = False
                    self._gate.notify_all()
                    raise
            try:
                async with self._step_lock:  # a step of abandoned rows may still be running
                    applied = await asyncio.to_thread(self._copy_weights, tensors)
                self.policy_version = version
            finally:
                async with self._gate:
                    self._updating = False
                    self._gate.notify_all()
        return applied

    def _check_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        unknown = [n for n in tensors if n not in self._params]
        if unknown:
            raise InvalidArgumentError(
                f"unknown tensor names (not weights of the served model): {unknown[:5]}", reason="CHECKPOINT_MISMATCH"
            )
        wrong = [n for n, t in tensors.items() if tuple(t.shape) != tuple(self._params[n].shape)]
        if wrong:
            n = wrong[0]
            raise InvalidArgumentError(
                f"tensor {n}: shape {list(tensors[n].shape)} != served {list(self._params[n].shape)}",
                reason="CHECKPOINT_MISMATCH",
            )

    @torch.no_grad()
    def _copy_weights(self, tensors: Mapping[str, torch.Tensor]) -> int:
        for name, t in tensors.items():
            p = self._params[name]
            p.copy_(t.to(device=p.device, dtype=p.dtype))
        return len(tensors)

    async def load_weights(self, path: str, version: int) -> int:
        tensors = await asyncio.to_thread(read_checkpoint, path)
        return await self.update_weights(tensors, version)

    # ---- pause / close ---------------------------------------------------------------------

    async def pause(self) -> None:
        async with self._gate:
            self._paused = True

    async def resume(self) -> None:
        async with self._gate:
            self._paused = False
            self._gate.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def active_sequences(self) -> int:
        return sum(1 for s in self._rows if not s.dropped)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        error = UnavailableError("the hf backend closed before this generation finished", reason="ENGINE_STOPPED")
        for req in [*self._pending, *{s.req for s in self._rows}]:
            req.queue.put_nowait(error)
            self._release(req)
        self._pending.clear()
        self._rows, self._cache = [], None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a Hugging Face directory (safetensors, sharded or not; else pytorch_model*.bin)
    or of one .safetensors file."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors" and not same_host.is_handle(str(p)):
            raise InvalidArgumentError(
                f"{quoted(path)}: load a .safetensors file or a Hugging Face directory", reason="CHECKPOINT_INVALID"
            )
        return load_file(str(p))
    if not p.is_dir():
        raise NotFoundError(f"no checkpoint at {quoted(path)}", reason="FILE_NOT_FOUND")
    files = sorted(p.glob("*.safetensors"))
    if files:
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(load_file(str(f)))
        return tensors
    bins = sorted(p.glob("pytorch_model*.bin"))
    if bins:
        tensors = {}
        for f in bins:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
        return tensors
    raise InvalidArgumentError(
        f"{quoted(path)} holds no *.safetensors or pytorch_model*.bin weights", reason="CHECKPOINT_INVALID"
    )
