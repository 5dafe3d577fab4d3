"""The DeepSpeed engine on the policy: creation from TrainerConfig, per-token logprobs, one optimizer
step over a rank's micro-batches, full weights (ZeRO-3 aware), checkpoints and the HF export.

deepspeed is imported lazily, after DS_ACCELERATOR is settled: on a machine without CUDA it is
"cpu" with the gloo backend (DeepSpeed JIT-builds a small op there once and caches it under
~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import InvalidArgumentError
from ..telemetry import get_logger
from .batching import MicroBatch
from .config import TrainerConfig
from .loss import SUM_NAMES, LossTerms, policy_loss, sft_loss, token_logprobs

log = get_logger(__name__)

DS_TAG = "ds"  # the DeepSpeed tag inside a checkpoint directory


def on_gpu() -> bool:
    return torch.cuda.is_available()


def setup_distributed(timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialises torch.distributed when it is not yet: from the launcher's environment (torchrun,
    deepspeed), or as a world of one on a free local port. Returns (rank, world_size). `timeout_s`
    bounds each collective (and the wait for every rank to join)."""
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        backend = "nccl" if on_gpu() else "gloo"
        if on_gpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ:  # torchrun / the deepspeed launcher
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        else:  # a world of one; RANK, MASTER_PORT etc. stay unset: child processes inherit the environment
            from ..natsd import free_port

            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed insists on it

            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def resolve_dtype(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if on_gpu() and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(cfg: TrainerConfig) -> dict[str, Any]:
    """The DeepSpeed config generated from the trainer's sections, with deepspeed.config merged last.
    Micro-batches are packed by tokens, so gradient accumulation is unmanaged: every backward
    accumulates and step() is the boundary."""
    ds = cfg.deepspeed
    dtype = resolve_dtype(ds.dtype)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=ds.zero_stage >= 2 and on_gpu())
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu()}
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": ds.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.warmup_steps:
        out["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": cfg.lr,
                "warmup_num_steps": cfg.warmup_steps,
                "warmup_type": "linear",
            },
        }
    _merge(out, ds.config)
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def vocab_size(model: Any) -> int:
    """Token ids the model can both embed and predict (the module sizes survive ZeRO-3 partitioning,
    unlike the weights' shapes); the tokenizer's length may differ from either."""
    sizes = [int(model.get_input_embeddings().num_embeddings)]
    out = model.get_output_embeddings()
    if out is not None and getattr(out, "out_features", None):
        sizes.append(int(out.out_features))
    return min(sizes)


@dataclass
class StepStats:
    loss: float
    grad_norm: float
    lr: float
    sums: dict[str, float]  # token sums over every rank (SUM_NAMES)

    def means(self) -> dict[str, float | None]:
        n = max(self.sums["tokens"], 1.0)
        counts = ("tokens", "mismatch_masked_tokens", "on_policy_tokens", "mismatch_kl_on_policy")
        out: dict[str, float | None] = {k: self.sums[k] / n for k in SUM_NAMES if k not in counts}
        masked, fresh = self.sums["mismatch_masked_tokens"], self.sums["on_policy_tokens"]
        out.update(mismatch_masked_tokens=int(masked), mismatch_masked_fraction=masked / n)
        # the sampler's own gap, over the tokens with no policy lag (None: every token lagged)
        out["mismatch_kl_on_policy"] = self.sums["mismatch_kl_on_policy"] / fresh if fresh else None
        return out


