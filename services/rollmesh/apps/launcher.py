"""The embedded local mesh: NATS (JetStream) + environment servers + inference server(s) + the
rubric service on loopback, each server a subprocess started through the `rollmesh` CLI, from one
TOML file (deploy/mesh.example.toml) or flags. Used by `rollmesh up`, the demo, and `rollmesh eval`
(for a model given as a local path).

Each service writes its log to <dir>/logs/<service>.log; the mesh waits until every server prints
its address and answers gRPC health checks (it registered in the NATS registry before that), and
writes <dir>/mesh.json with the addresses. Children run in their own process groups (so one ctrl-C
reaches only the mesh, which then stops them in order) and get SIGTERM from the kernel if the
mesh process dies, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..children import dies_with_parent
from ..config import NatsUrl, Section, to_toml
from ..errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from ..security import pki
from ..security import tls as security_tls
from ..security.tls import TlsConfig
from ..telemetry import get_logger

log = get_logger(__name__)

DEFAULT_NATS_PORT = 4222
DEFAULT_DIR = "rollmesh-mesh"
# "rollmesh env server on 127.0.0.1:40123: ...", "rollmesh inference server on ...", "rubric server on ..."
# Anchored at a line start: a traceback quoting the source of these lines must not match.
ADDRESS_RE = re.compile(r"^rollmesh (?:env|inference|rubric) server on (\S+):\s", re.MULTILINE)
LOG_TAIL_BYTES = 3000
KIND_NAMES = {"environment": "env", "inference": "inference", "rubric": "rubric"}  # certificate names


# ---- configuration ---------------------------------------------------------------------------


class NatsConfig(Section):
    url: NatsUrl = ""
    """An external NATS server (nats://host:port), or the servers of a cluster (comma-separated, or a list: clients
    connect to any and move to another when it fails); empty = start an embedded nats-server.
    """
    host: str = "127.0.0.1"
    """Interface the embedded nats-server binds."""
    port: int | None = Field(None, ge=0, le=65535)
    """Embedded server's port: unset = 4222 when free (the default ROLLMESH_NATS_URL), else any free port; 0 = any free
    port; a number = that port (an error when taken).
    """
    store_dir: str = ""
    """JetStream storage of the embedded server; "" = <dir>/nats (kept between runs)."""
    max_outage_s: float = Field(60.0, gt=0)
    """How long the mesh's users wait for a NATS server that is down (external, or not restarted) before they stop with
    an error instead of waiting forever.
    """
    replicas: int | None = Field(None, ge=1, le=5)
    """Copies JetStream keeps of every stream and KV bucket of the mesh: 3 on a 3-node cluster (`url` lists its servers)
    survives the loss of any one node. The mesh creates them (or scales existing ones) at start, and its processes get
    ROLLMESH_NATS_REPLICAS. Unset = ROLLMESH_NATS_REPLICAS, else new streams get 1 and existing ones keep theirs.
    """

    @model_validator(mode="after")
    def _replicas_need_a_cluster(self) -> NatsConfig:
        if self.replicas is not None and self.replicas > 1 and not self.url:
            raise ValueError(
                f"replicas = {self.replicas} needs a NATS cluster, not the embedded single server: start one "
                "(`rollmesh nats --cluster 3`, or a node per machine) and set nats.url to its servers' URLs"
            )
        return self


class EnvServerConfig(Section):
    target: str | list[str]
    """Environments one server process hosts: entry-point names, modules or .py files."""
    replicas: int = Field(1, ge=1, le=64)
    """Server processes of this entry (each registers; the orchestrator spreads episodes over them)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """`load_environment` keyword arguments (`rollmesh env serve --arg k=v`)."""
    extra_args: list[str] = Field(default_factory=list)
    """More `rollmesh env serve` flags, e.g. ["--max-episodes", "256"]."""
    python: str = ""
    """Python interpreter of another virtual environment with rollmesh installed, to run this server in (e.g.
    ".venv-verifiers/bin/python" for verifiers environments, whose dependencies conflict with this one's); "" = this
    process's interpreter.
    """

    @property
    def targets(self) -> list[str]:
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @field_validator("target")
    @classmethod
    def _nonempty(cls, v: str | list[str]) -> str | list[str]:
        if not v:
            raise ValueError("name at least one environment")
        return v


