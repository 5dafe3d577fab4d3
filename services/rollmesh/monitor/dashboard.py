"""The live scoring dashboard: an aiohttp app over a Scoreboard.

GET /                                   the page (static HTML/JS/CSS, no external assets)
GET /api/apps                           apps with counts and mean reward
GET /api/apps/{app}                     reward series, per-function distributions, latest traces
GET /api/apps/{app}/traces/{trace_id}   one trace's score and messages
GET /metrics                            Prometheus exposition
GET /healthz                            200 when serving (and live scoring, if configured), else 503

With TLS on (security.tls) it serves HTTPS; when it can tell who calls (a CA or a tokens file), every
path but /healthz needs the reader role (security.roles.HTTP_ROLES): the page, the API and /metrics
show production traces and scores. Browsers identify with a client certificate; scrapers and
proxies with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from ..security.http_auth import HttpSite, auth_middleware, start_site, url
from ..security.tls import TlsConfig, current
from .metrics import CONTENT_TYPE, LiveMetrics
from .scoreboard import Scoreboard

log = logging.getLogger(__name__)

STATIC = resources.files("rollmesh.monitor") / "dashboard_static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _static(name: str) -> tuple[bytes, str] | None:
    if "/" in name or name.startswith("."):
        return None
    path = STATIC / name
    if not path.is_file():
        return None
    suffix = name[name.rfind(".") :]
    return path.read_bytes(), _TYPES.get(suffix, "application/octet-stream")


class Dashboard:
    def __init__(
        self,
        board: Scoreboard,
        *,
        metrics: LiveMetrics | None = None,
        health: Callable[[], dict[str, Any]] = lambda: {"ok": True},
        host: str = "127.0.0.1",
        port: int = 8071,
        refresh_s: float = 2.0,
        title: str = "rollmesh live scores",
        tls: TlsConfig | None = None,
    ) -> None:
        """`tls` (default: the process's settings, security.tls.current()) turns on HTTPS and, with a
        CA or a tokens file, the role check of every request."""
        self.board = board
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self.refresh_s = refresh_s
        self.title = title
        self.tls = current() if tls is None else tls
        self.app = self._make_app()
        self._site: HttpSite | None = None

    def _make_app(self) -> web.Application:
        # Every route is behind the middleware, so none can show traces to a caller without the role.
        app = web.Application(middlewares=[auth_middleware(self.tls)])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/apps", self._apps)
        app.router.add_get("/api/apps/{app}", self._app)
        app.router.add_get("/api/apps/{app}/traces/{trace_id}", self._trace)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> Dashboard:
        self._site = await start_site(self.app, self.host, self.port, self.tls, what="the dashboard")
        self.port = self._site.port
        return self

    @property
    def url(self) -> str:
        return url(self.host, self.port, tls=self.tls.enabled)

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    # ---- handlers --------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        found = _static("index.html")
        assert found is not None, "dashboard_static/index.html is missing from the package"
        return web.Response(body=found[0], content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.Response:
        found = _static(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no static file {request.match_info['name']!r}")
        return web.Response(body=found[0], content_type=found[1])

    async def _apps(self, request: web.Request) -> web.Response:
        return web.json_response({"title": self.title, "refresh_s": self.refresh_s, "apps": self.board.apps()})

    async def _app(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        snapshot = self.board.snapshot(app)
        if snapshot is None:
            raise web.HTTPNotFound(text=f"no scores for app {app!r} yet")
        return web.json_response(snapshot)

    async def _trace(self, request: web.Request) -> web.Response:
        app, trace_id = request.match_info["app"], request.match_info["trace_id"]
        row = self.board.trace(app, trace_id)
        if row is None:
            raise web.HTTPNotFound(text=f"trace {trace_id!r} of {app!r} is not among the latest traces kept")
        return web.json_response(row)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition() if self.metrics is not None else b""
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self.health()
        return web.json_response(report, status=200 if report.get("ok") else 503)
