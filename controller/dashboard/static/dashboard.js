// The TrimCache dashboard: polls GET /v1/dashboard (same origin) and renders it.
// Charts are Chart.js (served by the controller from the npm package); the map is plain SVG.
"use strict";

const POLL_MS = 2000;
const COLORS = { edge: "#2e7d32", peer: "#1565c0", origin: "#c62828", local: "#757575" };
const SOURCES = ["edge", "peer", "origin", "local"];
const egressSamples = [];
let charts = null;

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function mb(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return n + " B";
}
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function renderMap(data) {
  const map = $("#map");
  map.replaceChildren();
  const nodes = data.nodes, areas = data.topology.areas, cov = data.topology.coverage_m;
  const pts = nodes.map((n) => n.position).concat(areas.map((a) => [a.x_m, a.y_m]));
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const pad = Math.max(cov, 20) + 10;  // whole coverage circles in view
  const x0 = Math.min(...xs) - pad, x1 = Math.max(...xs) + pad;
  const y0 = Math.min(...ys) - pad, y1 = Math.max(...ys) + pad;
  const W = 800, H = 300, s = Math.min(W / (x1 - x0 || 1), H / (y1 - y0 || 1));
  const X = (x) => (W - (x1 - x0) * s) / 2 + (x - x0) * s;
  const Y = (y) => (H - (y1 - y0) * s) / 2 + (y1 - y) * s;
  for (const n of nodes) {
    map.append(svg("circle", { cx: X(n.position[0]), cy: Y(n.position[1]), r: cov * s,
      fill: "rgba(46,125,50,0.08)", stroke: "#2e7d32", "stroke-dasharray": "4 3" }));
  }
  for (const a of areas) {
    const g = svg("g", { class: "area", "data-area-id": a.area_id });
    g.append(svg("circle", { cx: X(a.x_m), cy: Y(a.y_m), r: 4 + 3 * Math.min(a.weight, 3), fill: "#ffb300" }));
    g.append(svg("text", { x: X(a.x_m), y: Y(a.y_m) - 10, "font-size": 10, fill: "#8d6e00",
      "text-anchor": "middle", class: "halo" }, a.area_id));
    map.append(g);
  }
  for (const n of nodes) {
    const g = svg("g", { class: "map-node", "data-node-id": n.node_id });
    const cx = X(n.position[0]), cy = Y(n.position[1]);
    g.append(svg("rect", { x: cx - 7, y: cy - 7, width: 14, height: 14, rx: 2, fill: "#37474f" }));
    g.append(svg("text", { x: cx, y: cy + 20, "font-size": 11, "font-weight": 600,
      "text-anchor": "middle", class: "halo" }, n.node_id));
    g.append(svg("text", { x: cx, y: cy + 31, "font-size": 9, fill: "#546e7a",
      "text-anchor": "middle", class: "halo" },
      n.models.length + " models, " + mb(n.physical_bytes)));
    map.append(g);
  }
}