class InferenceConfig(Section):
    model: str = "tiny"
    """A Hugging Face directory, a .gguf file, "smollm2", or "tiny" (the tiny test model, built once into the cache
    directory); with backend "scripted", a script name.
    """
    backend: Literal["auto", "hf", "vllm", "scripted"] = "auto"
    """Which engine: "auto" = vllm with a GPU and vllm installed, else hf; "scripted" answers instantly
    from a script (benchmarks)."""
    replicas: int = Field(1, ge=1, le=16)
    """Server processes, each with its own copy of the model."""
    name: str = ""
    """Served model name (default: the directory's name, e.g. "tiny")."""
    dtype: str = "auto"
    """Model dtype: "auto", "float32", "bfloat16" or "float16". "auto" (hf backend): float32 on a CPU, like the trainer
    there, else the model's own; serve in the dtype you train in (a bfloat16 sampler's logprobs differ from a float32
    trainer's)."""
    max_batch_size: int = Field(32, ge=1)
    """Sequences per forward pass (hf backend)."""
    extra_args: list[str] = Field(default_factory=list)
    """More `rollmesh inference serve` flags, e.g. ["--max-model-len", "2048"]."""


class MeshRubricConfig(Section):
    config: str = ""
    """A rubric service TOML file ([[rubric]] ...), or the same content inline under `inline`."""
    inline: dict[str, Any] = Field(default_factory=dict)
    """The rubric service file's content, inline (written to the mesh directory)."""
    extra_args: list[str] = Field(default_factory=list)
    """More `rollmesh rubric serve` flags."""


class MeshSecurityConfig(Section):
    enabled: bool = True
    """Mutual TLS between every service and the mesh's clients, role checks on every call, and the embedded nats-server
    with TLS and per-role users; the credentials are made on first use (`rollmesh certs init`). false = plaintext on
    loopback (only for debugging the wire: the mesh refuses a non-loopback host without security).
    """
    certs: str = ""
    """A `rollmesh certs init` directory to use; "" = <dir>/pki, created on first use and kept between runs, except when
    the mesh runs elsewhere (nats.url and nothing to start here) and ROLLMESH_TLS_CERT gives this process an identity:
    then that one is used.
    """


