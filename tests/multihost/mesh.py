"""The rollmesh mesh spread over the hosts of a `netns.Network`, each piece started the way a user
starts it on its own machine (`rollmesh nats`, `rollmesh env serve`, `digits-server`,
`rollmesh inference serve`, `torchrun ... trainer run`, `rollmesh train`), with mutual TLS and the
NATS users of one PKI. The file system is shared (as the run directory and checkpoints are on
shared storage in a real cluster); the network is not."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollmesh.security import pki

from .netns import Host, Network

ROOT = Path(__file__).resolve().parents[2]
GO_DIGITS = ROOT / "clients" / "go" / "bin" / "digits-server"
SERVER_LINE = re.compile(r"server on (\S+:\d+)")
NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
TRAINER_PORT = 29500
RUN_ID = "multihost"


def make_pki(directory: Path, hosts: Sequence[Host]) -> Path:
    """The mesh's credentials; server certificates also name every host's address (clients check
    NATS servers by address, rollmesh servers by kind)."""
    return pki.init(directory, hosts=[h.address for h in hosts])


def identity_env(certs: Path, name: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **pki.member_config(certs, name).env(), "COLUMNS": "200", **extra}


def rollmesh(*args: object) -> list[str]:
    return [sys.executable, "-m", "rollmesh.cli", *map(str, args)]


def wait_for(log: Path, pattern: re.Pattern[str], proc: Any, timeout_s: float = 120.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if m := pattern.search(text):
            return m
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{log.name}: not ready (exit {proc.poll()}):\n{text[-3000:]}")
        time.sleep(0.1)


@dataclass
class Mesh:
    """What runs where; `logs` holds one file per process."""

    certs: Path
    logs: Path
    nats_hosts: list[Host] = field(default_factory=list)
    replicas: int = 3

    @classmethod
    def on(cls, net: Network, workdir: Path, nats_hosts: Sequence[str] = ("nats1", "nats2", "nats3")) -> Mesh:
        """Credentials for every host of `net` and the NATS cluster on `nats_hosts`, up and electing."""
        mesh = cls(certs=make_pki(workdir / "pki", list(net.hosts.values())), logs=workdir / "logs")
        mesh.start_nats([net[h] for h in nats_hosts])
        return mesh

    @property
    def nats_urls(self) -> str:
        return ",".join(f"nats://{h.address}:{NATS_CLIENT_PORT}" for h in self.nats_hosts)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return identity_env(
            self.certs, name, ROLLMESH_NATS_URL=self.nats_urls, ROLLMESH_NATS_REPLICAS=str(self.replicas), **extra
        )

    # ---- NATS ------------------------------------------------------------------------------------

    def nats_argv(self, host: Host) -> list[str]:
        routes = ",".join(f"nats-route://{h.address}:{NATS_ROUTE_PORT}" for h in self.nats_hosts if h is not host)
        return rollmesh(
            "nats",
            "--host", host.address,
            "--port", str(NATS_CLIENT_PORT),
            "--tls-dir", self.certs,
            "--store", self.logs.parent / "nats" / host.name,
            "--server-name", host.name,
            "--cluster-name", "rollmesh",
            "--cluster-port", str(NATS_ROUTE_PORT),
            "--routes", routes,
        )  # fmt: skip

    def start_nats(self, hosts: Sequence[Host]) -> None:
        self.nats_hosts = list(hosts)
        procs = [(h, h.popen(self.nats_argv(h), log=self.logs / f"nats-{h.name}.log")) for h in hosts]
        for host, proc in procs:
            wait_for(self.logs / f"nats-{host.name}.log", re.compile("listening on"), proc)
        asyncio.run(self._wait_for_jetstream())

    def restart_nats(self, host: Host) -> None:
        proc = host.popen(self.nats_argv(host), log=self.logs / f"nats-{host.name}.log")
        wait_for(self.logs / f"nats-{host.name}.log", re.compile("listening on"), proc)

    async def _wait_for_jetstream(self, timeout_s: float = 60.0) -> None:
        """A cluster answers JetStream requests once it has elected a meta leader."""
        nc = await self.connect("operator")
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    async def connect(self, identity: str) -> Any:
        from rollmesh import bus

        return await bus.connect(self.nats_urls, tls=pki.member_config(self.certs, identity), name="multihost-test")

    # ---- servers ---------------------------------------------------------------------------------

    def start_server(self, host: Host, argv: list[str], identity: str, label: str) -> tuple[Any, str]:
        log = self.logs / f"{label}.log"
        proc = host.popen(argv, log=log, env=self.env(identity))
        return proc, wait_for(log, SERVER_LINE, proc).group(1)

    def start_env(self, host: Host, target: str = "digits") -> tuple[Any, str]:
        argv = rollmesh("env", "serve", target, "--host", host.address, "--port", "50051", "--nats", self.nats_urls)
        return self.start_server(host, argv, "env", f"env-{host.name}")

    def start_go_env(self, host: Host) -> tuple[Any, str]:
        tls = pki.member_config(self.certs, "env")
        argv = [
            GO_DIGITS, "--host", host.address, "--port", "50051", "--nats", self.nats_urls,
            "--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca,
        ]  # fmt: skip
        return self.start_server(host, [str(a) for a in argv], "env", f"env-go-{host.name}")

    def start_inference(self, host: Host, model: Path) -> tuple[Any, str]:
        argv = rollmesh(
            "inference", "serve", "--backend", "hf", "--dtype", "float32", "--model", model, "--name", "tiny",
            "--host", host.address, "--port", "50061", "--nats", self.nats_urls,
        )  # fmt: skip
        return self.start_server(host, argv, "inference", f"inference-{host.name}")

    # ---- the trainer and the orchestrator ----------------------------------------------------------

    def start_trainer(self, hosts: Sequence[Host], config: Path, *, attempt: int = 0) -> list[Any]:
        """One torchrun per host (node), one rank each, gloo; rank 0 on hosts[0]."""
        procs = []
        for rank, host in enumerate(hosts):
            argv = [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", str(len(hosts)), "--node_rank", str(rank), "--nproc_per_node", "1",
                "--master_addr", hosts[0].address, "--master_port", str(TRAINER_PORT),
                "-m", "rollmesh.cli", "trainer", "run", "--config", str(config),
            ]  # fmt: skip
            env = self.env("trainer", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="eth0")
            procs.append(host.popen(argv, log=self.logs / f"trainer-{host.name}-{attempt}.log", env=env))
        return procs

    def start_train(self, host: Host, run_toml: Path) -> Any:
        argv = rollmesh("train", run_toml)
        return host.popen(argv, log=self.logs / "train.log", env=self.env("orchestrator"))


@dataclass
class Training:
    """`rollmesh train` on the orchestrator host with its trainer on two other hosts."""

    mesh: Mesh
    run: Path
    train: Any  # the orchestrator's process
    trainer_hosts: list[Host]
    trainers: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.run / "trainer.toml"

    def start_trainer(self, attempt: int = 0) -> None:
        self.trainers = self.mesh.start_trainer(self.trainer_hosts, self.config, attempt=attempt)

    def records(self) -> list[dict[str, Any]]:
        return metrics(self.run)

    def wait_for_step(self, step: int, timeout_s: float = 400.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(r["step"] >= step for r in self.records()):
            assert self.train.poll() is None, f"rollmesh train exited early:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no step {step} within {timeout_s:g} s:\n{self.log()[-3000:]}"
            time.sleep(0.5)

    def log(self) -> str:
        return (self.mesh.logs / "train.log").read_text(errors="replace")

    def finish(self, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        rc = self.train.wait(timeout_s)
        assert rc == 0, self.log()[-4000:]
        return self.records()

    def audit(self) -> Any:
        from faults.train_runs import audit_records

        records = self.records()
        stream = asyncio.run(rollouts_in_stream(self.mesh, max(r["last_seq"] for r in records)))
        return audit_records(records, stream)


def start_training(
    mesh: Mesh,
    orchestrator: Host,
    trainer_hosts: list[Host],
    workdir: Path,
    model: Path,
    *,
    steps: int,
    extra: str = "",
    trainer_extra: str = "",
    max_policy_lag: int = 0,
) -> Training:
    """Writes the run's file, starts `rollmesh train` (external trainer) and, once it has written the
    trainer's config into the shared run directory, the trainer's nodes."""
    run = workdir / "run"
    (workdir / "run.toml").write_text(
        train_config(run, mesh, model, steps=steps, extra=extra, max_policy_lag=max_policy_lag) + trainer_extra
    )
    training = Training(mesh, run, mesh.start_train(orchestrator, workdir / "run.toml"), list(trainer_hosts))
    deadline = time.monotonic() + 120
    while not training.config.exists():
        assert training.train.poll() is None and time.monotonic() < deadline, training.log()[-3000:]
        time.sleep(0.2)
    training.start_trainer()
    return training


def train_config(
    run_dir: Path, mesh: Mesh, model: Path, *, steps: int, extra: str = "", max_policy_lag: int = 0
) -> str:
    return f"""
