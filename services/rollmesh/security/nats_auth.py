"""nats-server authorization for the mesh: TLS with client certificates required, and each
certificate mapped (verify_and_map) to a user whose publish/subscribe permissions are its roles'
(roles.nats_permissions). One identity for gRPC and the bus, no passwords to hand out.

The same file secures the routes between the servers of a cluster: they speak TLS with the nats
certificate, each verifying the other's against the mesh CA (nats-server always requires route
client certificates), so only servers holding a certificate from that CA can join."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import FailedPreconditionError
from .roles import ROLES, nats_permissions

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


def route_tls(*, cert: str, key: str, ca: str) -> dict[str, object]:
    """The `cluster { tls }` block: routes use the server's own certificate both ways (it carries
    the serverAuth and clientAuth usages), verified against the mesh CA."""
    return {"cert_file": cert, "key_file": key, "ca_file": ca, "verify": True, "timeout": 5}


def render(*, cert: str, key: str, ca: str, users: Sequence[tuple[str, dict[str, object]]]) -> str:
    """A nats-server config fragment (JSON is valid NATS config syntax). Its `cluster` block holds
    only the routes' TLS: a server started without cluster options (or flags) ignores it, one started
    with them (`--cluster_name`, `--cluster`, `--routes`) secures its routes with it."""
    body = {
        "tls": {"cert_file": cert, "key_file": key, "ca_file": ca, "verify_and_map": True, "timeout": 5},
        "authorization": {"users": [{"user": u, "permissions": p} for u, p in users]},
        "cluster": {"tls": route_tls(cert=cert, key=key, ca=ca)},
    }
    return json.dumps(body, indent=2) + "\n"


def ensure_current(directory: Path, *, routes: bool) -> Path:
    """Brings DIR/nats-auth.conf, as an earlier `rollmesh certs init` wrote it, up to date: each
    user's permissions from today's role table (its roles are its certificate subject's OUs; a
    publisher keeps its apps) and, for a cluster node (`routes`), the routes' TLS block. A file not
    in the JSON that certs init writes is left alone, unless routes need their block added."""
    path = directory / CONFIG_NAME
    try:
        text = path.read_text()
        body = json.loads(text)
        client = body["tls"]
        cluster = body.setdefault("cluster", {})
        users = body["authorization"]["users"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if not routes:
            return path  # hand-written: its author keeps it current
        raise FailedPreconditionError(
            f"cannot read {path} as the JSON `rollmesh certs init` writes ({e!r}); to secure cluster routes, give it "
            "a `cluster { tls { cert_file, key_file, ca_file, verify: true } }` block yourself",
            reason="NATS_CONFIG",
        ) from e
    for user in users:
        if (roles := _roles_of(user.get("user", ""))) is not None:
            user["permissions"] = permissions_for(roles, apps=_apps_of(user.get("permissions")))
    if routes and "tls" not in cluster:
        cluster["tls"] = route_tls(cert=client["cert_file"], key=client["key_file"], ca=client["ca_file"])
    updated = json.dumps(body, indent=2) + "\n"
    if updated != text:
        try:
            path.write_text(updated)
        except OSError as e:
            if routes and "tls" not in json.loads(text).get("cluster", {}):
                raise FailedPreconditionError(
                    f"{path} has no TLS for cluster routes and cannot be updated ({e.strerror}); add "
                    f'"cluster": {{"tls": {json.dumps(cluster["tls"])}}} to it, or rerun `rollmesh certs init --force`',
                    reason="NATS_CONFIG",
                ) from e
    return path


def _roles_of(user: str) -> list[str] | None:
    """The roles (OUs) in a user name (a certificate subject); None when it is not one of ours."""
    try:
        name = x509.Name.from_rfc4514_string(user)
    except ValueError:
        return None
    roles = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    return roles if roles and all(r in ROLES for r in roles) else None


def _apps_of(permissions: object) -> tuple[str, ...]:
    """The apps a publisher was limited to: its rollmesh.monitor.<app> subjects (none = every app)."""
    try:
        allowed = permissions["publish"]["allow"]  # type: ignore[index]
    except (KeyError, TypeError):
        return ()
    prefix = "rollmesh.monitor."
    return tuple(s.removeprefix(prefix) for s in allowed if s.startswith(prefix) and s != prefix + ">")


def check_route_hosts(directory: Path, hosts: Sequence[str]) -> None:
    """Routes check the server certificate against the host they dial (as clients do): refuse,
    with what to do, hosts that DIR/nats.pem does not name."""
    cert = x509.load_pem_x509_certificate((directory / "nats.pem").read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names = {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
    addresses = set(sans.get_values_for_type(x509.IPAddress))
    missing = []
    for host in dict.fromkeys(hosts):
        try:
            named = ipaddress.ip_address(host.strip("[]")) in addresses
        except ValueError:
            named = host.lower() in names
        if not named:
            missing.append(host)
    if missing:
        raise FailedPreconditionError(
            f"the nats certificate {directory / 'nats.pem'} does not name {', '.join(missing)}, so TLS routes and "
            f"clients dialing there would refuse it; make the directory with them: `rollmesh certs init DIR "
            + " ".join(f"--host {h}" for h in missing)
            + "` (with --force to replace an existing one)",
            reason="NATS_CONFIG",
        )


def write_nats_config(
    directory: Path, members: Sequence[Member], *, publisher_apps: Sequence[str] = (), hosts: Sequence[str] = ()
) -> Path:
    """DIR/nats-auth.conf for the members of a directory made by pki.init; the nats-server
    certificate is DIR/nats.pem (issued here, naming `hosts` too: clients and cluster routes check
    a NATS server by the address they dial)."""
    from .pki import CertificateAuthority, Member, write_member

    ca = CertificateAuthority.load(directory)
    if not (directory / "nats.pem").exists():
        write_member(ca, directory, Member("nats", (), ("nats",)), hosts=hosts)
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
