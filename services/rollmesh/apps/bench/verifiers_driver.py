"""The verifiers side of `rollmesh bench verifiers`, run by .venv-verifiers' interpreter (it
imports verifiers and nothing of rollmesh): verifiers' own ZMQ env server (ZMQEnvServer, one
worker process) hosts the environment, and a ZMQEnvClient sends it groups of rollouts as a
prime-rl-style trainer does (`run_group`), its model client pointed at an OpenAI-compatible URL.

Starts the server, then (with --wait-for-go) prints "ready" and waits for a line on stdin, runs a
warm-up, then `--repeats` timed runs of `--rollouts` rollouts with `--concurrency` in
flight, and prints one JSON object: per repeat the rollouts/s, rollouts completed and failed,
and the CPU seconds of this process (the client), of the env server with its workers, and of
`--inference-pid`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder (rollmesh's bench modules, one named `verifiers`) must not
# shadow packages; the environment is imported from ENVS.
ENVS = Path(__file__).resolve().parent / "vf_envs"
if sys.path and Path(sys.path[0] or ".").resolve() == ENVS.parent:
    del sys.path[0]
API_KEY_VAR = "ROLLMESH_BENCH_API_KEY"  # the facade takes no key; the client still reads one


def proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_s(root: int) -> float:
    """CPU of a process and its live descendants (the env server forks its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(map(proc_cpu_s, tree))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(env_id: str, address: str) -> None:
    from verifiers.legacy.serve import ZMQEnvServer

    ZMQEnvServer.run_server(
        env_id, address=address, num_workers=1, log_level="WARNING", console_logging=False, file_logging=False
    )


async def wait_healthy(client: Any, server: multiprocessing.process.BaseProcess, timeout_s: float = 60) -> None:
    """The client's own startup wait, cut short if the server process dies."""
    startup = asyncio.create_task(client.wait_for_server_startup(timeout=timeout_s))
    while not startup.done():
        if not server.is_alive():
            startup.cancel()
            sys.exit(f"verifiers' env server exited with code {server.exitcode}")
        await asyncio.wait({startup}, timeout=0.2)
    startup.result()


async def run(args: argparse.Namespace, address: str, server: Any) -> list[dict[str, Any]]:
    import verifiers.legacy as vf
    from verifiers.legacy.serve import ZMQEnvClient
    from verifiers.legacy.types import ClientConfig

    rows = list(vf.load_environment(args.env_id).get_dataset())
    inputs = [{k: row[k] for k in ("prompt", "example_id", "answer", "info", "task") if k in row} for row in rows]
    client_config = ClientConfig(api_base_url=args.openai_url, api_key_var=API_KEY_VAR, max_retries=0)
    sampling = {"max_tokens": args.max_tokens}
    client = ZMQEnvClient(address)
    await wait_healthy(client, server)
    server_pid = server.pid
    if args.wait_for_go:  # booted alongside the other side; measure only once it is done
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    semaphore = asyncio.Semaphore(max(1, args.concurrency // args.group_size))

    async def group(i: int) -> list[dict[str, Any]]:
        async with semaphore:
            one = inputs[i % len(inputs)]
            return await client.run_group(
                [dict(one) for _ in range(args.group_size)], client_config, args.model, sampling
            )

    async def batch(rollouts: int) -> list[dict[str, Any]]:
        groups = await asyncio.gather(*(group(i) for i in range(-(-rollouts // args.group_size))))
        return [o for g in groups for o in g]

    try:
        await batch(min(args.rollouts, 64))  # warm-up: connections, the worker's first rollouts
        repeats = []
        for _ in range(args.repeats):
            cpu = (time.process_time(), tree_cpu_s(server_pid), proc_cpu_s(args.inference_pid))
            t0 = time.perf_counter()
            outputs = await batch(args.rollouts)
            wall = time.perf_counter() - t0
            failed = [o for o in outputs if o.get("error")]
            repeats.append(
                {
                    "rollouts": len(outputs) - len(failed),
                    "failed": len(failed),
                    "first_error": str(failed[0]["error"])[:300] if failed else None,
                    "rollouts_per_s": len(outputs) / wall,
                    "wall_s": wall,
                    "model_calls": sum(o.get("metrics", {}).get("num_turns", 0) for o in outputs),
                    "reward_mean": sum(o.get("reward") or 0.0 for o in outputs) / max(1, len(outputs)),
                    "cpu_s": {
                        "client": time.process_time() - cpu[0],
                        "env": tree_cpu_s(server_pid) - cpu[1],
                        "inference": proc_cpu_s(args.inference_pid) - cpu[2],
                    },
                }
            )
        return repeats
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-id", default="vf_guess")
    parser.add_argument("--openai-url", required=True, help="the model's API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--inference-pid", type=int, default=0)
    parser.add_argument("--wait-for-go", action="store_true", help='print "ready", then wait for a line on stdin')
    args = parser.parse_args()

    # The env server's workers import the environment by module name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENVS), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(ENVS))
    os.environ.setdefault(API_KEY_VAR, "none")
    address = f"tcp://127.0.0.1:{free_port()}"
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(args.env_id, address))
    server.start()
    try:
        assert server.pid is not None
        repeats = asyncio.run(run(args, address, server))
    finally:
        server.terminate()
        server.join(10)
        if server.is_alive():
            server.kill()
    print(json.dumps({"repeats": repeats}))


if __name__ == "__main__":
    main()
