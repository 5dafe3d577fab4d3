"""The OpenAI-compatible facade with TLS and caller checks: real certificates from a development CA
(security.pki), the facade on a scripted backend over HTTPS on loopback. /v1/ generates with the
served model, so it needs the orchestrator role, as Generate does over gRPC; /health stays open."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rollmesh.inference.backends.scripted import ScriptedBackend
from rollmesh.inference.core import InferenceCore
from rollmesh.inference.openai_api import start_http
from rollmesh.security import pki
from rollmesh.security.http_auth import HttpSite
from rollmesh.security.tls import TlsConfig
from security.clients import anonymous, as_member, bearer

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
async def core() -> AsyncIterator[InferenceCore]:
    core = InferenceCore(ScriptedBackend(["hello"], model="scripted"))
    yield core
    await core.backend.close()
    core.close()


@pytest.fixture(scope="module")
async def facade(core: InferenceCore, certs: Path) -> AsyncIterator[HttpSite]:
    site = await start_http(core, "127.0.0.1", 0, tls=pki.member_config(certs, "inference"))
    yield site
    await site.stop()


async def call(
    url: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http:
        method = (
            http.post(url, json=body, ssl=ctx, headers=headers) if body else http.get(url, ssl=ctx, headers=headers)
        )
        async with method as r:
            return r.status, dict(r.headers), await r.json()


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="rollmesh.audit")
    return caplog


def denials(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [
        (r.target, r.identity, r.reason)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "rollmesh.audit" and getattr(r, "audit", "") == "denied"
    ]


async def test_the_url_says_https(facade: HttpSite) -> None:
    assert facade.url == f"https://127.0.0.1:{facade.port}" and facade.address == f"127.0.0.1:{facade.port}"


async def test_the_orchestrator_certificate_may_generate(facade: HttpSite, certs: Path) -> None:
    ctx = as_member(certs, "orchestrator")
    status, _, models = await call(f"{facade.url}/v1/models", ctx)
    assert status == 200 and models["data"][0]["id"] == "scripted"
    status, _, done = await call(f"{facade.url}/v1/chat/completions", ctx, body=CHAT)
    assert status == 200 and done["choices"][0]["message"]["content"] == "hello"


async def test_the_operator_token_may_generate(facade: HttpSite, certs: Path) -> None:
    status, _, _ = await call(f"{facade.url}/v1/models", anonymous(certs), bearer(certs, "operator"))
    assert status == 200


async def test_no_credentials_is_401_and_audited(
    facade: HttpSite, certs: Path, audit: pytest.LogCaptureFixture
) -> None:
    status, headers, body = await call(f"{facade.url}/v1/models", anonymous(certs))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    # OpenAI clients read error.message and error.type
    assert body["error"]["code"] == 401 and body["error"]["reason"] == "NO_CREDENTIALS"
    assert body["error"]["type"] == "authentication_error" and body["error"]["message"]
    status, _, _ = await call(f"{facade.url}/v1/chat/completions", anonymous(certs), body=CHAT)
    assert status == 401
    assert denials(audit) == [
        ("/v1/models", "unknown", "NO_CREDENTIALS"),
        ("/v1/chat/completions", "unknown", "NO_CREDENTIALS"),
    ]


async def test_an_unknown_token_is_401(facade: HttpSite, certs: Path, audit: pytest.LogCaptureFixture) -> None:
    status, _, body = await call(f"{facade.url}/v1/models", anonymous(certs), {"Authorization": "Bearer sk-not-ours"})
    assert status == 401 and body["error"]["reason"] == "BAD_TOKEN"
    assert denials(audit) == [("/v1/models", "unknown", "BAD_TOKEN")]


async def test_a_reader_is_403_and_audited(facade: HttpSite, certs: Path, audit: pytest.LogCaptureFixture) -> None:
    for ctx, headers in ((as_member(certs, "reader"), None), (anonymous(certs), bearer(certs, "reader"))):
        status, headers_, body = await call(f"{facade.url}/v1/models", ctx, headers)
        assert status == 403 and body["error"]["reason"] == "MISSING_ROLE", body
        assert body["error"]["type"] == "permission_error" and "orchestrator" in body["error"]["message"]
        assert "WWW-Authenticate" not in headers_
    status, _, _ = await call(f"{facade.url}/v1/completions", as_member(certs, "reader"), body={"prompt": "x"})
    assert status == 403
    assert denials(audit) == [
        ("/v1/models", "reader", "MISSING_ROLE"),
        ("/v1/models", "reader", "MISSING_ROLE"),
        ("/v1/completions", "reader", "MISSING_ROLE"),
    ]


async def test_health_is_open(facade: HttpSite, certs: Path) -> None:
    status, _, body = await call(f"{facade.url}/health", anonymous(certs))
    assert status == 200 and body["status"] == "ok"


async def test_plain_http_to_the_https_port_fails(facade: HttpSite) -> None:
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(f"http://{facade.address}/health") as r:
            await r.read()


async def test_without_caller_checks_it_is_open_as_before(core: InferenceCore) -> None:
    site = await start_http(core, "127.0.0.1", 0, tls=TlsConfig())
    try:
        assert site.url.startswith("http://")
        async with aiohttp.ClientSession() as http, http.get(f"{site.url}/v1/models") as r:
            assert r.status == 200
    finally:
        await site.stop()
