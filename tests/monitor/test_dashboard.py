"""The dashboard over HTTP and in a real headless Chromium, fed by traces scored live over NATS."""

from __future__ import annotations

import asyncio
import shutil
from html.parser import HTMLParser

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rollmesh import bus
from rollmesh.monitor.service import RubricService
from rollmesh.proto.v1 import bus_pb2

from .conftest import Collector, publish, service_config, traces, uid

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N = 12


@pytest.fixture(scope="module")
async def scored(nats_url: str):
    """A service (dashboard fed from the bus) that scored N traces of one app and dead-lettered one."""
    app = uid("dash")
    cfg = service_config({app: "rules"})
    cfg.dashboard.source = "bus"
    scores = await Collector(bus_pb2.MonitorScore).start(nats_url, bus.scores_subject(app))
    service = await RubricService(cfg, nats_url=nats_url).start()
    sent = traces(app, N)
    empty = bus_pb2.MonitorTrace(trace_id=f"{app}-empty", app=app)
    await publish(nats_url, [*sent, empty])
    got = {s.trace_id: s for s in await scores.wait_for(N)}
    for _ in range(100):
        snap = service.board.snapshot(app)
        if snap and snap["scored"] == N and snap["dead_lettered"]:
            break
        await asyncio.sleep(0.05)
    yield service, app, got
    await service.stop(1)
    await scores.close()


async def get(session: aiohttp.ClientSession, url: str, status: int = 200):
    async with session.get(url) as r:
        assert r.status == status, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.text()


async def test_json_api_metrics_and_health(scored) -> None:
    service, app, got = scored
    base = service.dashboard.url
    async with aiohttp.ClientSession() as http:
        apps = (await get(http, f"{base}/api/apps"))["apps"]
        mine = next(a for a in apps if a["app"] == app)
        assert mine["scored"] == N and mine["dead_lettered"] == 1
        assert mine["mean_reward"] == pytest.approx(sum(s.reward for s in got.values()) / N)
        snap = await get(http, f"{base}/api/apps/{app}")
        assert {r["trace_id"] for r in snap["recent"]} == set(got)
        assert (
            set(snap["functions"]) == {"correct", "polite", "length"}
            and snap["functions"]["length"]["kind"] == "metric"
        )
        assert sum(p["n"] for p in snap["series"]) == N and snap["dead_lettered"] == {"NO_MESSAGES": 1}
        trace_id = f"{app}-3"
        one = await get(http, f"{base}/api/apps/{app}/traces/{trace_id}")
        assert one["reward"] == got[trace_id].reward and one["labels"] == {"i": "3"}
        assert [m["role"] for m in one["messages"]] == ["user", "assistant"] and "3 + 1" in one["messages"][0][
            "content"
        ]
        await get(http, f"{base}/api/apps/nope", status=404)
        await get(http, f"{base}/api/apps/{app}/traces/nope", status=404)
        await get(http, f"{base}/static/..%2Fservice.py", status=404)
        health = await get(http, f"{base}/healthz")
        assert health["ok"] is True and health["live_scoring"]["scored"] == N
        text = await get(http, f"{base}/metrics")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("rollmesh_monitor_traces_scored_total", (("app", app), ("rubric", "rules")))] == N
    assert values[("rollmesh_monitor_traces_dead_lettered_total", (("app", app), ("reason", "NO_MESSAGES")))] == 1
    assert values[("rollmesh_monitor_score_latency_seconds_count", (("app", app),))] == N
    assert (
        values[("rollmesh_monitor_function_value_bucket", (("app", app), ("function", "correct"), ("le", "+Inf")))] == N
    )
    assert values[("rollmesh_monitor_in_flight", ())] == 0


class Dom(HTMLParser):
    """The elements the test looks for in Chromium's rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.apps: list[str] = []
        self.points = 0
        self.bars = 0
        self.rows: dict[str, list[str]] = {}
        self.messages: list[str] = []
        self.dead: list[str] = []
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._message = False
        self._table = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "button" and "data-app" in a:
            self.apps.append(a["data-app"])
        elif tag == "circle" and "point" in cls:
            self.points += 1
        elif tag == "rect" and "bar" in cls:
            self.bars += 1
        elif tag == "table":
            self._table = a.get("id", "")
        elif tag == "tr" and "trace" in cls:
            self._row = a["data-trace-id"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "div" and "message" in cls:
            self._message = True
            self.messages.append("")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "div":
            self._message = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._message:
            self.messages[-1] += data
        if self._table == "dead-letters" and data.strip():
            self.dead.append(data.strip())


async def render(url: str) -> Dom:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=8000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0
    dom = Dom()
    dom.feed(out.decode())
    return dom


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package `chromium`)")
async def test_page_renders_live_scores_in_chromium(scored) -> None:
    service, app, got = scored
    opened = f"{app}-5"
    dom = await render(f"{service.dashboard.url}/?app={app}&trace={opened}")
    assert app in dom.apps
    assert dom.points >= 1  # one point per time bucket of the reward chart
    assert dom.bars >= 3 * 10  # a histogram per function
    assert set(dom.rows) == set(got)
    for trace_id, cells in dom.rows.items():
        assert cells[1] == trace_id and cells[2] == f"{got[trace_id].reward:.3f}", cells
        assert "correct=" in cells[3] and "length=" in cells[3]
    assert any("5 + 1" in m for m in dom.messages) and any(
        "Thanks for asking: 7" in m for m in dom.messages
    )  # trace 5: a wrong answer
    assert "NO_MESSAGES" in dom.dead


async def test_messages_can_be_kept_off_the_dashboard(nats_url: str) -> None:
    app = uid("private")
    cfg = service_config({app: "rules"})
    cfg.dashboard.show_messages = False
    service = await RubricService(cfg, nats_url=nats_url).start()
    try:
        await publish(nats_url, traces(app, 1))
        for _ in range(200):
            if service.live.stats.scored:
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            row = await get(http, f"{service.dashboard.url}/api/apps/{app}/traces/{app}-0")
        assert row["messages"] == [] and row["has_messages"] is False and row["reward"] == 1.5
    finally:
        await service.stop(1)
