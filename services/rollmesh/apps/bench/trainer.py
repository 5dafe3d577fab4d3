"""`rollmesh bench trainer`: training tokens/s of the rollmesh trainer step against references on
the same model, batch and sequence length, in the same process, interleaved round by round so a
busy machine slows all of them alike.

- rollmesh: Trajectory protos -> batching (sequences, packing, weights) -> the DeepSpeed engine's
  step (ZeRO-2, one rank) with the GRPO/DAPO loss against the sampler's logprobs.
- TRL (when installed): GRPOTrainer's loss step on the same batch, already tokenised: compute_loss
  (loss_type "dapo", same clipping, logprobs against the same "old" logprobs) + backward +
  optimizer step. Its generation and reward scoring are not timed (nor are ours).
- torch: a plain loop of the same loss (rollmesh.trainer.loss) with torch.optim.AdamW, no
  DeepSpeed: what the engine and batching cost on top.

Tokens/s counts every token of the batch (prompt + completion), per optimizer step.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": {"hidden": 384, "layers": 4, "heads": 6},
}
LR = 1e-6


def _trajectories(n: int, seq_len: int, seed: int = 0) -> list[Any]:
    import torch

    from ...proto.v1 import trajectory_pb2 as traj_pb

    g = torch.Generator().manual_seed(seed)
    prompt_len = seq_len // 4
    out = []
    for i in range(n):
        ids = torch.randint(7, 500, (seq_len,), generator=g).tolist()
        t = traj_pb.Trajectory(trajectory_id=f"bench-{i}", advantage=float(torch.randn(1, generator=g)))
        t.turns.append(
            traj_pb.Turn(
                prompt_ids=ids[:prompt_len],
                completion_ids=ids[prompt_len:],
                completion_logprobs=(-torch.rand(seq_len - prompt_len, generator=g) * 5).tolist(),
                policy_version=0,
            )
        )
        out.append(t)
    return out


class RollmeshStep:
    def __init__(self, model_dir: Path, trajectories: list[Any], seq_len: int, work: Path) -> None:
        from ...trainer.config import TrainerConfig
        from ...trainer.model import DeepSpeedPolicy

        self.trajectories = trajectories
        self.cfg = TrainerConfig(
            run_id="bench",
            model=str(model_dir),
            lr=LR,
            batch={"max_tokens_per_micro_batch": len(trajectories) * seq_len, "max_seq_len": seq_len},
            checkpoint={"dir": str(work / "ck")},
        )
        self.engine = DeepSpeedPolicy(self.cfg)

    def step(self) -> float:
        from ...trainer.batching import plan_step, trajectory_samples

        samples = [s for t in self.trajectories for s in trajectory_samples(t, max_seq_len=self.cfg.batch.max_seq_len)]
        plan = plan_step(
            samples, max_tokens_per_micro_batch=self.cfg.batch.max_tokens_per_micro_batch, pad_id=self.engine.pad_id
        )
        return self.engine.train_step(plan.ranks[0]).loss


def _padded(trajectories: list[Any]) -> dict[str, Any]:
    import torch

    prompt = torch.tensor([list(t.turns[0].prompt_ids) for t in trajectories])
    completion = torch.tensor([list(t.turns[0].completion_ids) for t in trajectories])
    return {
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "completion_ids": completion,
        "completion_mask": torch.ones_like(completion),
        "advantages": torch.tensor([t.advantage for t in trajectories], dtype=torch.float32),
        "old_per_token_logps": torch.tensor([list(t.turns[0].completion_logprobs) for t in trajectories]),
        "num_items_in_batch": torch.tensor(float(completion.numel())),
    }


class TorchStep:
    def __init__(self, model_dir: Path, trajectories: list[Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR)
        self.inputs = _padded(trajectories)

    def step(self) -> float:
        import torch

        from ...trainer.loss import policy_loss, token_logprobs

        x = self.inputs
        ids = torch.cat([x["prompt_ids"], x["completion_ids"]], dim=1)
        c = x["completion_ids"].shape[1]
        logits = self.model(input_ids=ids, use_cache=False).logits[:, -c - 1 : -1]
        lp = token_logprobs(logits, x["completion_ids"])
        mask = x["completion_mask"].float()
        out = policy_loss(lp, x["old_per_token_logps"], x["advantages"], mask / mask.sum(), mask)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.loss.detach().item()


class TrlStep:
    def __init__(self, model_dir: Path, trajectories: list[Any], work: Path) -> None:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        n = len(trajectories)
        completion_len = len(trajectories[0].turns[0].completion_ids)
        args = GRPOConfig(
            output_dir=str(work / "trl"),
            loss_type="dapo",
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.0,
            learning_rate=LR,
            max_grad_norm=1.0,
            per_device_train_batch_size=n,
            num_generations=n,
            max_completion_length=completion_len,
            use_cpu=True,
            bf16=False,
            report_to=[],
            save_strategy="no",
            logging_steps=10**9,
        )
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["bench"] * n}),
            processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        )
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1
        self.trainer.model.train()
        self.inputs = _padded(trajectories)

    def step(self) -> float:
        import torch

        t = self.trainer
        loss = t.compute_loss(t.model, self.inputs)
        t.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.args.max_grad_norm)
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()


def _trl_available() -> str | None:
    """None when TRL can be used, else why not."""
    try:
        import trl  # noqa: F401
    except ImportError as e:
        return f"trl is not installed ({e}); `pip install trl` when it does not pull another torch"
    return None


def measure(model: str = "small", sequences: int = 8, seq_len: int = 256, steps: int = 3) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from ...inference.tiny import build_tiny_model

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: one of {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="rollmesh-bench-trainer-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "model", **MODELS[model])
        params = sum(t.numel() for t in load_file(model_dir / "model.safetensors").values())
        trajectories = _trajectories(sequences, seq_len)
        runners: dict[str, Any] = {"rollmesh": RollmeshStep(model_dir, trajectories, seq_len, work)}
        trl_missing = _trl_available()
        if trl_missing is None:
            runners["trl"] = TrlStep(model_dir, trajectories, work)
        runners["torch"] = TorchStep(model_dir, trajectories)
        times: dict[str, list[float]] = {k: [] for k in runners}
        for runner in runners.values():  # warm-up (allocations, JIT-built ops)
            runner.step()
        for _ in range(steps):
            for name, runner in runners.items():
                t0 = time.perf_counter()
                runner.step()
                times[name].append(time.perf_counter() - t0)
    tokens = sequences * seq_len
    result: dict[str, Any] = {
        "model": model,
        "params": params,
        "sequences": sequences,
        "seq_len": seq_len,
        "tokens_per_step": tokens,
        "steps": steps,
        "threads": torch.get_num_threads(),
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        result[f"{name}_step_s"] = round(med, 4)
        result[f"{name}_tokens_per_s"] = round(tokens / med, 1)
    if "trl" in times:
        result["ratio_vs_trl"] = round(result["rollmesh_tokens_per_s"] / result["trl_tokens_per_s"], 3)
    else:
        result["trl"] = trl_missing
    result["ratio_vs_torch"] = round(result["rollmesh_tokens_per_s"] / result["torch_tokens_per_s"], 3)
    return result


def main(*, as_json: bool, model: str, sequences: int, seq_len: int, steps: int) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    result = measure(model=model, sequences=sequences, seq_len=seq_len, steps=steps)
    if as_json:
        print(json.dumps(result))
        return
    print(
        f"trainer step, {result['model']} model ({result['params'] / 1e6:.1f}M params), "
        f"{sequences} x {seq_len} tokens, median of {steps} steps, {result['threads']} threads"
    )
    for name in ("rollmesh", "trl", "torch"):
        if f"{name}_tokens_per_s" in result:
            print(f"  {name:9s} {result[f'{name}_tokens_per_s']:>10.1f} tokens/s  ({result[f'{name}_step_s']} s/step)")
    if "ratio_vs_trl" in result:
        print(f"  ratio rollmesh / TRL GRPOTrainer: {result['ratio_vs_trl']}")
    else:
        print(f"  TRL: skipped: {result['trl']}")
    print(f"  ratio rollmesh / plain torch loop: {result['ratio_vs_torch']}")
