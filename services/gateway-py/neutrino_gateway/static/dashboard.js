// The Neutrino dashboard: polls GET /v1/status and GET /v1/runs (the gateway's documented JSON API)
// every POLL_MS and draws them. Plain DOM, no framework, no build step. Every value from the gateway
// goes in as text (textContent), never as markup: task errors are arbitrary strings.
"use strict";

const POLL_MS = 2000;
const HISTORY = 90; // points in the rates chart: three minutes at POLL_MS
const TOKEN_KEY = "neutrino-token";
const OUTCOME_COLOURS = { ok: "#2e8540", cancelled: "#8a8a8a" };
const OTHER_COLOURS = ["#d83933", "#e5a000", "#8f3ab8", "#0071bc", "#b35c00", "#4a77b4"];

const rateHistory = []; // [{at, rates: {outcome: runs/s}}], oldest first
let token = null;
let timer = null;

function $(id) {
  return document.getElementById(id);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function seconds(from, to) {
  if (!from || !to) return "–";
  const s = (Date.parse(to) - Date.parse(from)) / 1000;
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

// -- the token -------------------------------------------------------------------------------

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    // Out of the address bar (and so out of bookmarks and screenshots).
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(why) {
  clearTimeout(timer);
  $("token-why").textContent = why;
  $("token-form").hidden = false;
  $("main").hidden = true;
  $("updated").textContent = "not connected";
  $("token").focus();
}

class Unauthorized extends Error {}

async function getJson(path) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) {
    const error = body && body.error ? `${body.error.type}: ${body.error.message}` : `HTTP ${response.status}`;
    throw new Error(error);
  }
  return body;
}

// -- polling ---------------------------------------------------------------------------------

async function poll() {
  clearTimeout(timer);
  try {
    const [status, runs] = await Promise.all([getJson("v1/status"), getJson("v1/runs")]);
    $("token-form").hidden = true;
    $("main").hidden = false;
    $("forget-token").hidden = !token;
    render(status, runs.runs);
    $("updated").textContent = `updated ${clock(status.time)}`;
    $("updated").className = "muted";
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken(token ? "The gateway refused that token." : "This gateway needs its bearer token.");
      return;
    }
    $("updated").textContent = `cannot reach the gateway: ${error.message}`;
    $("updated").className = "error";
  }
  timer = setTimeout(poll, POLL_MS);
}

// -- drawing ---------------------------------------------------------------------------------

function render(status, runs) {
  const totals = status.totals;
  const r = status.runs;
  const finished = Object.values(r.finished).reduce((a, b) => a + b, 0);
  const rates = r.per_second;
  const known = Object.values(rates).every((v) => v !== null);
  const total = Object.values(rates).reduce((a, b) => a + (b || 0), 0);
  $("t-pods").textContent = `${totals.task_pods_up} / ${totals.task_pods}`;
  $("t-workers").textContent = `${totals.workers_busy} / ${totals.workers_idle}`;
  $("t-queue").textContent = totals.queue_depth;
  $("t-active").textContent = r.queued + r.running;
  $("t-finished").textContent = finished;
  $("t-rate").textContent = status.window_s === null || !known ? "–" : total.toFixed(1);
  if (status.window_s !== null) {
    rateHistory.push({ at: Date.parse(status.time), rates });
    while (rateHistory.length > HISTORY) rateHistory.shift();
  }
  renderChart();
  renderPods(status.task_pods);
  renderModels(status.models);
  renderRuns(runs);
}

function colourOf(outcome, index) {
  return OUTCOME_COLOURS[outcome] || OTHER_COLOURS[index % OTHER_COLOURS.length];
}