class MeshConfig(Section):
    dir: str = DEFAULT_DIR
    """Logs, mesh.json, the embedded NATS store."""
    host: str = "127.0.0.1"
    """Interface every server of the mesh binds."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    security: MeshSecurityConfig = Field(default_factory=MeshSecurityConfig)
    envs: list[EnvServerConfig] = Field(default_factory=list)
    inference: InferenceConfig | None = None
    rubric: MeshRubricConfig | None = None
    startup_timeout_s: float = Field(300.0, gt=0)
    """How long each server may take to report ready."""
    grace_s: float = Field(5.0, ge=0)
    """Seconds each server gets to finish in-flight work when the mesh stops."""
    max_restarts: int = Field(3, ge=0)
    """A server (or the embedded nats-server) that dies is started again, at most this many times each; past that the
    mesh reports it dead. Servers come back on new ports and re-register, so clients that find them through the
    registry follow; the nats-server keeps its port and store.
    """


def default_config() -> MeshConfig:
    """`rollmesh up` with no file: the built-in environments in one server and the tiny model."""
    return MeshConfig(
        envs=[EnvServerConfig(target=["arithmetic", "guess-number", "wiki-search"])],
        inference=InferenceConfig(model="tiny"),
    )


def load_mesh_config(path: str | Path | None, overrides: Sequence[str] = ()) -> MeshConfig:
    """A mesh TOML file: the MeshConfig keys at the top level, or under [mesh] (a run file)."""
    from ..config import apply_overrides, load_config, read_toml

    if path is None:
        data = default_config().model_dump(exclude_none=True)
        return load_config(MeshConfig, None, overrides, defaults=data)
    raw = read_toml(path)
    data = raw["mesh"] if isinstance(raw.get("mesh"), dict) else raw
    try:
        return load_config(MeshConfig, None, [], defaults=apply_overrides(data, overrides))
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{path}: {e}", reason=e.reason) from e


# ---- the tiny model --------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("ROLLMESH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rollmesh"
    )
    return Path(root)


def ensure_tiny_model(timeout_s: float = 300.0) -> Path:
    """<cache>/models/tiny, built on first use by `rollmesh model tiny` in a subprocess (this
    process stays free of torch). Concurrent builders race benignly: each builds in its own
    directory and the first rename wins."""
    target = cache_dir() / "models" / "tiny"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tiny-{os.getpid()}-{threading.get_ident()}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rollmesh.cli", "model", "tiny", "--out", str(tmp)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise FailedPreconditionError(f"building the tiny model failed:\n{proc.stderr[-LOG_TAIL_BYTES:]}")
        with contextlib.suppress(OSError):  # another process renamed its copy first
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if not (target / "config.json").is_file():
        raise FailedPreconditionError(f"the tiny model is missing from {target} after building it")
    return target


def resolve_model_path(spec: str, backend: str = "auto") -> str:
    """What `rollmesh inference serve --model` gets: "tiny" becomes the cached tiny model."""
    if backend != "scripted" and spec == "tiny" and not Path(spec).exists():
        return str(ensure_tiny_model())
    return spec


# ---- one service subprocess ------------------------------------------------------------------


def rollmesh_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rollmesh.cli", *args]


class ServiceProcess:
    """A server subprocess: log to a file, ready when it prints its address and answers health
    checks, stopped with SIGTERM (it deregisters and drains) and SIGKILL after the grace."""

    def __init__(
        self,
        name: str,
        kind: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        tls: TlsConfig | None = None,
    ):
        """`tls`: the server's own TLS settings (its certificate); None = plaintext. The process's
        own settings are never inherited: a client certificate is no server's."""
        self.name = name
        self.tls = tls
        self.kind = kind
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in security_tls.ENV_NAMES}
        env.update({"GRPC_VERBOSITY": "ERROR", **(self.tls.env() if self.tls else {}), **(self.env or {})})
        with self.log_path.open("ab") as logf:
            logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                dies_with_parent(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self._log_start = self.log_path.stat().st_size
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[max(getattr(self, "_log_start", 0), len(data) - max_bytes) :].decode(errors="replace")

    async def wait_ready(self, timeout_s: float) -> str:
        from ..rpc import wait_for_ready

        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while not self.address:
            rc = self.proc.poll()
            if m := ADDRESS_RE.search(self.log_tail(64 * 1024)):
                self.address = m.group(1)
                break
            if rc is not None:
                raise UnavailableError(
                    f"{self.name} exited with code {rc} while starting; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail()}",
                    reason="SERVICE_FAILED",
                )
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"{self.name} did not start within {timeout_s:g}s; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail()}",
                    reason="SERVICE_TIMEOUT",
                )
            await asyncio.sleep(0.1)
        await wait_for_ready(self.address, max(1.0, deadline - time.monotonic()), kind=KIND_NAMES.get(self.kind))
        return self.address

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the group: workers it spawned (vLLM) go too

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM, wait grace + 5 s, then SIGKILL the process group. Returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, grace_s + 5.0)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM; killing it", self.name, grace_s + 5.0)
            self.signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        # Children of the server that are still around (its group) get no second chance.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


# ---- commands of each service ----------------------------------------------------------------


def env_command(spec: EnvServerConfig, *, host: str, nats_url: str | None, grace_s: float) -> list[str]:
    argv = rollmesh_command("env", "serve", *spec.targets, "--host", host, "--port", "0", "--grace", f"{grace_s:g}")
    if spec.python:
        argv[0] = spec.python
    if nats_url:
        argv += ["--nats", nats_url]
    for key, value in spec.args.items():
        argv += ["--arg", f"{key}={json.dumps(value)}"]
    return argv + spec.extra_args


def inference_command(spec: InferenceConfig, *, host: str, nats_url: str | None, grace_s: float) -> list[str]:
    argv = rollmesh_command(
        "inference",
        "serve",
        "--model",
        resolve_model_path(spec.model, spec.backend),
        "--backend",
        spec.backend,
        "--host",
        host,
        "--port",
        "0",
        "--dtype",
        spec.dtype,
        "--max-batch-size",
        str(spec.max_batch_size),
        "--grace",
        f"{grace_s:g}",
    )
    if spec.name:
        argv += ["--name", spec.name]
    if nats_url:
        argv += ["--nats", nats_url]
    return argv + spec.extra_args


