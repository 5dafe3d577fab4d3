"""The dashboard with TLS and caller checks: real certificates from a development CA (security.pki),
a real HTTPS server on loopback, and aiohttp clients that present a certificate, a bearer token or
nothing. Every path but /healthz shows production data, so each needs the reader role."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rollmesh.monitor.dashboard import Dashboard
from rollmesh.monitor.metrics import LiveMetrics
from rollmesh.monitor.scoreboard import Scoreboard, keep_messages
from rollmesh.monitor.traces import make_trace
from rollmesh.proto.v1 import bus_pb2
from rollmesh.security import pki
from rollmesh.security.authorize import caller
from rollmesh.security.http_auth import auth_middleware, start_site
from rollmesh.security.tls import TlsConfig
from security.clients import anonymous, as_member, bearer
from yarl import URL

APP = "support-bot"
TRACE = "trace-1"
SECRET = "my card number is 4111"  # production message content: only readers may see it
DATA_PATHS = ["/", "/static/dashboard.js", "/api/apps", f"/api/apps/{APP}", f"/api/apps/{APP}/traces/{TRACE}"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pki.init(tmp_path_factory.mktemp("pki"))


def board() -> Scoreboard:
    b = Scoreboard()
    trace = make_trace(APP, [{"role": "user", "content": SECRET}, {"role": "assistant", "content": "ok"}])
    b.add_score(
        bus_pb2.MonitorScore(trace_id=TRACE, app=APP, rubric="rules", reward=1.0, rewards={"correct": 1.0}),
        keep_messages(trace.messages, trace.ByteSize()),
    )
    return b


@pytest.fixture(scope="module")
async def dashboard(certs: Path) -> AsyncIterator[Dashboard]:
    # The rubric service's certificate: the dashboard runs in that process.
    dash = await Dashboard(board(), metrics=LiveMetrics(), port=0, tls=pki.member_config(certs, "rubric")).start()
    yield dash
    await dash.stop()


async def fetch(
    url: str | URL, ctx: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx, headers=headers or {}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, dict(r.headers), body


def denials(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rollmesh.audit" and getattr(r, "audit", "") == "denied"]


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="rollmesh.audit")
    return caplog


async def test_the_url_says_https(dashboard: Dashboard) -> None:
    assert dashboard.url == f"https://127.0.0.1:{dashboard.port}"


@pytest.mark.parametrize("path", [*DATA_PATHS, "/metrics", "/no-such-page"])
async def test_no_credentials_is_401_and_audited(
    dashboard: Dashboard, certs: Path, audit: pytest.LogCaptureFixture, path: str
) -> None:
    status, headers, body = await fetch(dashboard.url + path, anonymous(certs))
    assert status == 401, body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["error"]["code"] == 401 and body["error"]["reason"] == "NO_CREDENTIALS"
    assert SECRET not in str(body)
    [line] = denials(audit)
    assert line.reason == "NO_CREDENTIALS" and line.identity == "unknown"  # type: ignore[attr-defined]
    assert line.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]


@pytest.mark.parametrize("token", ["not-a-token", "x" * 600])
async def test_an_unknown_token_is_401(
    dashboard: Dashboard, certs: Path, audit: pytest.LogCaptureFixture, token: str
) -> None:
    status, headers, body = await fetch(
        f"{dashboard.url}/metrics", anonymous(certs), {"Authorization": f"Bearer {token}"}
    )
    assert status == 401 and body["error"]["reason"] == "BAD_TOKEN"
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert [r.reason for r in denials(audit)] == ["BAD_TOKEN"]  # type: ignore[attr-defined]


async def test_a_token_that_is_not_utf8_is_401_not_500(dashboard: Dashboard, certs: Path) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", dashboard.port, ssl=anonymous(certs))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 401 "), response[:200]
    assert b"BAD_TOKEN" in response


async def test_basic_auth_is_no_credentials(dashboard: Dashboard, certs: Path) -> None:
    status, _, body = await fetch(f"{dashboard.url}/metrics", anonymous(certs), {"Authorization": "Basic dTpw"})
    assert status == 401 and body["error"]["reason"] == "NO_CREDENTIALS"


@pytest.mark.parametrize("name", ["publisher", "orchestrator"])
async def test_a_known_caller_without_the_reader_role_is_403(
    dashboard: Dashboard, certs: Path, audit: pytest.LogCaptureFixture, name: str
) -> None:
    # publisher by its token, orchestrator (no token) by its certificate
    if name == "publisher":
        ctx, headers = anonymous(certs), bearer(certs, name)
    else:
        ctx, headers = as_member(certs, name), {}
    for path in ["/metrics", f"/api/apps/{APP}/traces/{TRACE}"]:
        status, headers_, body = await fetch(dashboard.url + path, ctx, headers)
        assert status == 403 and body["error"]["reason"] == "MISSING_ROLE", body
        assert "reader" in body["error"]["message"] and SECRET not in str(body)
        assert "WWW-Authenticate" not in headers_
    assert [(r.identity, r.reason) for r in denials(audit)] == [(name, "MISSING_ROLE")] * 2  # type: ignore[attr-defined]


async def check_reads(dashboard: Dashboard, ctx: ssl.SSLContext, headers: dict[str, str] | None = None) -> None:
    for path in DATA_PATHS:
        status, _, body = await fetch(dashboard.url + path, ctx, headers)
        assert status == 200, (path, body)
    _, _, row = await fetch(f"{dashboard.url}/api/apps/{APP}/traces/{TRACE}", ctx, headers)
    assert row["messages"][0]["content"] == SECRET
    status, headers_, text = await fetch(f"{dashboard.url}/metrics", ctx, headers)
    assert status == 200 and headers_["Content-Type"].startswith("text/plain") and "rollmesh_" in text


async def test_the_reader_token_reads_everything(dashboard: Dashboard, certs: Path) -> None:
    await check_reads(dashboard, anonymous(certs), bearer(certs, "reader"))


async def test_the_reader_certificate_reads_everything(dashboard: Dashboard, certs: Path) -> None:
    await check_reads(dashboard, as_member(certs, "reader"))


async def test_the_operator_may_do_everything(dashboard: Dashboard, certs: Path) -> None:
    await check_reads(dashboard, anonymous(certs), bearer(certs, "operator"))
    await check_reads(dashboard, as_member(certs, "operator"))


async def test_healthz_is_open(dashboard: Dashboard, certs: Path) -> None:
    status, _, body = await fetch(f"{dashboard.url}/healthz", anonymous(certs))
    assert status == 200 and body == {"ok": True}


@pytest.mark.parametrize(
    "raw", ["/healthz/../metrics", "/healthz/%2e%2e/api/apps", "/healthz%2F..%2Fmetrics", "//metrics", "/HEALTHZ"]
)
async def test_paths_near_healthz_show_no_data(dashboard: Dashboard, certs: Path, raw: str) -> None:
    # The check reads the path the router matched: tricks on the open prefix reach no handler.
    status, _, body = await fetch(URL(dashboard.url + raw, encoded=True), anonymous(certs))
    assert status in (401, 404), (status, body)
    assert "rollmesh_" not in str(body) and APP not in str(body)


async def test_plain_http_to_the_https_port_fails(dashboard: Dashboard) -> None:
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{dashboard.port}/healthz") as r:
            await r.read()


async def test_a_certificate_from_another_ca_is_refused(dashboard: Dashboard, certs: Path, tmp_path: Path) -> None:
    other = pki.init(tmp_path / "other")
    ctx = TlsConfig(cert=str(other / "reader.pem"), key=str(other / "reader-key.pem"), ca=str(certs / "ca.pem"))
    with pytest.raises(aiohttp.ClientError):  # the handshake fails: the server verifies offered certificates
        await fetch(f"{dashboard.url}/metrics", ctx.client_ssl_context())


async def test_without_caller_checks_everything_is_open(certs: Path) -> None:
    # No CA and no tokens file: the server cannot tell who calls, so (as before) it does not ask.
    plain = await Dashboard(board(), port=0, tls=TlsConfig()).start()
    tls_only = await Dashboard(
        board(), port=0, tls=TlsConfig(cert=str(certs / "rubric.pem"), key=str(certs / "rubric-key.pem"))
    ).start()
    try:
        assert plain.url.startswith("http://") and tls_only.url.startswith("https://")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{plain.url}/api/apps/{APP}/traces/{TRACE}") as r:
                assert r.status == 200
            async with http.get(f"{tls_only.url}/metrics", ssl=anonymous(certs)) as r:
                assert r.status == 200
    finally:
        await plain.stop()
        await tls_only.stop()


async def test_handlers_see_the_caller(certs: Path) -> None:
    async def whoami(request: web.Request) -> web.Response:
        me = caller()
        return web.json_response({"name": me.name, "via": me.via, "roles": sorted(me.roles)})

    app = web.Application(middlewares=[auth_middleware(pki.member_config(certs, "rubric"))])
    app.router.add_get("/whoami", whoami)
    site = await start_site(app, "127.0.0.1", 0, pki.member_config(certs, "rubric"))
    try:
        _, _, by_token = await fetch(f"{site.url}/whoami", anonymous(certs), bearer(certs, "reader"))
        _, _, by_cert = await fetch(f"{site.url}/whoami", as_member(certs, "operator"))
    finally:
        await site.stop()
    assert by_token == {"name": "reader", "via": "token", "roles": ["reader"]}
    assert by_cert == {"name": "operator", "via": "certificate", "roles": ["operator"]}


async def test_a_rotated_certificate_is_served_to_new_connections(certs: Path, tmp_path: Path) -> None:
    for name in ("ca.pem", "tokens.toml", "rubric.pem", "rubric-key.pem"):
        shutil.copy(certs / name, tmp_path / name)
    config = pki.member_config(tmp_path, "rubric")
    dash = await Dashboard(board(), port=0, tls=config).start()

    async def served_certificate() -> bytes:
        _, writer = await asyncio.open_connection("127.0.0.1", dash.port, ssl=anonymous(certs))
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return der

    def on_disk() -> bytes:
        return ssl.PEM_cert_to_DER_cert((tmp_path / "rubric.pem").read_text())

    try:
        first = on_disk()
        assert await served_certificate() == first
        rubric = next(m for m in pki.MESH if m.name == "rubric")
        cert, key = pki.CertificateAuthority.load(certs).issue(rubric)  # same CA, new key
        (tmp_path / "rubric.pem").write_bytes(cert)
        # Half way (the new certificate, the old key): the server keeps serving the old pair.
        assert await served_certificate() == first
        (tmp_path / "rubric-key.pem").write_bytes(key)
        assert on_disk() != first
        assert await served_certificate() == on_disk()
        status, _, _ = await fetch(f"{dash.url}/metrics", anonymous(certs), bearer(certs, "reader"))
        assert status == 200
    finally:
        await dash.stop()
