"""The check every server runs before a call does anything: who is calling (certificate or bearer
token), and whether one of its roles may call this method. Refusals are UNAUTHENTICATED (no or
unknown credentials) or PERMISSION_DENIED (known, not allowed), and each is one audit log line with
the identity, the method, the peer and the reason. Privileged calls that are allowed are logged too."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable

from ..errors import PermissionDeniedError, UnauthenticatedError, quoted
from .identity import UNCHECKED, Identity, TokenStore, identity_from_certificate
from .roles import OPERATOR, TRAINER, allows
from .tls import TlsConfig

audit = logging.getLogger("rollmesh.audit")

_caller: contextvars.ContextVar[Identity] = contextvars.ContextVar("rollmesh_caller", default=UNCHECKED)

MAX_TOKEN_CHARS = 512


def caller() -> Identity:
    """The identity of the call being served (UNCHECKED when the server does not authenticate)."""
    return _caller.get()


def set_caller(identity: Identity) -> contextvars.Token[Identity]:
    return _caller.set(identity)


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Authorizer:
    """Identifies callers and checks roles against `policy` (a path or method -> roles function)."""

    def __init__(self, config: TlsConfig, policy: Callable[[str], frozenset[str] | None]) -> None:
        self.enabled = config.authenticates
        self.tokens = TokenStore.load(config.tokens_file) if config.tokens_file else None
        self.policy = policy

    def identify(self, certificates: Iterable[bytes], authorization: str | None) -> Identity | None:
        pem = next(iter(certificates), None)  # the peer's, verified by the TLS handshake against the CA
        if pem is not None:
            return identity_from_certificate(pem)
        token = bearer(authorization)
        if token is None:
            return None
        if len(token) > MAX_TOKEN_CHARS or self.tokens is None:
            raise UnauthenticatedError("the bearer token is not one this server accepts", reason="BAD_TOKEN")
        identity = self.tokens.identify(token)
        if identity is None:
            raise UnauthenticatedError("the bearer token is not one this server accepts", reason="BAD_TOKEN")
        return identity

    def check(self, target: str, certificates: Iterable[bytes], authorization: str | None, peer: str) -> Identity:
        """The caller's identity if it may call `target`; raises the refusal otherwise (logged)."""
        if not self.enabled:
            return UNCHECKED
        required = self.policy(target)
        try:
            identity = self.identify(certificates, authorization)
        except UnauthenticatedError as e:
            self._deny(target, peer, None, e.reason)
            raise
        if required is not None and not required:  # open (health)
            return identity or UNCHECKED
        if identity is None:
            self._deny(target, peer, None, "NO_CREDENTIALS")
            raise UnauthenticatedError(
                f"{target} needs credentials: a client certificate or a bearer token", reason="NO_CREDENTIALS"
            )
        if not allows(identity.roles, required):
            needed = sorted(required or {OPERATOR})
            self._deny(target, peer, identity, "MISSING_ROLE")
            raise PermissionDeniedError(
                f"{quoted(identity.name, 64)} may not call {target}: it needs one of the roles {', '.join(needed)}",
                reason="MISSING_ROLE",
                metadata={"identity": identity.name, "required": ",".join(needed)},
            )
        if required is not None and required <= {TRAINER}:
            audit.info(
                "access granted: %s %s by %s from %s",
                target,
                identity.via,
                identity.name,
                peer,
                extra={"audit": "granted", "target": target, "identity": identity.name, "peer": peer},
            )
        return identity

    @staticmethod
    def _deny(target: str, peer: str, identity: Identity | None, reason: str) -> None:
        who = identity.name if identity else "unknown"
        audit.warning(
            "access denied: %s by %s from %s (%s)",
            target,
            who,
            peer,
            reason,
            extra={"audit": "denied", "target": target, "identity": who, "peer": peer, "reason": reason},
        )
