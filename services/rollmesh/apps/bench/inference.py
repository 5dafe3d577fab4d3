"""`rollmesh bench inference`: generated tokens/s on the same model and the same prompts, in one
run, side by side:

(a) the rollmesh gRPC service with the vllm backend (`rollmesh inference serve --backend vllm`),
    many concurrent Generate calls, versus
(b) vLLM's own OpenAI-compatible HTTP server (`vllm.entrypoints.openai.api_server`, what
    `vllm serve` runs) with the same engine settings, the same token-id prompts through
    /v1/completions;
(c) the rollmesh gRPC service with the hf backend (dynamic batching), `concurrency` requests at
    a time, versus
(d) sequential `model.generate` calls of transformers in this process.

Every request samples (temperature 1, its own seed) exactly `max_tokens` tokens (`ignore_eos`),
so all paths generate the same number of tokens. Each server runs alone (one at a time), gets a
warm-up round, then 3 rounds of `requests` requests with `concurrency` in flight; tokens/s =
generated tokens / wall time of the fastest round (all rounds are in the JSON). The sequential
path runs 3 rounds over the first (at most) 48 prompts. Servers run in their own processes, as in production; the
clients and (d) in this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ...natsd import free_port
from .harness import percentile

ADDRESS_RE = re.compile(r"rollmesh inference server on (\S+):")
START_TIMEOUT_S = 300.0
ROUNDS = 3  # measured rounds per path; the fastest is reported
TEXTS = [
    "Question {i}: what is {a} + {b}? Think step by step, then answer.",
    "Write a short story about a robot named Unit-{i} who learns to paint.",
    "def fib_{i}(n):\n    # return the n-th Fibonacci number, n >= {a}\n",
    "Summarize: the meeting {i} moved to room {a}{b}; bring the draft and the numbers.",
]


def make_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    """`n` distinct prompts (token ids) of a few dozen tokens."""
    return [
        list(tokenizer(TEXTS[i % len(TEXTS)].format(i=i, a=(7 * i) % 13, b=(5 * i) % 11))["input_ids"])
        for i in range(n)
    ]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def engine_env() -> dict[str, str]:
    """The same process environment for both vLLM engines (thread binding on CPU)."""
    env = dict(os.environ)
    if not _cuda():
        cpus = sorted(os.sched_getaffinity(0))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cpus[0]}-{cpus[-1]}")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


class Server:
    """A server subprocess whose log goes to a file (vLLM logs a lot: a pipe would fill up)."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], log_dir: Path, label: str) -> None:
        self.label = label
        self.log_path = log_dir / f"{label}.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(list(cmd), stdout=self._log, stderr=subprocess.STDOUT, env=env, text=True)
        self.t0 = time.perf_counter()

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_rollmesh(model_dir: str, backend: str, max_model_len: int, log_dir: Path) -> tuple[Server, str, float]:
    cmd = [sys.executable, "-m", "rollmesh.cli", "inference", "serve", "--model", model_dir, "--backend", backend,
           "--port", "0", "--name", "bench"]  # fmt: skip
    if backend == "vllm":
        cmd += ["--max-model-len", str(max_model_len)]
    s = Server(cmd, engine_env(), log_dir, f"rollmesh-{backend}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        s.check_alive()
        if m := ADDRESS_RE.search(s.log_path.read_text(errors="replace")):
            return s, m.group(1), time.perf_counter() - s.t0
        time.sleep(0.25)
    s.stop()
    raise RuntimeError(f"rollmesh inference server ({backend}) did not start:\n{s.tail()}")


def start_vllm_openai(model_dir: str, max_model_len: int, log_dir: Path) -> tuple[Server, str, float]:
    """vLLM's own OpenAI server, with the settings `VLLMBackend.create` gives its engine."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "bench", "--dtype", "auto", "--max-model-len", str(max_model_len),
           "--seed", "0", "--host", "127.0.0.1", "--port", str(port), "--enable-prefix-caching",
           "--disable-uvicorn-access-log"]  # fmt: skip
    if _cuda():
        cmd += ["--gpu-memory-utilization", "0.85"]
    else:
        cmd += ["--enforce-eager", "--gpu-memory-utilization", "0.5", "--kv-cache-memory-bytes", str(1 << 30)]
    # `vllm serve` itself crashes under vllm-cpu (its version lookup wants a package named "vllm");
    # this module is what it runs.
    s = Server(cmd, {**engine_env(), "VLLM_SERVER_DEV_MODE": "1"}, log_dir, "vllm-openai")
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S

    async def healthy() -> bool:
        import aiohttp

        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://{address}/health") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    while time.monotonic() < deadline:
        s.check_alive()
        if asyncio.run(healthy()):
            return s, address, time.perf_counter() - s.t0
        time.sleep(0.5)
    s.stop()
    raise RuntimeError(f"vLLM's OpenAI server did not start:\n{s.tail()}")


async def closed_loop(
    call: Callable[[int], Awaitable[int]], n: int, concurrency: int
) -> tuple[int, float, list[float]]:
    """`n` calls, `concurrency` in flight; returns (tokens, seconds, latencies)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    tokens = 0
    lat: list[float] = []

    async def worker() -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            t = time.perf_counter()
            got = await call(i)  # not `tokens += await ...`: that reads `tokens` before awaiting
            tokens += got
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens, time.perf_counter() - t0, sorted(lat)


async def run_grpc(address: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict[str, Any]:
    from ...inference.client import InferenceClient

    async with await InferenceClient.connect(address) as client:

        async def call(i: int, max_tokens: int = max_tokens) -> int:
            out = await client.generate(
                prompt_ids=prompts[i], max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=i
            )
            return sum(len(s.completion_ids) for s in out.samples)

        await closed_loop(call, concurrency, concurrency)  # warm-up
        return best([await closed_loop(call, len(prompts), concurrency) for _ in range(ROUNDS)])


async def run_openai(address: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict[str, Any]:
    import aiohttp

    limits = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=limits, timeout=aiohttp.ClientTimeout(total=3600)) as http:

        async def call(i: int, max_tokens: int = max_tokens) -> int:
            body = {
                "model": "bench",
                "prompt": prompts[i],
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "seed": i,
                "ignore_eos": True,
            }
            async with http.post(f"http://{address}/v1/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"vLLM OpenAI server answered {r.status}: {await r.text()}")
                return int((await r.json())["usage"]["completion_tokens"])

        await closed_loop(call, concurrency, concurrency)  # warm-up
        return best([await closed_loop(call, len(prompts), concurrency) for _ in range(ROUNDS)])


def run_sequential_hf(model_dir: str, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """Plain transformers: one `model.generate` call per prompt, one after another."""
    import torch

    from ...inference.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(model_dir)
    tok = load_tokenizer(resolved)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(resolved, "auto").to(device)
    kwargs = {
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": max_tokens,
        "min_new_tokens": max_tokens,  # ignore_eos
        "pad_token_id": tok.pad_token_id,
    }

    def one(ids: list[int], seed: int, max_new: int) -> int:
        torch.manual_seed(seed)
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), **{**kwargs, "max_new_tokens": max_new,
                                                                         "min_new_tokens": max_new})  # fmt: skip
        return int(out.shape[1] - x.shape[1])

    one(prompts[0], 0, 8)  # warm-up
    rounds = []
    per_round = max(1, len(prompts) // ROUNDS)
    for r in range(ROUNDS):
        tokens, lat = 0, []
        t0 = time.perf_counter()
        for i in range(r * per_round, (r + 1) * per_round):
            t = time.perf_counter()
            tokens += one(prompts[i % len(prompts)], i, max_tokens)
            lat.append(time.perf_counter() - t)
        rounds.append((tokens, time.perf_counter() - t0, sorted(lat)))
    return best(rounds)


def best(rounds: list[tuple[int, float, list[float]]]) -> dict[str, Any]:
    """The fastest of the rounds (a shared machine's noise only ever slows a round down), with
    the tokens/s of every round."""
    tokens, seconds, lat = max(rounds, key=lambda r: r[0] / r[1])
    return {
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tok_s": round(tokens / seconds, 1),
        "p50_ms": round(percentile(lat, 0.5) * 1e3, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1e3, 1),
        "rounds_tok_s": [round(t / s, 1) for t, s, _ in rounds],
    }


def context_length(model_dir: str, need: int) -> int:
    """The context both vLLM engines get: the model's, capped at 2048 (KV cache on CPU)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return max(need, min(int(cfg.get("max_position_embeddings") or 2048), 2048))


def measure(model: str | None, requests: int, concurrency: int, max_tokens: int, log_dir: Path) -> dict[str, Any]:
    import importlib.util

    from ...inference.models import load_tokenizer, resolve_model

    if model is None:
        from ...inference.tiny import build_tiny_model

        model = str(build_tiny_model(log_dir / "tiny"))
    resolved = resolve_model(model)
    model_dir = resolved.source
    prompts = make_prompts(load_tokenizer(resolved), requests)
    seq_prompts = prompts[: min(requests, 48)]  # a rate: a subset keeps big models bearable
    result: dict[str, Any] = {
        "model": resolved.name,
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "cpus": len(os.sched_getaffinity(0)),
        "device": "cuda" if _cuda() else "cpu",
    }
    runs: dict[str, dict[str, Any] | None] = {"rollmesh_vllm": None, "vllm_openai": None}
    vllm_ok = importlib.util.find_spec("vllm") is not None and resolved.gguf_file is None
    if vllm_ok:
        max_len = context_length(model_dir, max(map(len, prompts)) + max_tokens + 1)
        for key, start, drive in (
            ("rollmesh_vllm", lambda: start_rollmesh(model_dir, "vllm", max_len, log_dir), run_grpc),
            ("vllm_openai", lambda: start_vllm_openai(model_dir, max_len, log_dir), run_openai),
        ):
            server, address, ready_s = start()
            try:
                runs[key] = {
                    **asyncio.run(drive(address, prompts, concurrency, max_tokens)),
                    "ready_s": round(ready_s, 1),
                }
            finally:
                server.stop()
    else:
        result["vllm_skipped"] = "vllm is not installed" if resolved.gguf_file is None else "vllm needs a HF directory"
    server, address, ready_s = start_rollmesh(model_dir, "hf", 0, log_dir)
    try:
        runs["hf_batched"] = {
            **asyncio.run(run_grpc(address, prompts, concurrency, max_tokens)),
            "ready_s": round(ready_s, 1),
        }
    finally:
        server.stop()
    runs["hf_sequential"] = {**run_sequential_hf(model, seq_prompts, max_tokens), "requests": len(seq_prompts)}

    def tok_s(key: str) -> float | None:
        r = runs.get(key)
        return r["tok_s"] if r else None

    def ratio(a: str, b: str) -> float | None:
        x, y = tok_s(a), tok_s(b)
        return round(x / y, 3) if x and y else None

    result.update(
        {
            "rollmesh_vllm_tok_s": tok_s("rollmesh_vllm"),
            "vllm_openai_tok_s": tok_s("vllm_openai"),
            "ratio_vs_vllm": ratio("rollmesh_vllm", "vllm_openai"),
            "hf_batched_tok_s": tok_s("hf_batched"),
            "hf_sequential_tok_s": tok_s("hf_sequential"),
            "ratio_hf_batched_vs_sequential": ratio("hf_batched", "hf_sequential"),
            "runs": runs,
        }
    )
    return result


def main(
    *, as_json: bool, model: str | None = None, requests: int = 64, concurrency: int = 16, max_tokens: int = 64
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rollmesh-bench-inference-") as tmp:
        result = measure(model, requests, concurrency, max_tokens, Path(tmp))
    if as_json:
        print(json.dumps(result))
        return result
    from rich.console import Console
    from rich.table import Table

    runs = result["runs"]
    table = Table(
        title=f"inference: {result['model']}, {result['requests']} requests x {max_tokens} tokens, "
        f"{result['cpus']} CPUs, {result['device']}"
    )
    for col in ("path", "concurrency", "tokens", "seconds", "tokens/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    rows = [
        ("rollmesh gRPC, vllm backend", "rollmesh_vllm", concurrency),
        ("vLLM OpenAI server (HTTP)", "vllm_openai", concurrency),
        ("rollmesh gRPC, hf backend (dynamic batching)", "hf_batched", concurrency),
        ("transformers model.generate, sequential", "hf_sequential", 1),
    ]
    for label, key, conc in rows:
        r = runs.get(key)
        if r is None:
            table.add_row(label, str(conc), "-", "-", "skipped", "-", "-")
            continue
        table.add_row(
            label, str(conc), str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tok_s']:,.1f}", f"{r['p50_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    if result["ratio_vs_vllm"] is not None:
        console.print(f"rollmesh+vllm / vLLM OpenAI server: {result['ratio_vs_vllm']:.3f} (target >= 1.0)")
    else:
        console.print(f"vllm comparison skipped: {result.get('vllm_skipped')}")
    console.print(
        f"hf dynamic batching / sequential generate: {result['ratio_hf_batched_vs_sequential']:.2f}x (target >= 3)"
    )
    return result