function renderNodes(data) {
  const box = $("#nodes");
  box.replaceChildren();
  for (const n of data.nodes) {
    const cap = n.capacity_bytes || Math.max(n.logical_bytes, n.physical_bytes, 1);
    const bar = el("div", { class: "bar", title: "physical storage of capacity " + mb(n.capacity_bytes) });
    for (const seg of n.segments) {
      bar.append(el("div", { class: "seg " + (seg.shared ? "shared" : "own"),
        style: "width:" + (100 * seg.bytes / cap).toFixed(2) + "%",
        title: (seg.shared ? "shared by " : "only ") + seg.models.join(", ") + ": " + mb(seg.bytes) }));
    }
    const logical = el("div", { class: "bar logical", title: "logical bytes (without sharing)" },
      el("div", { class: "fill", style: "width:" + Math.min(100, 100 * n.logical_bytes / cap).toFixed(2) + "%" }));
    const sharedModels = new Set(n.segments.filter((s) => s.shared).flatMap((s) => s.models));
    const models = el("ul", { class: "models" });
    for (const m of n.models) {
      models.append(el("li", { class: "model" + (sharedModels.has(m) ? " shared" : ""), "data-model-id": m }, m));
    }
    for (const m of n.planned_models.filter((m) => !n.models.includes(m))) {
      models.append(el("li", { class: "model planned-only", title: "placed here, not confirmed yet" }, m + " (planned)"));
    }
    const segs = el("ul", { class: "segments" });
    for (const seg of n.segments.filter((s) => s.shared)) {
      segs.append(el("li", {}, mb(seg.bytes) + " in " + seg.blocks + " blocks shared by " + seg.models.join(", ")));
    }
    const st = n.stats || {};
    const served = st.unavailable ? "stats unavailable" : "served " + mb(st.bytes_served) + ", " + (st.hits ?? 0) + " block hits";
    box.append(el("div", { class: "edge-node", "data-node-id": n.node_id },
      el("h3", {}, el("span", {}, n.node_id), el("span", { class: "muted" }, n.url)),
      bar, logical,
      el("div", { class: "numbers" },
        "physical " + mb(n.physical_bytes) + " · logical " + mb(n.logical_bytes) + " · capacity " +
        mb(n.capacity_bytes) + " · sharing saves " + pct(n.savings) + " · " + served),
      models, segs));
  }
}

function renderPlacement(data) {
  const p = data.placement, d = data.demand, last = data.last_plan;
  $("#solver").textContent = p.solver;
  $("#version").textContent = p.version;
  $("#plan-status").textContent = p.status + (p.trigger ? " (" + p.trigger + ")" : "");
  $("#planned-hit-ratio").textContent = pct(p.hit_ratio);
  $("#measured-hit-ratio").textContent = pct(d.hit_ratio);
  $("#requests").textContent = d.requests + " (" + d.hit + " hit, " + d.miss + " miss, " + d.error + " error)";
  $("#last-plan").textContent = last ? last.outcome + " at " + clock(last.at) +
    (last.decision ? " — " + last.decision.reason : "") : "–";
}

function renderTables(data) {
  const plans = $("#plans tbody");
  plans.replaceChildren();
  for (const p of data.plans.slice(0, 12)) {
    const push = Object.entries(p.nodes).map(([n, v]) => n + ": " + v.status).join(", ");
    plans.append(el("tr", {}, el("td", {}, p.version), el("td", {}, p.planned_at ? clock(p.planned_at) : "–"),
      el("td", {}, p.trigger ?? "–"), el("td", {}, p.solver), el("td", {}, pct(p.hit_ratio)),
      el("td", {}, mb(p.moved_bytes.from_peers)), el("td", {}, mb(p.moved_bytes.from_origin)),
      el("td", {}, mb(p.moved_bytes.evicted)), el("td", {}, push)));
  }
  const fetches = $("#fetches tbody");
  fetches.replaceChildren();
  for (const f of data.fetches.slice(0, 12)) {
    const k = f.bytes_by_kind;
    fetches.append(el("tr", { class: f.outcome === "error" ? "error" : "" }, el("td", {}, clock(f.at)),
      el("td", {}, f.model_id), el("td", {}, f.area_id), el("td", {}, f.outcome),
      el("td", { class: "src " + f.source }, f.source),
      el("td", {}, f.seconds === null ? "–" : f.seconds.toFixed(2)),
      el("td", {}, mb(k.edge || 0) + " / " + mb(k.origin || 0) + " / " + mb(k.local || 0))));
  }
  const o = data.origin, st = o.stats;
  const egress = $("#egress");
  egress.replaceChildren(
    el("dt", {}, "origin served (total)"), el("dd", { id: "origin-bytes" }, st.unavailable ? "unavailable" : mb(st.bytes_served)),
    el("dt", {}, "to clients (reported)"), el("dd", {}, mb(data.demand.bytes_by_kind.origin || 0)),
    el("dt", {}, "to edge nodes"), el("dd", {}, mb(o.edge_ingest.from_origin)),
    el("dt", {}, "edge ↔ edge migration"), el("dd", {}, mb(o.edge_ingest.from_peers)));
}