class DeepSpeedPolicy:
    """One DeepSpeed engine on the policy (every rank builds one), plus the frozen reference model
    when the loss has a KL term."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size = setup_distributed(cfg.distributed_timeout_s)
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(cfg.seed)
        model_dir = Path(cfg.model)
        if not (model_dir / "config.json").is_file():
            raise InvalidArgumentError(
                f"model {cfg.model!r} is not a Hugging Face directory with config.json "
                "(`rollmesh model tiny --out DIR` builds the test model)",
                reason="MODEL_NOT_FOUND",
            )
        self.ds_config = deepspeed_config(cfg)
        self.zero3 = self.ds_config["zero_optimization"].get("stage") == 3
        self._hf_ds = None
        if self.zero3:  # partition the weights while loading instead of materialising them per rank
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(self.ds_config)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
        self.vocab_size = vocab_size(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=self.ds_config, dist_init_required=False
        )
        self.device = self.engine.device
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.ref = self._reference() if cfg.loss.kind == "grpo" and cfg.loss.kl_coef > 0 else None

    def _reference(self) -> Any:
        import deepspeed
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(self.cfg.ref_model or self.cfg.model, dtype=torch.float32)
        ref.requires_grad_(False).eval()
        if self.zero3:
            config = {
                "train_micro_batch_size_per_gpu": 1,
                "zero_optimization": {"stage": 3},
                "bf16": self.ds_config["bf16"],
                "fp16": self.ds_config["fp16"],
            }
            return deepspeed.initialize(model=ref, config=config, dist_init_required=False)[0].module
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_dtype(self.cfg.deepspeed.dtype))
        return ref.to(device=self.device, dtype=dtype or torch.float32)

    @property
    def module(self) -> Any:
        return self.engine.module

    # ---- forward / step ----------------------------------------------------------------------

    def logprobs(self, model: Any, mb: MicroBatch) -> torch.Tensor:
        """Per-token logprobs [B, L-1] of mb's targets at each row's temperature."""
        ids = mb.input_ids.to(self.device)
        logits = model(input_ids=ids, attention_mask=mb.attention_mask.to(self.device), use_cache=False).logits
        return token_logprobs(logits[:, :-1], ids[:, 1:], mb.temperature.to(self.device))

    def _micro_loss(self, mb: MicroBatch) -> LossTerms:
        lp = self.logprobs(self.engine, mb)
        dev = self.device
        weights, mask = mb.weights.to(dev), mb.mask.to(dev)
        if self.cfg.loss.kind == "sft":
            return sft_loss(lp, weights, mask)
        ref_lp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_lp = self.logprobs(self.ref, mb)
        lc = self.cfg.loss
        return policy_loss(
            lp,
            mb.old_logprobs.to(dev),
            mb.advantages.to(dev),
            weights,
            mask,
            clip_low=lc.clip_low,
            clip_high=lc.clip_high,
            dual_clip=lc.dual_clip,
            ref_logprobs=ref_lp,
            kl_coef=lc.kl_coef,
            mask_log_ratio=lc.mask_log_ratio or None,
            tis_cap=lc.tis_cap or None,
            on_policy=None if mb.on_policy is None else mb.on_policy.to(dev),
        )

    def _empty_pass(self) -> None:
        """A zero-loss forward/backward: keeps this rank's collectives in step with ranks that have
        one more micro-batch (ZeRO reduces and gathers inside forward and backward)."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=self.device)
        logits = self.engine(input_ids=ids, use_cache=False).logits
        self.engine.backward(logits.float().sum() * 0.0, scale_wrt_gas=False)

    def train_step(self, micro_batches: Sequence[MicroBatch | None]) -> StepStats:
        """Forward/backward over this rank's micro-batches, then one optimizer step. Every rank calls
        it with the same number of micro-batches (StepPlan guarantees it)."""
        self.engine.train()
        sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for mb in micro_batches:
            if mb is None:
                self._empty_pass()
                continue
            terms = self._micro_loss(mb)
            # Weights normalise over the whole step (all ranks); DeepSpeed averages gradients over
            # ranks, so scale back up by the world size.
            self.engine.backward(terms.loss * self.world_size, scale_wrt_gas=False)
            sums += terms.sums().double().cpu()
            loss_sum += terms.loss.detach().double().cpu()
        self.engine.step()
        totals = torch.cat([sums, loss_sum[None]])
        if self.world_size > 1:
            dist.all_reduce(totals)
        grad_norm = self.engine.get_global_grad_norm()
        lr = self.engine.get_lr()[0] if self.engine.get_lr() else self.cfg.lr
        return StepStats(
            loss=float(totals[-1]),
            grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
            lr=float(lr),
            sums={k: float(v) for k, v in zip(SUM_NAMES, totals[:-1].tolist(), strict=True)},
        )

    @torch.no_grad()
    def eval_logprobs(self, mb: MicroBatch) -> torch.Tensor:
        """Logprobs of the current policy (inference mode; ZeRO-3: every rank must call)."""
        self.engine.eval()
        return self.logprobs(self.engine, mb).cpu()

    # ---- weights -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _gathered(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        if self.zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield
        else:
            yield

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every parameter, whole, on CPU, on rank 0 (other ranks get {}). Collective under ZeRO-3
        (parameters are gathered a layer at a time), local otherwise."""
        out: dict[str, torch.Tensor] = {}
        named = list(self.module.named_parameters())
        groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        for name, p in named:  # gather per top-level block to bound the memory of a full gather
            key = ".".join(name.split(".")[:3])
            groups.setdefault(key, []).append((name, p))
        for items in groups.values():
            with self._gathered([p for _, p in items]):
                if self.rank == 0:
                    for name, p in items:
                        out[name] = p.detach().to("cpu", dtype=dtype or p.dtype, copy=True)
        return out

    def save(self, directory: Path, client_state: dict[str, Any]) -> None:
        """DeepSpeed checkpoint (model, optimizer, scheduler shards of every rank) into `directory`."""
        self.engine.save_checkpoint(str(directory), tag=DS_TAG, client_state=client_state)

    def load(self, directory: Path) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(
            str(directory), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise InvalidArgumentError(f"no DeepSpeed checkpoint in {directory}", reason="CHECKPOINT_INVALID")
        return client_state or {}

    def export_hf(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """A Hugging Face directory (config, safetensors, tokenizer) from a full state dict (rank 0)."""
        self.module.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))