function renderChart() {
  const svg = $("rates-chart");
  const legend = $("rates-legend");
  svg.replaceChildren();
  legend.replaceChildren();
  const outcomes = [...new Set(rateHistory.flatMap((point) => Object.keys(point.rates)))].sort();
  const peak = Math.max(1, ...rateHistory.flatMap((point) => Object.values(point.rates).map((v) => v || 0)));
  const ns = "http://www.w3.org/2000/svg";
  let others = 0;
  for (const outcome of outcomes) {
    const colour = colourOf(outcome, outcome in OUTCOME_COLOURS ? 0 : others++);
    const points = rateHistory.map((point, i) => {
      const x = rateHistory.length === 1 ? 600 : (600 * i) / (rateHistory.length - 1);
      const y = 118 - (116 * (point.rates[outcome] || 0)) / peak;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(line);
    const latest = rateHistory.length ? rateHistory[rateHistory.length - 1].rates[outcome] : null;
    const item = el("li", `${outcome} ${fixed(latest, 1)}/s`);
    item.dataset.outcome = outcome;
    const swatch = el("span", null, "swatch");
    swatch.style.background = colour;
    item.prepend(swatch);
    legend.append(item);
  }
  const scale = el("li", `scale: 0 – ${peak.toFixed(1)} runs/s`, "muted");
  legend.append(scale);
}

function cell(row, text, className) {
  const td = el("td", text, className);
  row.append(td);
  return td;
}

function renderPods(pods) {
  const body = $("pods").tBodies[0];
  body.replaceChildren();
  for (const pod of pods) {
    const row = el("tr");
    row.dataset.address = pod.address;
    cell(row, pod.address, "mono");
    cell(row, pod.state, `state state-${pod.state}`);
    const bar = el("div", null, "bar");
    const workers = pod.workers.busy + pod.workers.idle;
    const busy = el("span", null, "busy");
    busy.style.width = workers ? `${(100 * pod.workers.busy) / workers}%` : "0";
    bar.append(busy);
    cell(row, null).append(bar);
    cell(row, pod.workers.busy, "num busy-count");
    cell(row, pod.workers.idle, "num idle-count");
    cell(row, pod.queue_depth, "num queue-depth");
    cell(row, pod.runs_in_flight, "num");
    cell(row, pod.last_pong_s_ago === null ? "never" : `${fixed(pod.last_pong_s_ago, 1)} s ago`, "num");
    body.append(row);
  }
}

function renderModels(models) {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  $("models-none").hidden = models.length > 0;
  for (const model of models) {
    for (const replica of model.replicas) {
      const row = el("tr");
      row.dataset.model = model.name;
      cell(row, model.name);
      cell(row, replica.url, "mono");
      if (!replica.up) {
        cell(row, "down", "state state-down");
        cell(row, replica.error, "error").colSpan = 7;
        body.append(row);
        continue;
      }
      cell(row, "up", "state state-up");
      cell(row, fixed(replica.requests_per_s, 1), "num requests-per-s");
      cell(row, replica.requests, "num requests");
      cell(row, fixed(replica.batches_per_s, 1), "num");
      cell(row, fixed(replica.mean_batch_size, 2), "num mean-batch");
      const sizes = replica.batch_sizes.map((b) => `${b.up_to === null ? ">" : "≤"}${b.up_to ?? ""}: ${b.batches}`);
      cell(row, sizes.join("  ") || "–", "mono");
      cell(row, replica.queue_depth, "num");
      cell(row, replica.requests_in_flight, "num");
      body.append(row);
    }
  }
}

function renderRuns(runs) {
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const run of runs) {
    const row = el("tr", null, "run");
    row.dataset.runId = run.id;
    row.dataset.status = run.status;
    row.tabIndex = 0;
    // The last 8 hex digits: run ids are UUIDv7, whose first ones are the creation time, shared by neighbours.
    cell(row, run.id.slice(-8), "mono");
    cell(row, run.task);
    cell(row, run.status, `status status-${run.status}`);
    cell(row, run.attempts, "num");
    cell(row, clock(run.created_at));
    cell(row, seconds(run.created_at, run.started_at), "num");
    cell(row, seconds(run.started_at, run.finished_at), "num");
    cell(row, run.error ? `${run.error.type}: ${run.error.message}` : "", "error truncate");
    row.addEventListener("click", () => showRun(run.id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") showRun(run.id);
    });
    body.append(row);
  }
}

// -- one run ---------------------------------------------------------------------------------

async function showRun(id) {
  let run;
  try {
    run = await getJson(`v1/runs/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken("The gateway refused that token.");
    run = { id, error: { type: "unavailable", message: error.message, kind: "" } };
  }
  $("detail-id").textContent = run.id;
  const fields = $("detail-fields");
  fields.replaceChildren();
  const rows = [
    ["Task", run.task],
    ["Status", run.status],
    ["Attempts", run.attempts],
    ["Created", run.created_at],
    ["Started", run.started_at || "–"],
    ["Finished", run.finished_at || "–"],
    ["Started after", seconds(run.created_at, run.started_at)],
    ["Took", seconds(run.started_at, run.finished_at)],
  ];
  for (const [name, value] of rows) {
    if (value === undefined) continue;
    fields.append(el("dt", name), el("dd", value));
  }
  const error = run.error;
  $("detail-error").hidden = !error;
  if (error) {
    $("detail-error-type").textContent = error.type;
    $("detail-error-kind").textContent = error.kind ? `(kind: ${error.kind})` : "";
    $("detail-error-message").textContent = error.message;
    $("detail-traceback").hidden = !error.traceback;
    $("detail-traceback").textContent = error.traceback || "";
  }
  $("detail-result").hidden = !("result" in run);
  $("detail-result-value").textContent = JSON.stringify(run.result, null, 2);
  const dialog = $("run-detail");
  if (!dialog.open) dialog.showModal();
}

// -- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    poll();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    askForToken("Token forgotten.");
  });
  $("detail-close").addEventListener("click", () => $("run-detail").close());
  window.addEventListener("hashchange", () => {
    takeTokenFromFragment();
    poll();
  });
  poll();
});
