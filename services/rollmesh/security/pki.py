"""A development certificate authority: `rollmesh certs init DIR` makes a CA and one certificate per
identity of the mesh (CN = the identity, one OU per role; server certificates name their service
kind, see tls.server_name), a tokens file, and a nats-server authorization file that maps each
certificate to a NATS user with its role's permissions. The local mesh makes one on first use.

For production, issue the same shape of certificates from your own CA (cert-manager, Vault, ...)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import roles as R
from .identity import hash_token
from .tls import TlsConfig, server_name

ORGANIZATION = "rollmesh"


@dataclass(frozen=True)
class Member:
    """One identity of the mesh: its name, roles, and (for servers) the service kinds it serves."""

    name: str
    roles: tuple[str, ...]
    serves: tuple[str, ...] = ()


# The local mesh's identities. The rubric service also calls judges (Generate) and environments'
# Score, so it is an orchestrator too.
MESH: tuple[Member, ...] = (
    Member("env", (R.SERVER,), ("env",)),
    Member("inference", (R.SERVER,), ("inference",)),
    Member("rubric", (R.SERVER, R.ORCHESTRATOR), ("rubric",)),
    Member("orchestrator", (R.ORCHESTRATOR,)),
    Member("trainer", (R.TRAINER,)),
    Member("publisher", (R.PUBLISHER,)),
    Member("reader", (R.READER,)),
    Member("operator", (R.OPERATOR,)),
)
TOKEN_MEMBERS = ("reader", "publisher", "operator")  # also get a bearer token (HTTP, scrapers)


def _name(common_name: str, role_list: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in role_list]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, *, days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("rollmesh development CA")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()))

    def save(self, directory: Path) -> None:
        (directory / "ca.pem").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_private(directory / "ca-key.pem", _key_pem(self.key))

    def issue(
        self,
        member: Member,
        *,
        hosts: Sequence[str] = (),
        days: int = 825,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `member`. Servers get their kinds' names and `hosts`
        (names or IP addresses) as subject alternative names, and may also act as clients."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(member.name, member.roles))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if member.serves:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = [x509.DNSName(server_name(k)) for k in member.serves]
            for host in ("localhost", "127.0.0.1", "::1", *hosts):
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def member_config(directory: str | Path, name: str) -> TlsConfig:
    """The TLS settings of identity `name` from a directory made by init()."""
    d = Path(directory)
    tokens = d / "tokens.toml"
    return TlsConfig(
        cert=str(d / f"{name}.pem"),
        key=str(d / f"{name}-key.pem"),
        ca=str(d / "ca.pem"),
        tokens_file=str(tokens) if tokens.exists() else "",
    )


def write_member(ca: CertificateAuthority, directory: Path, member: Member, **kwargs: object) -> TlsConfig:
    cert, key = ca.issue(member, **kwargs)  # type: ignore[arg-type]
    (directory / f"{member.name}.pem").write_bytes(cert)
    _write_private(directory / f"{member.name}-key.pem", key)
    return member_config(directory, member.name)


def init(
    directory: str | Path,
    *,
    hosts: Sequence[str] = (),
    members: Sequence[Member] = MESH,
    publisher_apps: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """Make (or, without `force`, keep) a CA and a certificate per member in `directory`."""
    d = Path(directory)
    if (d / "ca.pem").exists() and not force:
        return d
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca = CertificateAuthority.create()
    ca.save(d)
    for member in members:
        write_member(ca, d, member, hosts=hosts)
    tokens = []
    for name in TOKEN_MEMBERS:
        member = next((m for m in members if m.name == name), None)
        if member is None:
            continue
        token = secrets.token_urlsafe(32)
        _write_private(d / f"{name}.token", token.encode())
        roles = ", ".join(f'"{r}"' for r in member.roles)
        tokens.append(f'[[token]]\nname = "{name}"\nroles = [{roles}]\nsha256 = "{hash_token(token)}"\n')
    (d / "tokens.toml").write_text("\n".join(tokens))
    from .nats_auth import write_nats_config

    write_nats_config(d, members, publisher_apps=publisher_apps, hosts=hosts)
    return d


def sibling(config: TlsConfig, name: str) -> TlsConfig | None:
    """The TLS settings of identity `name` from the directory that holds `config`'s CA, when it is
    one made by init() (a process that starts a server for itself, e.g. eval's local model)."""
    if not config.ca:
        return None
    d = Path(config.ca).parent
    if not ((d / f"{name}.pem").exists() and (d / f"{name}-key.pem").exists()):
        return None
    return member_config(d, name)


def add_token(directory: str | Path, name: str, roles: Sequence[str]) -> str:
    """A new bearer token for `name` with `roles`: its hash appended to DIR/tokens.toml (servers
    reading that file accept it after a restart); returns the secret, which is stored nowhere."""
    unknown = set(roles) - set(R.ROLES)
    if unknown or not roles:
        raise ValueError(f"roles must be among {', '.join(R.ROLES)}; got {sorted(unknown) or 'none'}")
    token = secrets.token_urlsafe(32)
    quoted_roles = ", ".join(f'"{r}"' for r in roles)
    path = Path(directory) / "tokens.toml"
    with path.open("a") as f:
        f.write(f'\n[[token]]\nname = "{name}"\nroles = [{quoted_roles}]\nsha256 = "{hash_token(token)}"\n')
    return token