def rubric_command(spec: MeshRubricConfig, *, host: str, run_dir: Path, nats_url: str | None) -> list[str]:
    path = spec.config
    if spec.inline:
        inline = dict(spec.inline)
        path = str(run_dir / "rubric.toml")
        Path(path).write_text(to_toml(inline))
    if not path:
        raise FailedPreconditionError("rubric: set `config` (a rubric TOML file) or `inline`")
    argv = rollmesh_command("rubric", "serve", "--config", path, "--host", host, "--port", "0", "--dashboard-port", "0")
    if nats_url:
        argv += ["--nats", nats_url]
    return argv + spec.extra_args


# ---- the mesh --------------------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Mesh:
    """`async with Mesh(config) as mesh:` or start()/stop(). mesh.nats_url, mesh.services."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.dir = Path(config.dir)
        self.nats_url = config.nats.url
        self.services: list[ServiceProcess] = []
        self._nats: Any = None  # natsd.EmbeddedNats
        self.restarts: dict[str, int] = {}  # by service name ("nats" for the embedded server)
        self.certs: Path | None = None  # the credentials directory, with security on
        self._env_identity: TlsConfig | None = None  # the process's own (ROLLMESH_TLS_*), when it starts nothing
        self._previous_tls: TlsConfig | None = None
        self._previous_bus: Any = None  # bus.BusSettings, while nats.replicas is this process's
        self._bus_configured = False

    def identity(self, name: str) -> TlsConfig | None:
        """The TLS settings of one identity of the mesh (env, inference, rubric, orchestrator,
        trainer, ...); None with security off, or when the process's own identity is used and its
        directory holds no such certificate."""
        if self.certs is not None:
            return pki.member_config(self.certs, name)
        return pki.sibling(self._env_identity, name) if self._env_identity is not None else None

    def _secure(self) -> None:
        """Credentials made on first use; this process becomes the mesh's orchestrator (its gRPC
        channels and NATS connections use that identity) until stop()."""
        cfg = self.config
        if not cfg.security.enabled:
            for what, host in (("the mesh", cfg.host), ("NATS", cfg.nats.host)):
                security_tls.check_bind(host, TlsConfig(), insecure=False, what=what)
            return
        own = security_tls.current()
        if not cfg.security.certs and self.starts_nothing() and own.cert:
            # A client of a mesh running elsewhere (another machine, Kubernetes) with an identity of
            # its own: credentials made here would come from a CA nobody there trusts.
            self._env_identity = own
            return
        self.certs = pki.init(Path(cfg.security.certs) if cfg.security.certs else self.dir / "pki")
        self._previous_tls = own
        security_tls.configure(pki.member_config(self.certs, "orchestrator"))

    def starts_nothing(self) -> bool:
        """True when the mesh runs elsewhere: an external NATS and no server to start here."""
        cfg = self.config
        return bool(cfg.nats.url) and not cfg.envs and cfg.inference is None and cfg.rubric is None

    def addresses(self, kind: str) -> list[str]:
        return [s.address for s in self.services if s.kind == kind and s.address]

    async def start(self) -> Mesh:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        self.dir.mkdir(parents=True, exist_ok=True)
        self._secure()
        await self._start_nats()
        await self._prepare_bus()
        logs = self.dir / "logs"
        for spec in cfg.envs:
            label = "-".join(spec.targets)
            for i in range(spec.replicas):
                argv = env_command(spec, host=cfg.host, nats_url=self.nats_url, grace_s=cfg.grace_s)
                self.services.append(
                    ServiceProcess(
                        f"env-{label}-{i}", "environment", argv, logs / f"env-{label}-{i}.log", tls=self.identity("env")
                    )
                )
        if cfg.inference is not None:
            spec_i = cfg.inference
            argv = await asyncio.to_thread(
                inference_command, spec_i, host=cfg.host, nats_url=self.nats_url, grace_s=cfg.grace_s
            )
            for i in range(spec_i.replicas):
                self.services.append(
                    ServiceProcess(
                        f"inference-{i}", "inference", argv, logs / f"inference-{i}.log", tls=self.identity("inference")
                    )
                )
        if cfg.rubric is not None:
            argv_r = rubric_command(cfg.rubric, host=cfg.host, run_dir=self.dir, nats_url=self.nats_url)
            self.services.append(
                ServiceProcess("rubric", "rubric", argv_r, logs / "rubric.log", tls=self.identity("rubric"))
            )
        for service in self.services:
            service.env = {**(service.env or {}), **self.bus_env()}
            service.start()
        await asyncio.gather(*(s.wait_ready(cfg.startup_timeout_s) for s in self.services))
        self._write_state()

    def bus_env(self) -> dict[str, str]:
        """Environment variables that give a child process the mesh's bus settings (nats.replicas)."""
        from .. import bus

        return bus.settings().env() if self._bus_configured else {}

    async def _prepare_bus(self) -> None:
        """With nats.replicas: this process's bus setting until stop(), and every stream and KV bucket
        of the mesh created or scaled now, so that a cluster too small fails the start with the
        server's reason (BAD_REPLICAS) instead of the first publish."""
        from .. import bus
        from ..registry import Registry

        replicas = self.config.nats.replicas
        if replicas is None:
            return
        self._previous_bus = bus.configure(bus.settings().overridden(replicas=replicas))
        self._bus_configured = True
        nc = await bus.connect(self.nats_url, name="rollmesh-mesh", connect_timeout_s=2.0)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            await bus.ensure_policy_bucket(js)
            await Registry.from_client(nc)
        finally:
            await nc.close()

    async def _start_nats(self) -> None:
        cfg = self.config.nats
        if cfg.url:
            from .. import bus

            nc = await bus.connect(cfg.url, name="rollmesh-mesh", connect_timeout_s=2.0)  # NATS_DOWN
            await nc.close()
            self.nats_url = cfg.url
            return
        from ..natsd import EmbeddedNats, free_port

        if cfg.port is None:
            port = DEFAULT_NATS_PORT if _port_free(cfg.host, DEFAULT_NATS_PORT) else free_port(cfg.host)
        elif cfg.port and not _port_free(cfg.host, cfg.port):
            raise FailedPreconditionError(
                f"port {cfg.port} on {cfg.host} is taken; pick another nats.port (0 = any free port) or point "
                "nats.url at the NATS server already running there",
                reason="PORT_TAKEN",
            )
        else:
            port = cfg.port or free_port(cfg.host)
        store = Path(cfg.store_dir) if cfg.store_dir else self.dir / "nats"
        server = EmbeddedNats(host=cfg.host, port=port, store_dir=store, auth_dir=self.certs)
        server.start()  # from this (main) thread, so that nats-server dies with the mesh
        self._nats = server
        self.nats_url = server.url

    def _write_state(self) -> None:
        state = {
            "nats_url": self.nats_url,
            "certs": str(self.certs.resolve()) if self.certs else None,
            "nats_pid": self._nats.proc.pid if self._nats is not None and self._nats.proc else None,
            "pid": os.getpid(),
            "services": [
                {"name": s.name, "kind": s.kind, "address": s.address, "pid": s.pid, "log": str(s.log_path)}
                for s in self.services
            ],
        }
        (self.dir / "mesh.json").write_text(json.dumps(state, indent=2) + "\n")

    def dead(self) -> list[ServiceProcess]:
        """Services that exited on their own."""
        return [s for s in self.services if s.proc is not None and not s.running()]

    async def supervise(self) -> None:
        """Starts again what died: the embedded nats-server (same port and store: clients reconnect
        to what they had, acknowledged messages are on disk) and each server (it re-registers).
        Raises UnavailableError once something died more than max_restarts times or does not come
        back. Call it periodically from the event loop of the main thread (the restarted processes
        are tied to it, so they die with the mesh)."""
        nats = self._nats
        if nats is not None and (rc := nats.exited()) is not None:
            tail = nats.log_tail(2000)
            self._count_restart("nats", f"the embedded nats-server exited (code {rc}); its log ends with:\n{tail}")
            log.warning("the embedded nats-server exited (code %s); restarting it on %s", rc, nats.url)
            try:
                nats.restart()
            except (OSError, RuntimeError, TimeoutError) as e:
                raise UnavailableError(
                    f"the embedded nats-server could not be restarted: {e}", reason="NATS_DOWN"
                ) from e
            self._write_state()
        for service in self.dead():
            rc = service.proc.returncode if service.proc else None
            self._count_restart(
                service.name,
                f"{service.name} exited (code {rc}); its log ({service.log_path}) ends with:\n{service.log_tail()}",
            )
            log.warning("%s exited (code %s); starting it again", service.name, rc)
            service.address = ""
            service.start()
            await service.wait_ready(self.config.startup_timeout_s)
            self._write_state()

    def _count_restart(self, name: str, what: str) -> None:
        done = self.restarts.get(name, 0)
        if done >= self.config.max_restarts:
            raise UnavailableError(
                f"{what}\n(it was restarted {done} times already: mesh.max_restarts)",
                reason="NATS_DOWN" if name == "nats" else "SERVICE_FAILED",
            )
        self.restarts[name] = done + 1

    async def stop(self) -> None:
        """Stops every service (all at once: each deregisters and drains), then NATS. Idempotent."""
        await asyncio.gather(*(s.stop(self.config.grace_s) for s in self.services), return_exceptions=True)
        self.services = []
        nats, self._nats = self._nats, None
        if nats is not None:
            await asyncio.to_thread(nats.stop)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "mesh.json").unlink()
        if self._previous_tls is not None:
            security_tls.configure(self._previous_tls)
            self._previous_tls = None
        if self._bus_configured:
            from .. import bus

            bus.configure(self._previous_bus)
            self._previous_bus, self._bus_configured = None, False

    def kill(self) -> None:
        """Immediate SIGKILL of everything (a second ctrl-C while stopping)."""
        for s in self.services:
            s.signal(signal.SIGKILL)
        if self._nats is not None and self._nats.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._nats.proc.kill()

    async def __aenter__(self) -> Mesh:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---- `rollmesh up` ---------------------------------------------------------------------------