function makeCharts() {
  if (typeof Chart === "undefined") return null;
  Chart.defaults.animation = false;
  Chart.defaults.font.size = 11;
  const timeAxis = { type: "linear", ticks: { callback: (v) => clock(v), maxTicksLimit: 5 } };
  const hit = new Chart($("#hit-chart"), {
    type: "line",
    data: { datasets: [
      { label: "measured", data: [], borderColor: "#2e7d32", backgroundColor: "#2e7d32", stepped: true },
      { label: "planned", data: [], borderColor: "#6a1b9a", borderDash: [5, 4], pointRadius: 0 } ] },
    options: { maintainAspectRatio: false, scales: { x: timeAxis,
      y: { min: 0, max: 1, ticks: { callback: (v) => (100 * v).toFixed(0) + "%" } } } },
  });
  const times = new Chart($("#fetch-time-chart"), {
    type: "line",
    data: { datasets: SOURCES.map((s) => ({ label: s, source: s, data: [], stepped: true,
      borderColor: COLORS[s], backgroundColor: COLORS[s], pointRadius: 3 })) },
    options: { maintainAspectRatio: false, scales: {
      x: { type: "linear", min: 0, title: { display: true, text: "seconds" } },
      y: { min: 0, max: 1, title: { display: true, text: "share of fetches" } } } },
  });
  const egress = new Chart($("#egress-chart"), {
    type: "line",
    data: { datasets: [{ label: "origin bytes served (MB)", data: [], borderColor: "#c62828", pointRadius: 0 }] },
    options: { maintainAspectRatio: false, scales: { x: timeAxis, y: { min: 0 } } },
  });
  return { hit, times, egress };
}

function cdf(values) {
  const v = [...values].sort((a, b) => a - b);
  const out = v.length ? [{ x: 0, y: 0 }] : [];
  v.forEach((x, i) => out.push({ x, y: (i + 1) / v.length }));
  return out;
}

function renderCharts(data) {
  if (!charts) charts = makeCharts();
  if (!charts) { $("#fetch-time").textContent = "charts unavailable (Chart.js missing: run make setup)"; return; }
  const series = data.demand.series.map((p) => ({ x: p.at, y: p.hit_ratio }));
  charts.hit.data.datasets[0].data = series;
  const xs = series.length ? [series[0].x, data.at] : [data.at - 60, data.at];
  charts.hit.data.datasets[1].data = xs.map((x) => ({ x, y: data.placement.hit_ratio }));
  charts.hit.update("none");
  let points = 0;
  for (const ds of charts.times.data.datasets) {
    const secs = data.fetches.filter((f) => f.source === ds.source && f.seconds !== null).map((f) => f.seconds);
    ds.data = cdf(secs);
    const median = secs.length ? [...secs].sort((a, b) => a - b)[Math.floor((secs.length - 1) / 2)] : null;
    ds.label = ds.source + " (n=" + secs.length + (median === null ? "" : ", median " + median.toFixed(2) + " s") + ")";
    points += secs.length;
  }
  $("#fetch-time").dataset.points = points;
  charts.times.update("none");
  const st = data.origin.stats;
  if (!st.unavailable) {
    egressSamples.push({ x: data.at, y: st.bytes_served / 1e6 });
    if (egressSamples.length > 300) egressSamples.shift();
    charts.egress.data.datasets[0].data = egressSamples;
    charts.egress.update("none");
  }
}

async function poll() {
  try {
    const response = await fetch("/v1/dashboard", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    renderMap(data); renderNodes(data); renderPlacement(data); renderTables(data); renderCharts(data);
    document.body.dataset.updated = String(data.at);
    $("#status").textContent = data.nodes.length + " edge nodes · " + data.models.length +
      " models · updated " + clock(data.at);
  } catch (err) {
    $("#status").textContent = "controller unreachable: " + err.message + " (retrying)";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
