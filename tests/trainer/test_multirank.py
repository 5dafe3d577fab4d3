"""Two CPU ranks under torchrun (gloo): rank 0 reads the rollouts and drives rank 1; both take
the same optimizer steps and end with identical weights; the checkpoint holds both ranks' shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh.natsd import free_port

DRIVER = Path(__file__).with_name("multirank_driver.py")


def _rows(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        completion = [60 + i, 61 + i, 62, 2][: 2 + i % 3]  # uneven lengths: ranks get unequal work
        lines.append(
            json.dumps(
                {
                    "id": f"row{i}",
                    "prompt_ids": [1, 5, 40 + i, 6],
                    "completion_ids": completion,
                    "completion_logprobs": [-4.0] * len(completion),
                    "advantage": 1.0 if i % 2 else -1.0,
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_step_together_and_agree_on_weights(zero_stage, tiny_model_dir, tmp_path) -> None:
    rows = tmp_path / "rows.jsonl"
    _rows(rows, 10)
    config = tmp_path / "trainer.toml"
    config.write_text(
        f"""
run_id = "multirank"
model = "{tiny_model_dir}"
lr = 1e-3
source = "files"
files = ["{rows}"]
[batch]
rollouts_per_step = 4
[deepspeed]
zero_stage = {zero_stage}
[checkpoint]
dir = "{tmp_path / "ck"}"
every_n_steps = 2
[push]
enabled = false
discover = false
"""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(DRIVER),
        str(config),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == 3  # 10 rows, 4 per step: 4 + 4 + 2
    assert r0["before"] == r1["before"] and r0["after"] == r1["after"]  # same weights on both ranks
    assert r0["after"] != r0["before"]  # and they trained
    assert r0["hf"] == r0["after"]  # the Hugging Face export holds the whole trained weights
    records = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(t for r in records for t in r["trajectory_ids"]) == sorted(f"row{i}" for i in range(10))
    shards = sorted(p.name for p in (tmp_path / "ck" / "step-00000003" / "ds").iterdir())
    assert sum("optim_states" in s for s in shards) == 2  # one optimizer shard per rank
    assert (tmp_path / "ck" / "step-00000003" / "hf" / "model.safetensors").is_file()
