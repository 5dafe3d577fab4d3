"""nats-server authorization for the mesh: TLS with client certificates required, and each
certificate mapped (verify_and_map) to a user whose publish/subscribe permissions are its roles'
(roles.nats_permissions). One identity for gRPC and the bus, no passwords to hand out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from .roles import nats_permissions

if TYPE_CHECKING:
    from .pki import Member

CONFIG_NAME = "nats-auth.conf"


def nats_user(cert_pem: bytes) -> str:
    """The user name nats-server maps a client certificate to: its subject as RFC 2253."""
    return x509.load_pem_x509_certificate(cert_pem).subject.rfc4514_string()


def permissions_for(roles: Sequence[str], *, apps: Sequence[str] = ()) -> dict[str, dict[str, list[str]]]:
    publish: list[str] = []
    subscribe: list[str] = []
    for role in roles:
        p = nats_permissions(role, apps=tuple(apps))
        publish += [s for s in p["publish"] if s not in publish]
        subscribe += [s for s in p["subscribe"] if s not in subscribe]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def render(*, cert: str, key: str, ca: str, users: Sequence[tuple[str, dict[str, object]]]) -> str:
    """A nats-server config fragment (JSON is valid NATS config syntax)."""
    body = {
        "tls": {"cert_file": cert, "key_file": key, "ca_file": ca, "verify_and_map": True, "timeout": 5},
        "authorization": {"users": [{"user": u, "permissions": p} for u, p in users]},
    }
    return json.dumps(body, indent=2) + "\n"


def write_nats_config(directory: Path, members: Sequence[Member], *, publisher_apps: Sequence[str] = ()) -> Path:
    """DIR/nats-auth.conf for the members of a directory made by pki.init; the nats-server
    certificate is DIR/nats.pem (issued here)."""
    from .pki import CertificateAuthority, Member, write_member

    ca = CertificateAuthority.load(directory)
    if not (directory / "nats.pem").exists():
        write_member(ca, directory, Member("nats", (), ("nats",)))
    users = []
    for m in members:
        pem = (directory / f"{m.name}.pem").read_bytes()
        apps = publisher_apps if "publisher" in m.roles else ()
        users.append((nats_user(pem), permissions_for(m.roles, apps=apps)))
    path = directory / CONFIG_NAME
    path.write_text(
        render(
            cert=str((directory / "nats.pem").resolve()),
            key=str((directory / "nats-key.pem").resolve()),
            ca=str((directory / "ca.pem").resolve()),
            users=users,
        )
    )
    return path
