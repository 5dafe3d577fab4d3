"""`rollmesh bench weights`: time to push a full set of weights into a serving engine and see the
new version answer, per model size and backend, in MB/s, two ways: streamed over gRPC
(UpdateWeights) and through shared memory on the same host (a buffer reused across pushes, as the
trainer keeps it). The reference, side by side on the same server: loading the same weights from a
checkpoint on local disk (LoadWeights), which costs no network and no serialisation."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ...inference.client import InferenceClient
from ...inference.same_host import SharedWeights
from .inference import start_rollmesh

# (name, build_tiny_model arguments): the test model, and ~100M parameters with head size 64
MODELS: dict[str, dict[str, int]] = {
    "tiny": {},
    "100m": {"hidden": 768, "layers": 14, "heads": 12, "intermediate": 2048},
}
ROUNDS = 3


async def _time_update(
    address: str, tensors: dict[str, Any] | None, path: str | None, shared: SharedWeights | None = None
) -> float:
    """Seconds from the first byte sent to a generation answered by the new version."""
    async with await InferenceClient.connect(address) as client:
        t0 = time.perf_counter()
        if tensors is not None and shared is not None:
            version = (await client.update_weights_same_host(tensors, shared=shared)).policy_version
        elif tensors is not None:
            version = (await client.update_weights(tensors)).policy_version
        else:
            version = (await client.load_weights(path or "")).policy_version
        out = await client.generate(prompt_ids=[1, 5, 9], max_tokens=1, temperature=0.0)
        elapsed = time.perf_counter() - t0
        if out.samples[0].policy_version != version:
            raise RuntimeError(f"answered by version {out.samples[0].policy_version}, expected {version}")
        return elapsed


def measure_one(model_dir: Path, backend: str, log_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    tensors = {k: v for f in files for k, v in load_file(f).items()}
    mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    params = sum(t.numel() for t in tensors.values())
    server, address, _ = start_rollmesh(str(model_dir), backend, 1024, log_dir)
    try:
        asyncio.run(_time_update(address, None, str(model_dir)))  # warm-up
        push = min(asyncio.run(_time_update(address, tensors, None)) for _ in range(ROUNDS))
        with SharedWeights() as shared:
            asyncio.run(_time_update(address, tensors, None, shared))  # warm-up: its pages, once
            same = min(asyncio.run(_time_update(address, tensors, None, shared)) for _ in range(ROUNDS))
        load = min(asyncio.run(_time_update(address, None, str(model_dir))) for _ in range(ROUNDS))
    finally:
        server.stop()
    return {
        "params": params,
        "payload_mb": round(mb, 1),
        "push_s": round(push, 3),
        "push_mb_s": round(mb / push, 1),
        "load_s": round(load, 3),
        "load_mb_s": round(mb / load, 1),
        "ratio_push_vs_load": round(load / push, 3),
        "same_host_s": round(same, 3),
        "same_host_mb_s": round(mb / same, 1),
        "ratio_same_host_vs_load": round(load / same, 3),
    }


def measure(backends: list[str], models: list[str], log_dir: Path) -> dict[str, Any]:
    from ...inference.tiny import build_tiny_model

    result: dict[str, Any] = {"cpus": os.cpu_count(), "rounds": ROUNDS, "runs": {}}
    for name in models:
        model_dir = build_tiny_model(log_dir / f"model-{name}", **MODELS[name])
        for backend in backends:
            run = measure_one(model_dir, backend, log_dir)
            result["runs"][f"{name}_{backend}"] = run
            for key in ("push_mb_s", "ratio_push_vs_load", "same_host_mb_s", "ratio_same_host_vs_load"):
                result[f"{name}_{backend}_{key}"] = run[key]
    return result


def main(*, as_json: bool, backends: list[str], models: list[str]) -> dict[str, Any]:
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="rollmesh-bench-weights-") as tmp:
        result = measure(backends, models, Path(tmp))
    if as_json:
        print(json.dumps(result))
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"weights: push a full set and see the new version answer, best of {ROUNDS}, {result['cpus']} CPUs"
    )
    columns = ("model", "backend", "params", "MB", "UpdateWeights s", "MB/s", "ratio", "same host s", "MB/s", "ratio")
    for col in (*columns, "LoadWeights (disk) s", "MB/s"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for key, r in result["runs"].items():
        name, backend = key.split("_", 1)
        table.add_row(
            name, backend, f"{r['params'] / 1e6:.1f}M", f"{r['payload_mb']:.1f}", f"{r['push_s']:.3f}",
            f"{r['push_mb_s']:,.0f}", f"{r['ratio_push_vs_load']:.2f}", f"{r['same_host_s']:.3f}",
            f"{r['same_host_mb_s']:,.0f}", f"{r['ratio_same_host_vs_load']:.2f}", f"{r['load_s']:.3f}",
            f"{r['load_mb_s']:,.0f}",
        )  # fmt: skip
    Console().print(table)
    Console().print(
        "ratio = speed of the push (streamed over gRPC; through shared memory on the same host) / "
        "from-local-disk speed (LoadWeights), same server"
    )
    return result
