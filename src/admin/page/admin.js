// The admin page: polls this node's JSON routes and redraws. Plain DOM, no framework, no build step.
"use strict";

const REFRESH_MS = 2000;
const PALETTE = ["#3b5bdb", "#0ca678", "#e8590c", "#ae3ec9", "#1098ad", "#d6336c", "#5c940d", "#f08c00",
  "#364fc7", "#099268", "#c2255c", "#7048e8"];
const STATE_CLASS = { up: "ok", joining: "warn", leaving: "warn", exiting: "warn", down: "bad", removed: "bad" };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A node with an admin token (REGENT_ADMIN_TOKEN) answers 401 to the data routes: the page asks for the token once,
// keeps it for this tab only (sessionStorage) and sends it as a bearer token. A link may carry it in its fragment
// (`/#token=...`, never sent to the server), which the page moves to sessionStorage and removes from the address.
const TOKEN_KEY = "regent-admin-token";
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice("#token=".length)));
  history.replaceState(null, "", location.pathname + location.search);
}
let tokenPrompt = null;

function askToken() {
  if (!tokenPrompt) {
    tokenPrompt = Promise.resolve().then(() => {
      const token = window.prompt("This node's admin endpoint needs its token (REGENT_ADMIN_TOKEN):");
      if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
      return Boolean(token);
    });
    tokenPrompt.finally(() => setTimeout(() => { tokenPrompt = null; }, 0));
  }
  return tokenPrompt;
}

async function fetchJson(path, retried) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { cache: "no-store", headers });
  if (response.status === 401 && !retried) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (await askToken()) return fetchJson(path, true);
  }
  if (!response.ok && response.status !== 503) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function colours(members) {
  const names = [...new Set(members.map((m) => m.node))].sort();
  return new Map(names.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
}

function duration(ms) {
  const s = Math.abs(ms) / 1000;
  const text = s < 10 ? `${s.toFixed(1)} s` : s < 120 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
  return ms < 0 ? `expired ${text} ago` : text;
}

function renderReadiness(ready) {
  const pill = $("readiness");
  pill.className = "pill " + (ready.ready ? "pill-ok" : "pill-warn");
  pill.textContent = ready.ready ? "ready" : `not ready: ${ready.reason || "unknown"}`;
}

function renderMembers(cluster, palette) {
  const members = [...(cluster.members || [])].sort((a, b) => a.node.localeCompare(b.node, undefined, { numeric: true }));
  $("members-count").textContent = members.length;
  const up = members.filter((m) => m.status === "up").length;
  $("summary").textContent = cluster.enabled
    ? `${up}/${members.length} members up · ${(cluster.shards || []).length}/${cluster.num_shards} shards allocated`
    : `single node · ${cluster.num_shards} shards`;
  const cards = members.map((m) => {
    let state = STATE_CLASS[m.status] || "warn";
    if (!m.reachable && state === "ok") state = "bad";
    const tags = [];
    if (m.id === cluster.self_member.id) tags.push("this node");
    if (cluster.leader && m.id === cluster.leader) tags.push("leader");
    if (cluster.coordinator && m.id === cluster.coordinator) tags.push("coordinator");
    const facts = [["shards", m.shards]];
    if (cluster.enabled) {
      facts.push(["reachable", m.reachable ? "yes" : "NO"]);
      facts.push(["link", m.connected ? "connected" : "not connected"]);
      facts.push(["lease", duration(m.lease_expires_in_ms)]);
      facts.push(["incarnation", m.incarnation]);
    }
    facts.push(["address", m.address]);
    return el("div", { class: `card state-${state}`, "data-node": m.node, "data-status": m.status },
      el("div", { class: "title" },
        el("span", { class: "swatch", style: `background:${palette.get(m.node)}` }),
        el("span", { class: "name" }, m.node),
        el("span", { class: `pill pill-${state}` }, m.reachable ? m.status : `${m.status} · unreachable`)),
      tags.length ? el("div", { style: "margin-top:6px;display:flex;gap:4px" }, tags.map((t) => el("span", { class: "tag" }, t))) : null,
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  });
  $("members").replaceChildren(...cards);
}

function renderShards(cluster, palette) {
  const homes = new Map((cluster.shards || []).map((s) => [s.shard, s.node]));
  const single = !cluster.enabled;
  const cells = [];
  for (let shard = 0; shard < cluster.num_shards; shard++) {
    const node = single ? cluster.self_member.node : homes.get(shard);
    cells.push(node
      ? el("div", { class: "shard", style: `background:${palette.get(node) || "#868e96"}`, title: `shard ${shard} on ${node}`, "data-shard": shard, "data-node": node },
        shard, el("small", {}, node))
      : el("div", { class: "shard unallocated", title: `shard ${shard}: not allocated yet`, "data-shard": shard }, shard, el("small", {}, "—")));
  }
  $("shards").replaceChildren(...cells);
  $("shards-count").textContent = cluster.num_shards;
  const counts = new Map();
  for (const node of homes.values()) counts.set(node, (counts.get(node) || 0) + 1);
  $("legend").replaceChildren(...[...palette.entries()].map(([node, colour]) =>
    el("span", {}, el("span", { class: "swatch", style: `background:${colour}` }),
      `${node} (${single ? cluster.num_shards : counts.get(node) || 0})`)),
    el("span", {}, el("span", { class: "swatch", style: "background:#e9ecf1" }), "not allocated"));
}

function renderReadSides(views) {
  if (!views.length) {
    $("readsides").replaceChildren(el("div", { class: "empty" }, "No read-side processor runs on this node."));
    return;
  }
  const statusClass = { RUNNING: "ok", PAUSED: "warn", REPLAYING: "warn", STOPPED: "bad" };
  const rows = views.map((v) => el("tr", {},
    el("td", {}, v.read_side), el("td", { class: "num" }, v.shard),
    el("td", {}, el("span", { class: `pill pill-${statusClass[v.status] || "unknown"}` }, v.status)),
    el("td", { class: "num" }, v.offset), el("td", { class: "num" }, v.lag_seconds > 0 ? `${v.lag_seconds.toFixed(1)} s` : "caught up"),
    el("td", { class: "num" }, v.delivered), el("td", { class: "num" }, v.failures),
    el("td", { class: "error" }, v.error || "")));
  $("readsides").replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ["read side", "shard", "status", "offset", "lag", "delivered", "failures", "error"]
      .map((h, i) => el("th", { class: [1, 3, 4, 5, 6].includes(i) ? "num" : null }, h)))),
    el("tbody", {}, rows)));
}

