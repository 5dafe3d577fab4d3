"""Transport security settings, the same in every process: a certificate and key (who this process
is), a CA (whom it trusts; on a server it also turns on mutual TLS), and a tokens file (bearer tokens
a server accepts). Set by `--tls-cert/--tls-key/--tls-ca/--tokens-file`, a `[tls]` TOML table, or the
environment (ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA, ROLLMESH_TOKENS_FILE). Secrets
never travel in argv: the key stays in its file, a client's bearer token comes from ROLLMESH_TOKEN.

Servers reread their certificate files when they change (checked at each new handshake), so
rotating a certificate is replacing two files."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from ..errors import FailedPreconditionError, InvalidArgumentError

log = logging.getLogger(__name__)

ENV_CERT, ENV_KEY, ENV_CA, ENV_TOKENS, ENV_TOKEN = (
    "ROLLMESH_TLS_CERT",
    "ROLLMESH_TLS_KEY",
    "ROLLMESH_TLS_CA",
    "ROLLMESH_TOKENS_FILE",
    "ROLLMESH_TOKEN",
)
# What a child process must not inherit when it gets settings of its own (or none).
ENV_NAMES = (ENV_CERT, ENV_KEY, ENV_CA, ENV_TOKENS, ENV_TOKEN)
SERVER_NAME_SUFFIX = ".rollmesh"  # a server certificate for kind K names K.rollmesh (see server_name)


def server_name(kind: str) -> str:
    """The name a client checks a server's certificate for: the service's kind, not its address, so
    a registered address is trusted only if its certificate was issued to serve that kind."""
    return f"{kind}{SERVER_NAME_SUFFIX}"


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the {what} {path}: {e.strerror}", reason="INVALID_FIELD") from e


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""
    key: str = ""
    ca: str = ""
    tokens_file: str = ""
    token: str = field(default="", repr=False)  # a client's bearer token (from ROLLMESH_TOKEN only)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TlsConfig:
        env = dict(os.environ if env is None else env)
        return cls(
            cert=env.get(ENV_CERT, ""),
            key=env.get(ENV_KEY, ""),
            ca=env.get(ENV_CA, ""),
            tokens_file=env.get(ENV_TOKENS, ""),
            token=env.get(ENV_TOKEN, ""),
        )

    def overridden(self, **values: str | None) -> TlsConfig:
        """This config with the non-empty `values` (flags) taking precedence."""
        return replace(self, **{k: v for k, v in values.items() if v})

    def env(self) -> dict[str, str]:
        """Environment variables that give a child process this config."""
        pairs = {
            ENV_CERT: self.cert,
            ENV_KEY: self.key,
            ENV_CA: self.ca,
            ENV_TOKENS: self.tokens_file,
            ENV_TOKEN: self.token,
        }
        return {k: v for k, v in pairs.items() if v}

    @property
    def enabled(self) -> bool:
        """Whether connections use TLS at all."""
        return bool(self.cert or self.ca)

    @property
    def authenticates(self) -> bool:
        """Whether a server built from this config knows who calls it (mutual TLS or tokens)."""
        return bool(self.ca or self.tokens_file)

    def validate(self, *, server: bool) -> None:
        if bool(self.cert) != bool(self.key):
            raise InvalidArgumentError("give both --tls-cert and --tls-key, or neither", reason="MISSING_FIELD")
        if server and (self.ca or self.tokens_file) and not self.cert:
            raise InvalidArgumentError(
                "a server that checks its callers needs its own certificate: give --tls-cert and --tls-key",
                reason="MISSING_FIELD",
            )
        for path, what in ((self.cert, "certificate"), (self.key, "private key"), (self.ca, "CA bundle")):
            if path:
                _read(path, what)

    # ---- gRPC ----

    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        """TLS with this certificate; with a CA, callers must present a certificate it signed."""
        self.validate(server=True)
        loaded: dict[str, Any] = {"stamp": None}

        def stamp() -> tuple[float, ...]:
            return tuple(os.stat(p).st_mtime for p in (self.cert, self.key, self.ca) if p)

        def configuration() -> grpc.ServerCertificateConfiguration:
            ca = _read(self.ca, "CA bundle") if self.ca else None
            pair = (_read(self.key, "private key"), _read(self.cert, "certificate"))
            return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC at each new handshake: None keeps the current certificate.
            try:
                now = stamp()
                if now == loaded["stamp"]:
                    return None
                config = configuration()
            except (OSError, InvalidArgumentError):
                log.exception("could not reload the TLS certificate; keeping the current one")
                return None
            if loaded["stamp"] is not None:
                log.info("TLS certificate reloaded from %s", self.cert)
            loaded["stamp"] = now
            return config

        loaded["stamp"] = stamp()
        return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=bool(self.ca))

    def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
        self.validate(server=False)
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA bundle") if self.ca else None,
            private_key=_read(self.key, "private key") if self.key else None,
            certificate_chain=_read(self.cert, "certificate") if self.cert else None,
        )

    # ---- HTTP and NATS (ssl module) ----

    def server_ssl_context(self) -> ssl.SSLContext:
        """For HTTP endpoints. Client certificates are asked for and verified when offered, not
        required: browsers and scrapers identify with a bearer token instead."""
        self.validate(server=True)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        if self.ca:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        self.validate(server=False)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca or None)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


# ---- the process's settings ----------------------------------------------------------------------

_current: TlsConfig | None = None


def current() -> TlsConfig:
    """This process's settings: what configure() set, else the environment."""
    global _current
    if _current is None:
        _current = TlsConfig.from_env()
    return _current


def configure(config: TlsConfig) -> TlsConfig:
    global _current
    _current = config
    return config


@contextlib.contextmanager
def using(config: TlsConfig) -> Iterator[TlsConfig]:
    """This process's settings are `config` inside the block: servers built and channels opened
    there use it (a process that hosts a server and is a client under other identities)."""
    previous = current()
    configure(config)
    try:
        yield config
    finally:
        configure(previous)


# ---- binding ---------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_bind(host: str, config: TlsConfig, *, insecure: bool, what: str) -> None:
    """Refuse to expose `what` beyond this machine without TLS and caller authentication, unless
    the operator said --insecure (then warn)."""
    if is_loopback(host) or (config.enabled and config.authenticates):
        return
    missing = (
        "TLS and caller authentication" if not config.enabled else "caller authentication (--tls-ca or --tokens-file)"
    )
    if not insecure:
        raise FailedPreconditionError(
            f"refusing to serve {what} on {host} without {missing}: anyone who reaches the address could use it. "
            "Give --tls-cert/--tls-key/--tls-ca (`rollmesh certs init` makes them), or --insecure to accept the risk",
            reason="INSECURE_BIND",
        )
    log.warning("serving %s on %s without %s (--insecure): anyone who reaches it can use it", what, host, missing)
