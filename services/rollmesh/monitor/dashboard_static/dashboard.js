// rollmesh live scores: polls the JSON API and draws with plain DOM + SVG (no external assets).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// ?app=NAME selects an app; ?trace=ID (repeatable) opens those traces' messages.
const params = new URLSearchParams(location.search);
const state = { app: params.get("app"), refreshMs: 2000, open: new Set(params.getAll("trace")), timer: null };

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
const time = (s) => new Date(s * 1000).toLocaleTimeString();

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

function renderApps(apps) {
  const nav = document.getElementById("app-list");
  nav.replaceChildren(
    ...apps.map((a) => {
      const b = el("button", { "data-app": a.app, type: "button" }, a.app);
      if (a.app === state.app) b.classList.add("active");
      b.addEventListener("click", () => {
        state.app = a.app;
        state.open.clear();
        history.replaceState(null, "", `?app=${encodeURIComponent(a.app)}`);
        refresh();
      });
      return b;
    }),
  );
}

function renderChart(snap) {
  const box = document.getElementById("reward-chart");
  const W = 900, H = 240, L = 44, R = 12, T = 12, B = 26;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const series = snap.series;
  const t1 = Math.max(snap.now, ...series.map((p) => p.t + snap.bucket_s));
  const t0 = series.length ? Math.min(series[0].t, t1 - snap.bucket_s) : t1 - snap.history_s;
  let lo = Math.min(0, ...series.map((p) => p.min));
  let hi = Math.max(1, ...series.map((p) => p.max));
  if (hi === lo) hi = lo + 1;
  const x = (t) => L + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  root.append(svg("line", { class: "axis", x1: L, y1: y(lo), x2: W - R, y2: y(lo) }));
  root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [lo, (lo + hi) / 2, hi]) root.append(svg("text", { x: 4, y: y(v) + 4 }, fmt(v, 2)));
  root.append(svg("text", { x: L, y: H - 6 }, time(t0)));
  root.append(svg("text", { x: W - R - 60, y: H - 6 }, time(t1)));
  const mid = (p) => p.t + snap.bucket_s / 2;
  if (series.length) {
    const band = series.map((p) => `${x(mid(p))},${y(p.max)}`).concat(series.slice().reverse().map((p) => `${x(mid(p))},${y(p.min)}`));
    root.append(svg("polygon", { class: "band", points: band.join(" ") }));
    root.append(svg("polyline", { class: "line", points: series.map((p) => `${x(mid(p))},${y(p.mean)}`).join(" ") }));
    for (const p of series) {
      const c = svg("circle", { class: "point", cx: x(mid(p)), cy: y(p.mean), r: 3, "data-mean": fmt(p.mean), "data-n": p.n });
      c.append(svg("title", {}, `${time(p.t)}: mean ${fmt(p.mean)} over ${p.n} traces (min ${fmt(p.min)}, max ${fmt(p.max)})`));
      root.append(c);
    }
  }
  box.replaceChildren(root);
  document.getElementById("chart-caption").textContent =
    `(mean per ${snap.bucket_s} s, band = min–max, last ${Math.round(snap.history_s / 60)} min)`;
}

function renderFunctions(snap) {
  const box = document.getElementById("functions");
  box.replaceChildren(
    ...Object.entries(snap.functions).map(([name, f]) => {
      const card = el("div", { class: `function ${f.kind}`, "data-function": name });
      card.append(el("h3", {}, name));
      card.append(el("div", { class: "muted" }, `${f.kind} · mean ${fmt(f.mean)} · n ${f.n}` + (f.errors ? ` · ${f.errors} errors` : "")));
      const W = 260, H = 90, B = 14;
      const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
      const counts = f.histogram.counts, edges = f.histogram.edges;
      const top = Math.max(1, ...counts);
      const w = (W - 4) / Math.max(1, counts.length);
      counts.forEach((c, i) => {
        const h = (c / top) * (H - B - 4);
        const bar = svg("rect", { class: "bar", x: 2 + i * w + 1, y: H - B - h, width: Math.max(1, w - 2), height: h, "data-count": c });
        bar.append(svg("title", {}, `[${fmt(edges[i], 2)}, ${fmt(edges[i + 1], 2)}): ${c}`));
        root.append(bar);
      });
      if (edges.length) {
        root.append(svg("text", { x: 2, y: H - 2 }, fmt(edges[0], 2)));
        root.append(svg("text", { x: W - 30, y: H - 2 }, fmt(edges[edges.length - 1], 2)));
      }
      card.append(root);
      return card;
    }),
  );
}

