// The dashboard's pages: each reads its JSON API and redraws every REFRESH_MS.
"use strict";

const REFRESH_MS = 2000;
const pages = ["cluster", "tasks", "actors", "timeline", "logs"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pill = (state) => el("span", { class: "pill " + state }, state);
const short = (id) => (id ? id.slice(0, 8) : "");
const card = (label, value) =>
  el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  return s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function usage(used, total) {
  const share = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return el("div", {}, `${+used.toFixed(2)} / ${+total.toFixed(2)}`,
    el("div", { class: "bar" }, el("span", { style: `width:${share}%` })));
}

async function drawCluster() {
  const c = await getJson("/api/cluster");
  const total = c.resources_total.CPU || 0;
  const free = c.resources_available.CPU || 0;
  document.getElementById("cluster-summary").replaceChildren(
    card("nodes alive", c.alive), card("nodes dead", c.dead),
    card("CPUs in use", `${+(total - free).toFixed(2)} / ${total}`),
    card("GPUs", c.resources_total.GPU || 0));
  fill(document.querySelector("#nodes tbody"), c.nodes.map((n) => {
    const cpuTotal = n.resources_total.CPU || 0;
    const cpuUsed = n.alive ? cpuTotal - (n.resources_available.CPU || 0) : 0;
    const others = Object.entries(n.resources_total).filter(([k]) => k !== "CPU")
      .map(([k, v]) => `${k} ${+(v - (n.resources_available[k] || 0)).toFixed(2)}/${v}`).join(", ");
    const store = n.store
      ? el("div", {}, `${bytes(n.store.used_bytes)} / ${bytes(n.store.capacity_bytes)}, ${n.store.objects} objects`,
          el("div", { class: "bar" }, el("span", {
            style: `width:${n.store.capacity_bytes ? (100 * n.store.used_bytes) / n.store.capacity_bytes : 0}%` })))
      : el("span", { class: "muted" }, "not reported yet");
    // Node-table fields: `metrics_port` is the raylet's, `<daemon>_metrics_port` the others'.
    const ports = Object.entries(n.metrics_ports || {})
      .map(([k, v]) => `${k === "metrics_port" ? "raylet" : k.replace("_metrics_port", "")} :${v}`).join(", ");
    return el("tr", {},
      el("td", { class: "mono", title: n.node_id }, short(n.node_id)),
      el("td", {}, n.address),
      el("td", {}, pill(n.alive ? "alive" : "dead")),
      el("td", {}, usage(cpuUsed, cpuTotal)),
      el("td", {}, others || el("span", { class: "muted" }, "none")),
      el("td", {}, `${n.running_tasks} / ${n.queued_tasks}`),
      el("td", {}, store),
      el("td", {}, n.alive ? seconds(n.heartbeat_age_ms / 1000) + " ago" : ""),
      el("td", { class: "mono" }, ports));
  }));
  return c;
}

async function drawTasks() {
  const t = await getJson("/api/tasks");
  document.getElementById("task-counts").replaceChildren(card("tasks", t.total),
    ...Object.entries(t.counts).map(([state, n]) => card(state, n)));
  fill(document.querySelector("#tasks tbody"), t.latest.map((task) => el("tr", {},
    el("td", { class: "mono", title: task.task_id }, short(task.task_id)),
    el("td", { class: "mono" }, task.function || el("span", { class: "muted" }, task.actor_id ? "actor method" : "")),
    el("td", {}, pill(task.state)),
    el("td", {}, task.node || ""),
    el("td", {}, seconds(task.duration_s)),
    el("td", {}, task.error ? el("div", { class: "error" }, task.error) : ""))));
}

async function drawActors() {
  const a = await getJson("/api/actors");
  document.getElementById("actor-counts").replaceChildren(card("actors", a.actors.length),
    ...Object.entries(a.counts).map(([state, n]) => card(state, n)));
  fill(document.querySelector("#actors tbody"), a.actors.map((actor) => el("tr", {},
    el("td", { class: "mono", title: actor.actor_id }, short(actor.actor_id)),
    el("td", { class: "mono" }, actor.class || ""),
    el("td", {}, pill(actor.state)),
    el("td", {}, actor.node || ""),
    el("td", {}, actor.restarts))));
}

async function drawTimeline() {
  const select = document.getElementById("job");
  const jobs = await getJson("/api/jobs");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all jobs"),
    ...jobs.jobs.map((j) => el("option", { value: j }, j)));
  select.value = chosen;
  const query = chosen ? "?job=" + chosen : "";
  document.getElementById("trace-link").href = "/api/timeline" + query;
  const events = (await getJson("/api/timeline" + query)).filter((e) => e.ph === "X");
  const box = document.getElementById("timeline");
  if (!events.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No task has run yet."));
    return;
  }
  const start = Math.min(...events.map((e) => e.ts));
  const end = Math.max(...events.map((e) => e.ts + e.dur));
  const span = Math.max(end - start, 1);
  const lanes = new Map();
  for (const e of events) {
    const key = `${e.pid} ${e.tid}`;
    if (!lanes.has(key)) lanes.set(key, []);
    lanes.get(key).push(e);
  }
  const rows = [...lanes.entries()].sort().map(([who, spans]) => el("div", { class: "lane" },
    el("div", { class: "who", title: who }, who),
    el("div", { class: "track" }, spans.map((e) => el("div", {
      class: "span" + (e.args && e.args.error ? " failed" : ""),
      style: `left:${(100 * (e.ts - start)) / span}%;width:${(100 * e.dur) / span}%`,
      title: `${e.name} ${seconds(e.dur / 1e6)}${e.args && e.args.error ? "\n" + e.args.error : ""}`,
    })))));
  box.replaceChildren(
    el("div", { class: "axis" }, el("span", {}, "0"), el("span", {}, seconds(span / 1e6))), ...rows);
}

let nodesForLogs = [];

async function drawLogs() {
  const select = document.getElementById("log-node");
  if (!nodesForLogs.length || !select.value) {
    nodesForLogs = (await getJson("/api/cluster")).nodes;
    const chosen = select.value;
    select.replaceChildren(...nodesForLogs.map((n) =>
      el("option", { value: n.node_id }, `${n.address} (${short(n.node_id)})${n.alive ? "" : " dead"}`)));
    if (chosen) select.value = chosen;
  }
  if (!select.value) return;
  const logs = await getJson(`/api/logs?node=${select.value}&lines=40`);
  document.getElementById("log-dir").textContent = logs.directory || "";
  const box = document.getElementById("logs");
  if (logs.error) {
    box.replaceChildren(el("p", { class: "muted" }, logs.error));
    return;
  }
  box.replaceChildren(...logs.files.map((f) => el("div", {},
    el("h2", {}, f.name), el("div", { class: "log" }, f.lines.join("\n") || "(empty)"))));
}

const drawers = { cluster: drawCluster, tasks: drawTasks, actors: drawActors, timeline: drawTimeline, logs: drawLogs };

function current() {
  const page = location.hash.slice(1);
  return pages.includes(page) ? page : "cluster";
}

async function refresh() {
  const page = current();
  for (const p of pages) {
    document.getElementById("page-" + p).classList.toggle("active", p === page);
    document.querySelector(`[data-page=${p}]`).classList.toggle("active", p === page);
  }
  const status = document.getElementById("status");
  try {
    await drawers[page]();
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = "cannot refresh: " + e.message;
  }
}

window.addEventListener("hashchange", refresh);
document.getElementById("job").addEventListener("change", refresh);
document.getElementById("log-node").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
