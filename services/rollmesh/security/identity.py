"""Who a caller is: the common name and roles (organizational units) of its client certificate,
or the name and roles a bearer token was issued for. The same identity serves gRPC, HTTP and NATS."""

from __future__ import annotations

import functools
import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import InvalidArgumentError
from .roles import ROLES

ANONYMOUS_NAME = "anonymous"


@dataclass(frozen=True)
class Identity:
    name: str
    roles: frozenset[str]
    via: str  # "certificate", "token", or "none" (security off: every role)

    def __str__(self) -> str:
        return f"{self.name} ({self.via}; roles: {', '.join(sorted(self.roles)) or 'none'})"


# With security off (a loopback server without TLS) every caller may do everything, as before.
UNCHECKED = Identity(ANONYMOUS_NAME, frozenset(ROLES), "none")


@functools.lru_cache(maxsize=1024)
def identity_from_certificate(pem: bytes) -> Identity:
    """The identity a (TLS-verified) certificate names: CN = name, each OU = a role."""
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    name = str(cn[0].value) if cn else cert.subject.rfc4514_string()
    return Identity(name, frozenset(str(o.value) for o in ous if o.value in ROLES), "certificate")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Bearer tokens a server accepts, from a TOML file of hashes (the file holds no secret):

    [[token]]
    name = "grafana"
    roles = ["reader"]
    sha256 = "<hex of sha256(token)>"
    """

    def __init__(self, entries: dict[str, Identity]) -> None:
        self._by_hash = entries

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidArgumentError(f"cannot read the tokens file {path}: {e}", reason="INVALID_FIELD") from e
        entries = {}
        for i, t in enumerate(data.get("token", [])):
            try:
                name, roles, digest = str(t["name"]), [str(r) for r in t["roles"]], str(t["sha256"]).lower()
            except (KeyError, TypeError) as e:
                raise InvalidArgumentError(
                    f"{path}: token {i} needs name, roles and sha256", reason="INVALID_FIELD"
                ) from e
            unknown = set(roles) - set(ROLES)
            if unknown:
                raise InvalidArgumentError(
                    f"{path}: token {name!r} has unknown roles {sorted(unknown)}", reason="INVALID_FIELD"
                )
            entries[digest] = Identity(name, frozenset(roles), "token")
        return cls(entries)

    def identify(self, token: str) -> Identity | None:
        digest = hash_token(token)
        for known, identity in self._by_hash.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                return identity
        return None

    def __len__(self) -> int:
        return len(self._by_hash)