run_id = "{RUN_ID}"
dir = "{run_dir}"
steps = {steps}
max_ahead_steps = 1
seed = 0
external_trainer = true

[mesh.nats]
url = {json.dumps(mesh.nats_urls.split(","))}
replicas = {mesh.replicas}
max_outage_s = 120

[mesh.security]
certs = "{mesh.certs}"

[rollout]
env = "digits"
split = "train"
rollouts_per_task = 4
max_concurrency = 16
max_off_policy_steps = 2
sampling = {{ temperature = 1.0, max_tokens = 8 }}
{extra}

[trainer]
model = "{model}"
lr = 1e-3

[trainer.batch]
rollouts_per_step = 16
max_policy_lag = {max_policy_lag}

[trainer.checkpoint]
every_n_steps = 4
"""


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


async def rollouts_in_stream(mesh: Mesh, last_seq: int, run_id: str = RUN_ID) -> dict[str, bool]:
    """trajectory id -> errored, for the run's messages in the ROLLOUTS stream up to `last_seq` (read
    over the network from the cluster, as an operator)."""
    import nats.js.errors
    from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

    out: dict[str, bool] = {}
    nc = await mesh.connect("operator")
    try:
        js = nc.jetstream()
        info = await js.stream_info("ROLLOUTS")
        for seq in range(info.state.first_seq, min(last_seq, info.state.last_seq) + 1):
            try:
                msg = await js.get_msg("ROLLOUTS", seq)
            except nats.js.errors.NotFoundError:
                continue
            t = traj_pb.Trajectory.FromString(msg.data)
            if t.run_id == run_id:
                out[t.trajectory_id] = t.stop_reason == traj_pb.STOP_REASON_ERROR
    finally:
        await nc.close()
    return out