const openNodes = new Set(["region", "read-side-supervisor"]);

function actorLabel(a) {
  const bits = [el("span", { class: "kind" }, a.kind)];
  if (a.shard !== undefined) bits.push(` ${a.shard}`);
  if (a.entity_id) bits.push(` ${a.entity_id}`);
  if (a.name) bits.push(el("span", { class: "muted" }, ` ${a.name}`));
  bits.push(el("span", { class: "muted" }, ` ${a.id} · ${a.status}`));
  if (a.passivating) bits.push(el("span", { class: "tag" }, "passivating"));
  if (a.error) bits.push(el("span", { class: "pill pill-bad" }, a.error));
  return bits;
}

function renderActor(a, path) {
  const key = `${path}/${a.kind}:${a.shard ?? a.entity_id ?? a.name ?? a.id}`;
  const children = a.children || [];
  if (!children.length && !a.omitted) return el("div", { class: "leaf" }, actorLabel(a));
  const details = el("details", { open: openNodes.has(a.kind) || openNodes.has(key) ? "" : null },
    el("summary", {}, actorLabel(a), el("span", { class: "count" }, children.length + (a.omitted || 0))),
    children.map((c) => renderActor(c, key)),
    a.omitted ? el("div", { class: "leaf muted" }, `… ${a.omitted} more`) : null);
  details.addEventListener("toggle", () => (details.open ? openNodes.add(key) : openNodes.delete(key)));
  return details;
}

function renderActors(tree) {
  const counts = Object.entries(tree.counts || {}).map(([k, n]) => `${n} ${k}`).join(" · ");
  $("actor-counts").textContent = counts || "none";
  $("actors").replaceChildren(...(tree.roots || []).map((r) => renderActor(r, "")));
}

async function refresh() {
  try {
    const [cluster, ready, readsides, actors] = await Promise.all([
      fetchJson("cluster"), fetchJson("ready"), fetchJson("readsides").catch(() => []), fetchJson("actors?max_entities=20"),
    ]);
    const palette = colours(cluster.members || []);
    $("node-name").textContent = cluster.self_member ? cluster.self_member.node : "";
    document.title = `Regent · ${cluster.self_member ? cluster.self_member.node : "admin"}`;
    renderReadiness(ready);
    renderMembers(cluster, palette);
    renderShards(cluster, palette);
    renderReadSides(Array.isArray(readsides) ? readsides : []);
    renderActors(actors);
    $("offline").hidden = true;
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    $("offline").hidden = false;
    $("readiness").className = "pill pill-bad";
    $("readiness").textContent = "unreachable";
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