function functionsText(row) {
  const parts = Object.entries(row.rewards).map(([k, v]) => `${k}=${fmt(v)}`);
  for (const [k, v] of Object.entries(row.metrics)) parts.push(`${k}=${fmt(v)} (metric)`);
  return parts.join("  ");
}

async function toggle(row, tr) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("messages")) {
    next.remove();
    state.open.delete(row.trace_id);
    return;
  }
  state.open.add(row.trace_id);
  const detail = el("tr", { class: "messages", "data-trace-id": row.trace_id });
  const td = el("td", { colspan: 6 });
  detail.append(td);
  tr.after(detail);
  try {
    const full = await getJSON(`/api/apps/${encodeURIComponent(state.app)}/traces/${encodeURIComponent(row.trace_id)}`);
    if (!full.messages || !full.messages.length) td.append(el("div", { class: "muted" }, "messages were kept by the replica that scored this trace"));
    for (const m of full.messages || []) {
      const div = el("div", { class: "message" });
      div.append(el("span", { class: "role" }, m.role), document.createTextNode(m.content || ""));
      for (const c of m.tool_calls || []) div.append(el("div", { class: "muted" }, `tool call ${c.function.name}(${c.function.arguments})`));
      td.append(div);
    }
    const labels = Object.entries(full.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    if (labels) td.append(el("div", { class: "muted" }, `labels: ${labels}`));
  } catch (e) {
    td.append(el("div", { class: "error" }, String(e)));
  }
}

function renderTraces(snap) {
  const body = document.querySelector("#traces tbody");
  const rows = [];
  for (const row of snap.recent) {
    const tr = el("tr", { class: "trace", "data-trace-id": row.trace_id });
    tr.append(
      el("td", {}, time(row.scored_at)),
      el("td", { class: "trace-id" }, row.trace_id),
      el("td", { class: "reward" }, fmt(row.reward)),
      el("td", { class: "functions" }, functionsText(row)),
      el("td", { class: "errors" }, Object.entries(row.errors).map(([k, v]) => `${k}: ${v}`).join("; ")),
      el("td", {}, `${fmt(row.latency_s * 1000, 0)} ms`),
    );
    tr.addEventListener("click", () => toggle(row, tr));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  for (const tr of rows) if (state.open.has(tr.dataset.traceId)) { state.open.delete(tr.dataset.traceId); tr.click(); }
}

function renderDeadLetters(snap) {
  const body = document.querySelector("#dead-letters tbody");
  body.replaceChildren(
    ...snap.recent_dead_letters.map((d) => {
      const tr = el("tr", { class: "dead-letter" });
      tr.append(el("td", {}, time(d.at)), el("td", {}, d.trace_id), el("td", { class: "error" }, d.code), el("td", {}, d.reason));
      return tr;
    }),
  );
}

async function refresh() {
  clearTimeout(state.timer);
  const status = document.getElementById("status");
  try {
    const index = await getJSON("/api/apps");
    state.refreshMs = Math.max(250, index.refresh_s * 1000);
    document.getElementById("title").textContent = index.title;
    if (!state.app || !index.apps.some((a) => a.app === state.app)) state.app = index.apps.length ? index.apps[0].app : null;
    renderApps(index.apps);
    document.getElementById("empty").hidden = !!state.app;
    document.getElementById("app-view").hidden = !state.app;
    if (state.app) {
      const snap = await getJSON(`/api/apps/${encodeURIComponent(state.app)}`);
      const n = snap.series.reduce((a, p) => a + p.n, 0);
      const mean = n ? snap.series.reduce((a, p) => a + p.mean * p.n, 0) / n : null;
      document.getElementById("app-name").textContent = snap.app;
      document.getElementById("scored").textContent = snap.scored;
      document.getElementById("mean-reward").textContent = fmt(mean);
      document.getElementById("dead-lettered").textContent = Object.values(snap.dead_lettered).reduce((a, b) => a + b, 0);
      renderChart(snap);
      renderFunctions(snap);
      renderTraces(snap);
      renderDeadLetters(snap);
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove("error");
  } catch (e) {
    status.textContent = `update failed: ${e.message}`;
    status.classList.add("error");
  }
  state.timer = setTimeout(refresh, state.refreshMs);
}

refresh();
