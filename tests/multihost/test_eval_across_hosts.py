"""`rollmesh eval` on one host against a 3-node NATS cluster, the `digits` environment on two hosts
(Python and Go) and an inference server on a fourth, all with mutual TLS. Mid-eval the Python
environment host is lost as a machine is: its link goes down first (no TCP reset reaches anyone),
then its processes die. Its episodes rerun on the Go replica: every rollout comes back exactly once,
and a rollout that errored is an error with a reason, never a reward of 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .mesh import GO_DIGITS, Mesh, rollmesh
from .netns import Network

pytestmark = [pytest.mark.usefixtures("namespaces_available"), pytest.mark.timeout(600)]

HOSTS = ["nats1", "nats2", "nats3", "env1", "env2", "inference", "orchestrator"]
TASKS, ROLLOUTS = 24, 4


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_environment_host_lost_mid_eval_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    if not GO_DIGITS.exists():
        pytest.skip("clients/go/bin/digits-server is not built (make setup builds it)")
    with Network(HOSTS) as net:
        mesh = Mesh.on(net, tmp_path)
        mesh.start_env(net["env1"])
        mesh.start_go_env(net["env2"])
        mesh.start_inference(net["inference"], tiny_model_dir)
        out = tmp_path / "out"
        argv = rollmesh(
            "eval", "--nats", mesh.nats_urls, "--env", "digits", "--model", "tiny", "--split", "train",
            "-n", TASKS, "-r", ROLLOUTS, "--concurrency", "16", "--max-tokens", "8", "--step-timeout", "5",
            "--no-progress", "--out", out,
        )  # fmt: skip
        log = mesh.logs / "eval.log"
        proc = net["orchestrator"].popen(argv, log=log, env=mesh.env("orchestrator"))
        deadline = time.monotonic() + 180
        while len(_rows(out / "trajectories.jsonl")) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        net["env1"].link_down()
        net["env1"].kill()
        assert proc.wait(300) == 0, log.read_text()[-4000:]

        rows = _rows(out / "trajectories.jsonl")
        ids = [r["trajectory_id"] for r in rows]
        assert len(ids) == TASKS * ROLLOUTS == len(set(ids)), "every rollout exactly once"
        errors = [r for r in rows if r.get("error")]
        for r in errors:
            assert not r.get("reward") and not r.get("rewards"), r
        rerun = sum(1 for r in rows if r.get("attempts", 1) > 1)
        print(f"env host lost mid-eval: {len(rows)} rollouts, {rerun} rerun elsewhere, {len(errors)} errors")
        assert rerun > 0, "the lost host's episodes were rerun"
        assert errors == [], [(r["error"], r.get("attempts")) for r in errors]