def client_env_line(certs: Path, identity: str = "orchestrator") -> str:
    """The shell line that gives another terminal's commands an identity of the mesh."""
    config = pki.member_config(certs.resolve(), identity)
    return "export " + " ".join(f"{k}={v}" for k, v in config.env().items() if k != security_tls.ENV_TOKENS)


def _services_table(mesh: Mesh) -> Any:
    from rich.table import Table

    table = Table(title=f"rollmesh mesh (NATS {mesh.nats_url})")
    for col in ("service", "kind", "address", "pid", "log"):
        table.add_column(col, no_wrap=col != "log")
    for s in mesh.services:
        table.add_row(s.name, s.kind, s.address, str(s.pid), str(s.log_path))
    return table


async def serve_mesh(config: MeshConfig, console: Any) -> int:
    """Starts the mesh, waits for ctrl-C / SIGTERM (or a service that dies), stops everything.
    Exit code: 0 after a signal, 1 when the mesh failed to start or a service died."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    mesh = Mesh(config)
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            console.print("stopping the mesh (ctrl-C again to kill it at once) ...")
            stop.set()
        else:
            mesh.kill()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        starting = asyncio.create_task(mesh.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()  # Mesh.start stops what it started
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        stopped.cancel()
        if (error := starting.exception()) is not None:
            console.print(f"[red]error: the mesh did not start: {error}[/]", highlight=False)
            return 1
        console.print(_services_table(mesh))
        where = (
            "clients find it with no setting"
            if mesh.nats_url == f"nats://127.0.0.1:{DEFAULT_NATS_PORT}"
            else f"export ROLLMESH_NATS_URL={mesh.nats_url}"
        )
        if mesh.certs is not None:
            where += f"; with its credentials: {client_env_line(mesh.certs)}"
        console.print(
            f"ready. {where}; then e.g. `rollmesh eval --env NAME --model NAME`; ctrl-C stops the mesh",
            highlight=False,
        )
        code = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            try:
                await mesh.supervise()
            except UnavailableError as e:
                console.print(f"[red]{e}[/]", highlight=False)
                code = 1
                break
        await mesh.stop()
        console.print("mesh stopped")
        return code
    finally:
        await mesh.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_up(config: MeshConfig) -> int:
    """`rollmesh up`."""
    from rich.console import Console

    return asyncio.run(serve_mesh(config, Console()))


__all__ = [
    "EnvServerConfig",
    "InferenceConfig",
    "Mesh",
    "MeshConfig",
    "MeshRubricConfig",
    "NatsConfig",
    "ServiceProcess",
    "cache_dir",
    "default_config",
    "ensure_tiny_model",
    "load_mesh_config",
    "run_up",
    "serve_mesh",
]
