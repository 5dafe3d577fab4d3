"""The HTTP side of the security layer, shared by every aiohttp endpoint (the OpenAI facade, the
dashboard and /metrics): a middleware that identifies each caller (a verified client certificate,
else `Authorization: Bearer <token>`) and checks its roles against roles.HTTP_ROLES, and a helper
that starts an app over HTTPS when TLS is on, so every endpoint starts, and names its URL, alike.

    app = web.Application(middlewares=[auth_middleware(config)])
    site = await start_site(app, host, port, config)   # site.url: https://host:port with TLS

Refusals: 401 (no or unknown credentials, with `WWW-Authenticate: Bearer`) and 403 (known, without
the role), each with a JSON body {"error": {"code", "reason", "message", "type"}} and one audit line
(logger rollmesh.audit). A config that does not authenticate (no CA, no tokens file) lets every
call through, as a loopback development server always has."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..errors import PermissionDeniedError, UnauthenticatedError
from . import roles
from .authorize import Authorizer, set_caller
from .tls import TlsConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Policy = Callable[[str], frozenset[str] | None]

MAX_TARGET_CHARS = 256  # an unrouted path is client input: bounded in the audit log


def _target(request: web.Request) -> str:
    """What the policy decides on: the pattern of the route that will serve the request (the router
    has already matched it), so the check and the routing cannot read one path two ways. A request
    that matched no route runs no handler (404/405); its raw, percent-encoded path is used."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is not None:
        return resource.canonical
    return request.rel_url.raw_path[:MAX_TARGET_CHARS]


def _certificates(request: web.Request) -> list[bytes]:
    """The client certificate (PEM) the TLS handshake verified against the CA, if one was offered."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return [ssl.DER_cert_to_PEM_cert(der).encode()] if der else []


def _peer(request: web.Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return request.remote or "unknown"


def _authorization(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    # aiohttp keeps undecodable header bytes as surrogates, which cannot be hashed: such a value is
    # no token this server issued, so it becomes one that fails as BAD_TOKEN rather than a 500.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def refusal(error: UnauthenticatedError | PermissionDeniedError) -> web.Response:
    """The 401 or 403 response for a refused call."""
    status = 401 if isinstance(error, UnauthenticatedError) else 403
    body = {
        "error": {
            "code": status,
            "reason": error.reason,
            "message": str(error),
            # OpenAI clients read error.type; the facade answers in its shape too.
            "type": "authentication_error" if status == 401 else "permission_error",
        }
    }
    headers = {}
    if status == 401:  # RFC 6750: how to authenticate, and that a token sent was not accepted
        invalid = ', error="invalid_token"' if error.reason == "BAD_TOKEN" else ""
        headers["WWW-Authenticate"] = f'Bearer realm="rollmesh"{invalid}'
    return web.json_response(body, status=status, headers=headers)


def auth_middleware(config: TlsConfig, policy: Policy = roles.http_required_roles) -> Middleware:
    """Identifies the caller of each request and checks its roles before any handler runs; the
    handler sees the identity as authorize.caller(). Reads the tokens file now (a bad file fails at
    start, not at the first call)."""
    authorizer = Authorizer(config, policy)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not authorizer.enabled:
            return await handler(request)
        try:
            identity = authorizer.check(
                _target(request), _certificates(request), _authorization(request), _peer(request)
            )
        except (UnauthenticatedError, PermissionDeniedError) as e:
            return refusal(e)
        token = set_caller(identity)
        try:
            return await handler(request)
        finally:
            # Keep-alive requests share the connection's task: the next one must not inherit this caller.
            token.var.reset(token)

    return authenticate


# ---- serving --------------------------------------------------------------------------------------


def url(host: str, port: int, *, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def _files_stamp(config: TlsConfig) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in (config.cert, config.key, config.ca):
        if path:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def reloading_ssl_context(config: TlsConfig) -> ssl.SSLContext:
    """config.server_ssl_context() that rereads the certificate, key and CA when they change
    (checked at each new handshake), as the gRPC servers do: rotating a certificate is replacing
    its files. A half-written pair (cert replaced, key not yet) keeps the current one until both load."""
    first = config.server_ssl_context()
    latest, stamp = first, _files_stamp(config)

    def on_client_hello(ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # Every handshake starts on `first` (the server's context); this moves it to the latest.
        nonlocal latest, stamp
        try:
            now = _files_stamp(config)
            if now != stamp:
                latest, stamp = config.server_ssl_context(), now
                log.info("TLS certificate reloaded from %s", config.cert)
        except Exception:  # failing the handshake would lock every caller out: serve the current one
            log.exception("could not reload the TLS certificate; keeping the current one")
        if latest is not first:
            ssl_object.context = latest

    first.sni_callback = on_client_hello  # type: ignore[assignment]
    return first


@dataclass
class HttpSite:
    runner: web.AppRunner
    host: str
    port: int
    tls: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return url(self.host, self.port, tls=self.tls)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_site(
    app: web.Application, host: str, port: int, config: TlsConfig, *, what: str = "the HTTP endpoint"
) -> HttpSite:
    """Serves `app` on host:port (0 = a free port), over HTTPS when `config` has TLS on. Raises
    RuntimeError when the address cannot be bound, InvalidArgumentError for unusable TLS settings."""
    config.validate(server=True)
    ssl_context = reloading_ssl_context(config) if config.enabled else None
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise RuntimeError(f"{what} cannot listen on {host}:{port}: {e}") from e
    bound = runner.addresses[0][1] if runner.addresses else port
    return HttpSite(runner, host, bound, ssl_context is not None)
