"""How the HTTP security tests call an endpoint: the TLS context of a caller without a certificate,
of a mesh identity, and the header of a bearer token from a `rollmesh certs init` directory."""

from __future__ import annotations

import ssl
from pathlib import Path

from rollmesh.security import pki
from rollmesh.security.tls import TlsConfig


def anonymous(certs: Path) -> ssl.SSLContext:
    """Trusts the CA, presents no certificate."""
    return TlsConfig(ca=str(certs / "ca.pem")).client_ssl_context()


def as_member(certs: Path, name: str) -> ssl.SSLContext:
    return pki.member_config(certs, name).client_ssl_context()


def bearer(certs: Path, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {(certs / f'{name}.token').read_text()}"}
