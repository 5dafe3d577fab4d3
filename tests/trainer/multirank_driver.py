"""Run under torchrun by test_multirank.py: every rank runs the trainer as `rollmesh trainer run`
does, then writes a digest of its view of the full weights (ZeRO-3: gathered)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from rollmesh.trainer.config import load_trainer_config
from rollmesh.trainer.loop import Trainer


def digest(trainer: Trainer) -> str:
    h = hashlib.sha256()
    for name, p in trainer.engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], enabled=trainer.engine.zero3):
            h.update(name.encode())
            h.update(p.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def export_digest(trainer: Trainer, path: Path) -> str:
    """The same digest over the checkpoint's Hugging Face export (written from gathered weights)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    h = hashlib.sha256()
    for name, _ in trainer.engine.module.named_parameters():
        h.update(name.encode())
        h.update(tensors[name].to(torch.float32).numpy().tobytes())
    return h.hexdigest()


def main(config: str, out: str) -> None:
    trainer = Trainer(load_trainer_config(config))
    before = digest(trainer)
    if trainer.rank == 0:
        import asyncio

        summary = asyncio.run(trainer.run())
        steps = summary.steps
        exported = export_digest(trainer, Path(summary.checkpoint) / "hf" / "model.safetensors")
    else:
        trainer.follow()
        steps, exported = -1, ""
    after = digest(trainer)
    Path(out, f"rank{trainer.rank}.json").write_text(
        json.dumps({"world": trainer.world_size, "before": before, "after": after, "steps": steps, "hf": exported})
    )
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
