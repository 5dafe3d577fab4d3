"""`rollmesh rubric serve` and `rollmesh rubric ls` as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from rollmesh.monitor import ScoreReader, TracePublisher
from rollmesh.monitor.traces import to_trajectory
from rollmesh.rubric.client import RubricClient

from .conftest import chat, traces, uid

ROLLMESH = [sys.executable, "-m", "rollmesh.cli"]
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "rubrics.example.toml"


def config(app: str) -> str:
    return f"""
[server]
port = 50071

[monitor]
durable = "{uid("cli")}"
filter_subjects = ["rollmesh.monitor.{app}"]
apps = {{ {app} = "rules" }}

[[rubric]]
name = "rules"

[[rubric.function]]
name = "correct"
function = "exact_match"
params = {{ extract = "last_number" }}

[[rubric.function]]
name = "length"
function = "length_penalty"
weight = 0.0
params = {{ max = 200 }}
"""


async def test_serve_scores_live_and_exits_cleanly_on_sigterm(nats_url: str, tmp_path: Path) -> None:
    app = uid("cli")
    path = tmp_path / "rubrics.toml"
    path.write_text(config(app))
    proc = await asyncio.create_subprocess_exec(
        *ROLLMESH,
        "rubric",
        "serve",
        "--config",
        str(path),
        "--nats",
        nats_url,
        "--port",
        "0",
        "--dashboard-port",
        "0",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        lines: dict[str, str] = {}
        async with asyncio.timeout(60):
            while "dashboard" not in lines:
                line = (await proc.stderr.readline()).decode()
                assert line, f"serve exited early with {await proc.wait()}"
                for key, marker in (
                    ("grpc", "rubric server on "),
                    ("live", "live scoring on "),
                    ("dashboard", "dashboard on "),
                ):
                    if marker in line:
                        lines[key] = line.split(marker, 1)[1].strip()
        assert f"{app} -> rules" in lines["live"]
        address = lines["grpc"].split(":")[0] + ":" + lines["grpc"].split(":")[1]
        dashboard = lines["dashboard"].split()[0]

        async with ScoreReader(nats_url, app) as scores:
            async with await TracePublisher.connect(nats_url) as publisher:
                messages, answer = chat(7)
                trace_id = await publisher.publish(app, messages, answer=answer)
            score = await scores.next(20)
        assert score.trace_id == trace_id and dict(score.rewards) == {"correct": 1.0} and score.reward == 1.0
        async with await RubricClient.connect(address, timeout_s=10) as client:
            result = await client.score("rules", to_trajectory(traces(app, 1)[0]))
        assert result.reward == 1.0  # the gRPC API of the same process
        async with aiohttp.ClientSession() as http, http.get(f"{dashboard}/healthz") as r:
            assert r.status == 200 and (await r.json())["live_scoring"]["scored"] == 1

        # the same from the shell: `rubric scores` tails what `rubric publish` sends
        tail = await asyncio.create_subprocess_exec(
            *ROLLMESH,
            "rubric",
            "scores",
            "--app",
            app,
            "--all",
            "-n",
            "2",
            "--json",
            "--timeout",
            "30",
            "--nats",
            nats_url,
            stdout=asyncio.subprocess.PIPE,
        )
        sent = await asyncio.create_subprocess_exec(
            *ROLLMESH,
            "rubric",
            "publish",
            "--app",
            app,
            "-m",
            "user:What is 2+2?",
            "-m",
            "assistant:It is 4",
            "--answer",
            "4",
            "--label",
            "user=u1",
            "--nats",
            nats_url,
            stdout=asyncio.subprocess.PIPE,
        )
        published_id = (await sent.communicate())[0].decode().strip()
        assert sent.returncode == 0 and len(published_id) == 32
        lines = (await asyncio.wait_for(tail.communicate(), timeout=40))[0].decode().strip().splitlines()
        assert tail.returncode == 0 and json.loads(lines[0])["trace_id"] == trace_id  # --all: from the start
        tailed = json.loads(lines[1])
        assert tailed["trace_id"] == published_id and tailed["reward"] == 1.0 and tailed["labels"] == {"user": "u1"}

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_monitor_route_to_an_unknown_rubric_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config("shop").replace('apps = { shop = "rules" }', 'apps = { shop = "rulez" }'))
    out = subprocess.run(
        [*ROLLMESH, "rubric", "serve", "--config", str(path), "--port", "0", "--no-dashboard"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "rulez" in out.stderr and "not configured" in out.stderr, out.stderr
    out = subprocess.run(
        [*ROLLMESH, "rubric", "serve", "--config", str(path), "--set", "monitor.max_deliveries=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "monitor.max_deliveries" in out.stderr, out.stderr


def test_ls_lists_rubrics_and_routes(tmp_path: Path) -> None:
    path = tmp_path / "rubrics.toml"
    path.write_text(config("shop"))
    out = subprocess.run([*ROLLMESH, "rubric", "ls", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exact_match" in out.stdout and "length_penalty" in out.stdout and "shop -> rules" in out.stdout


async def test_the_example_config_compiles() -> None:
    from rollmesh.config import load_config
    from rollmesh.monitor.service import RubricService
    from rollmesh.rubric.config import RubricServiceConfig

    # compiles every rubric and route (ports of its own: the example's may be taken on this machine)
    service = RubricService(load_config(RubricServiceConfig, EXAMPLE, ["server.port=0", "dashboard.port=0"]))
    try:
        assert service.book.names == ["shop-quality", "support"] and service.scorer.apps["shop"] == "shop-quality"
    finally:
        await service.book.close()
