"""Credentials for the security tests: a mesh CA (`rollmesh certs init`), a second CA nobody
trusts, and an expired certificate from the mesh CA. `using(config)` (security.tls) makes a TLS
config this process's: servers built and channels opened inside it use it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from rollmesh.security import pki, roles
from rollmesh.security.tls import TlsConfig, using


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pki.init(tmp_path_factory.mktemp("pki"), publisher_apps=["shop"])


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA with the same identity names: its orchestrator looks right but nobody trusts it."""
    return pki.init(tmp_path_factory.mktemp("foreign-pki"))


def member(certs: Path, name: str) -> TlsConfig:
    return pki.member_config(certs, name)


def callers(certs: Path, foreign: Path, expired: TlsConfig) -> dict[str, TlsConfig]:
    """Callers that must not get in at all (refused at the TLS handshake)."""
    ca = str(certs / "ca.pem")
    return {
        "no certificate": TlsConfig(ca=ca),
        "another CA": TlsConfig(
            cert=str(foreign / "orchestrator.pem"), key=str(foreign / "orchestrator-key.pem"), ca=ca
        ),
        "expired": expired,
    }


@pytest.fixture(scope="session")
def expired(certs: Path) -> TlsConfig:
    """An orchestrator certificate from the mesh CA that expired yesterday."""
    ca = pki.CertificateAuthority.load(certs)
    now = dt.datetime.now(dt.UTC)
    d = certs / "expired"
    d.mkdir(exist_ok=True)
    cert, key = ca.issue(
        pki.Member("orchestrator", (roles.ORCHESTRATOR,)),
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    (d / "orchestrator.pem").write_bytes(cert)
    (d / "orchestrator-key.pem").write_bytes(key)
    return TlsConfig(cert=str(d / "orchestrator.pem"), key=str(d / "orchestrator-key.pem"), ca=str(certs / "ca.pem"))


__all__ = ["callers", "member", "using"]
