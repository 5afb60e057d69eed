// weir's service map: draws the relay's map (/api/map/events, one JSON map
// per second) as SVG, and the flow table of what is clicked
// (/api/flows/events with `weir observe`'s filter flags). No library, no
// build step: the relay embeds this file as it is.
"use strict";

const CELL_W = 380, CELL_H = 96, NODE_W = 150, NODE_H = 40, PAD = 26, GAP = 24;
const OUTSIDE = "";  // the box of the world and the nodes
const state = { map: null, picked: new Set(), selected: null, layoutKey: "", pos: new Map(), source: null, paused: false, held: [], changes: new Map() };
const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function rate(n, unit) {
  if (!n) return "";
  if (unit === "B") {
    const k = ["B/s", "kB/s", "MB/s", "GB/s"];
    let i = 0;
    while (n >= 1000 && i < k.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(n < 10 ? 1 : 0)} ${k[i]}`;
  }
  return `${n.toFixed(n < 10 ? 1 : 0)} ${unit}`;
}

// What the namespace boxes hold, in order: outside first, then by name.
function visible(map) {
  const picked = state.picked;
  const inPicked = (id) => {
    const n = map.byId.get(id);
    return picked.size === 0 || (n && picked.has(n.namespace));
  };
  const edges = map.edges.filter((e) => inPicked(e.from) || inPicked(e.to));
  const ids = new Set(edges.flatMap((e) => [e.from, e.to]));
  const nodes = map.nodes.filter((n) => ids.has(n.id));
  return { nodes, edges };
}

// Columns by how far along the traffic a node is (clients left, the
// servers they call to the right), rows in each column by name; one box
// per namespace, the world and the nodes in a box of their own.
function ranks(nodes, edges) {
  const rank = new Map(nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < 6; pass++) {
    let moved = false;
    for (const e of edges) {
      if (e.from === e.to || !rank.has(e.from) || !rank.has(e.to)) continue;
      const r = Math.min(rank.get(e.from) + 1, 6);
      if (r > rank.get(e.to)) { rank.set(e.to, r); moved = true; }
    }
    if (!moved) break;
  }
  return rank;
}

function layout(nodes, edges, width) {
  const rank = ranks(nodes, edges);
  const groups = new Map();
  for (const n of nodes) {
    const g = n.namespace || OUTSIDE;
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(n);
  }
  const names = [...groups.keys()].sort((a, b) => (a === OUTSIDE ? 1 : b === OUTSIDE ? -1 : a.localeCompare(b)));
  const boxes = [], pos = new Map();
  let x = GAP, y = GAP, rowH = 0;
  for (const name of names) {
    const members = groups.get(name).sort((a, b) => a.id.localeCompare(b.id));
    const used = [...new Set(members.map((n) => rank.get(n.id)))].sort((a, b) => a - b);
    const cols = used.map((r) => members.filter((n) => rank.get(n.id) === r));
    // A tall column wraps into several.
    const maxRows = Math.max(3, Math.ceil(Math.sqrt(members.length)));
    const columns = cols.flatMap((c) => {
      const out = [];
      for (let i = 0; i < c.length; i += maxRows) out.push(c.slice(i, i + maxRows));
      return out;
    });
    const rows = Math.max(...columns.map((c) => c.length));
    const w = Math.max(1, columns.length) * CELL_W - (CELL_W - NODE_W) + PAD * 2, h = rows * CELL_H + PAD + 16;
    if (x > GAP && x + w > width) { x = GAP; y += rowH + GAP; rowH = 0; }
    boxes.push({ name, x, y, w, h });
    columns.forEach((c, ci) => c.forEach((n, ri) => {
      pos.set(n.id, { x: x + PAD + ci * CELL_W + NODE_W / 2, y: y + 16 + PAD / 2 + ri * CELL_H + CELL_H / 2 });
    }));
    x += w + GAP;
    rowH = Math.max(rowH, h);
  }
  return { boxes, pos, width: Math.max(width, x), height: y + rowH + GAP };
}

// Where a line from the centre of `a` towards `b` leaves a's box.
function border(a, b) {
  const dx = b.x - a.x, dy = b.y - a.y;
  if (!dx && !dy) return { x: a.x, y: a.y };
  const sx = (NODE_W / 2 + 4) / Math.abs(dx || 1e-9), sy = (NODE_H / 2 + 4) / Math.abs(dy || 1e-9);
  const s = Math.min(sx, sy, 1);
  return { x: a.x + dx * s, y: a.y + dy * s };
}

function curve(a, b, bend) {
  if (a === b) {  // a workload talking to itself: a loop above it
    const x = a.x, y = a.y - NODE_H / 2;
    return { d: `M${x - 20},${y} C${x - 40},${y - 50} ${x + 40},${y - 50} ${x + 20},${y}`, mx: x, my: y - 40 };
  }
  const p = border(a, b), q = border(b, a);
  const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
  const len = Math.hypot(q.x - p.x, q.y - p.y) || 1;
  const nx = -(q.y - p.y) / len, ny = (q.x - p.x) / len;
  const cx = mx + nx * bend, cy = my + ny * bend;
  return { d: `M${p.x},${p.y} Q${cx},${cy} ${q.x},${q.y}`, mx: (p.x + 2 * cx + q.x) / 4, my: (p.y + 2 * cy + q.y) / 4, p, q, cx, cy };
}

// Whether a curve passes over a node other than its ends.
function blocked(c, nodes, pos, ends) {
  for (let i = 1; i < 12; i++) {
    const t = i / 12, u = 1 - t;
    const x = u * u * c.p.x + 2 * u * t * c.cx + t * t * c.q.x, y = u * u * c.p.y + 2 * u * t * c.cy + t * t * c.q.y;
    for (const n of nodes) {
      if (ends.has(n.id)) continue;
      const o = pos.get(n.id);
      if (Math.abs(x - o.x) < NODE_W / 2 + 6 && Math.abs(y - o.y) < NODE_H / 2 + 6) return true;
    }
  }
  return false;
}

// The bend that keeps an edge off the nodes between its ends: straight if
// it can be, else the gentlest arc either way that clears them.
function route(a, b, ids, nodes, pos) {
  if (a === b) return 0;
  const len = Math.hypot(b.x - a.x, b.y - a.y);
  for (const f of [0, 0.25, -0.25, 0.45, -0.45, 0.7, -0.7]) {
    if (!blocked(curve(a, b, f * len), nodes, pos, ids)) return f * len;
  }
  return 0.25 * len;
}

// Where along a curve its label sits: the middle, unless that is over a
// node (then the nearest clear spot).
function labelAt(c, nodes, pos, placed) {
  if (!c.p) return { x: c.mx, y: c.my };
  for (const t of [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.1, 0.9]) {
    const u = 1 - t;
    const x = u * u * c.p.x + 2 * u * t * c.cx + t * t * c.q.x, y = u * u * c.p.y + 2 * u * t * c.cy + t * t * c.q.y;
    const clear = nodes.every((n) => {
      const o = pos.get(n.id);
      return Math.abs(x - o.x) > NODE_W / 2 + 70 || Math.abs(y - o.y) > NODE_H / 2 + 16;
    }) && placed.every((l) => Math.abs(x - l.x) > 150 || Math.abs(y - l.y) > 26);
    if (clear) {
      placed.push({ x, y });
      return { x, y };
    }
  }
  return { x: c.mx, y: c.my };
}

// Two short lines: what it carries, and how fast or why refused.
function edgeLabel(e, kind) {
  if (kind === "denied") {
    const reasons = Object.entries(e.drops).map(([r, n]) => `${r} ×${n}`).join(", ");
    return [e.denied_by.length ? `denied by ${e.denied_by.join("; ")}` : "dropped", reasons];
  }
  if (kind === "audit") return [`audit: ${e.audited_by.join("; ") || "would be denied"}`, `×${e.audited}`];
  const first = [];
  if (e.connections_per_s) first.push(rate(e.connections_per_s, "req/s"));
  if (e.bytes_per_s || e.reply_bytes_per_s) first.push(`${rate(e.bytes_per_s, "B") || "0 B/s"} → ${rate(e.reply_bytes_per_s, "B") || "0 B/s"} ←`);
  const second = e.handshake_p50_ms == null ? "" : `p50 ${e.handshake_p50_ms.toFixed(2)} ms · p99 ${e.handshake_p99_ms.toFixed(2)} ms`;
  return [first.join(" · ") || e.ports.join(" "), second];
}

function labelSvg(x, y, lines) {
  const shown = lines.filter((l) => l);
  x = Math.max(x, 150);  // long labels near the left edge stay on the page
  return `<text x="${x}" y="${y - 4 - (shown.length - 1) * 6}" text-anchor="middle">` +
    shown.map((l, i) => `<tspan x="${x}" dy="${i ? 12 : 0}">${esc(l.length > 56 ? l.slice(0, 55) + "…" : l)}</tspan>`).join("") + "</text>";
}

function edgeTitle(e) {
  const lines = [`${e.from} → ${e.to}`, `ports ${e.ports.join(", ")}`];
  if (e.services.length) lines.push(`services ${e.services.join(", ")}`);
  if (e.denied_by.length) lines.push(`denied by ${e.denied_by.join("; ")}`);
  if (e.audited_by.length) lines.push(`audit: ${e.audited_by.join("; ")}`);
  lines.push(`${e.connections} connections (${e.answered} answered), ${e.flows} flows, ${e.forwarded} forwarded, ${e.dropped} dropped`);
  lines.push(`${e.bytes} bytes →, ${e.reply_bytes} bytes ←`);
  return lines.join("\n");
}

function render() {
  const map = state.map;
  if (!map) return;
  const pane = $("map-pane");
  const { nodes, edges } = visible(map);
  const key = nodes.map((n) => n.id).join("|") + "@" + pane.clientWidth + [...state.picked].join(",");
  if (key !== state.layoutKey) {
    state.layoutKey = key;
    state.layout = layout(nodes, edges, Math.max(600, pane.clientWidth - 10));
  }
  const L = state.layout;
  const svg = $("map");
  svg.setAttribute("width", L.width);
  svg.setAttribute("height", L.height);
  $("layer-ns").innerHTML = L.boxes.map((b) =>
    `<rect class="ns-box" x="${b.x}" y="${b.y}" width="${b.w}" height="${b.h}" rx="8"/>` +
    `<text class="ns-label" x="${b.x + 10}" y="${b.y + 17}">${esc(b.name === OUTSIDE ? "outside the namespaces" : "namespace " + b.name)}</text>`).join("");
  const labels = edges.length <= 200;
  const parts = [], placed = [];
  for (const e of edges) {
    const a = L.pos.get(e.from), b = L.pos.get(e.to);
    if (!a || !b) continue;
    const kinds = [];
    // Traffic that got through: answered, or forwarded with nothing
    // dropped (a SYN the client's node let out and the server's dropped
    // is the denied line alone).
    if (e.answered || (e.forwarded > e.audited && !e.dropped) || (!e.dropped && !e.audited)) kinds.push("ok");
    if (e.audited) kinds.push("audit");
    if (e.dropped) kinds.push("denied");
    const base = route(a, b, new Set([e.from, e.to]), nodes, L.pos);
    kinds.forEach((kind, i) => {
      // Denied and audited traffic bends away from what was forwarded.
      const bend = base + (kinds.length === 1 ? 0 : (i - (kinds.length - 1) / 2) * 40);
      const c = curve(a, b, bend);
      const idle = kind === "ok" && !e.connections_per_s && !e.bytes_per_s && !e.reply_bytes_per_s;
      const change = state.changes.get(`${e.from}\u2192${e.to}`);
      const would = change ? ` would-${change}` : "";
      const cls = `edge ${kind}${idle ? " idle" : ""}${would}${state.selected && state.selected.edge === e.id && state.selected.kind === kind ? " selected" : ""}`;
      const marker = kind === "ok" ? "arrow" : `arrow-${kind}`;
      const at = labels || kind !== "ok" ? labelAt(c, nodes, L.pos, placed) : null;
      const text = at ? labelSvg(at.x, at.y, edgeLabel(e, kind)) : "";
      parts.push(`<g class="${cls}" data-id="${esc(e.id)}" data-kind="${kind}"><title>${esc(edgeTitle(e))}</title>` +
        `<path class="hit" d="${c.d}"/><path class="line" d="${c.d}" marker-end="url(#${marker})"/>${text}</g>`);
    });
  }
  $("layer-edges").innerHTML = parts.join("");
  $("layer-nodes").innerHTML = nodes.map((n) => {
    const p = L.pos.get(n.id);
    const sel = state.selected && state.selected.node === n.id ? " selected" : "";
    const name = n.name.length > 20 ? n.name.slice(0, 19) + "…" : n.name;
    return `<g class="node ${n.kind}${sel}" data-id="${esc(n.id)}" transform="translate(${p.x - NODE_W / 2},${p.y - NODE_H / 2})">` +
      `<title>${esc(n.id)}</title><rect width="${NODE_W}" height="${NODE_H}"/>` +
      `<text x="8" y="17">${esc(name)}</text><text class="kind" x="8" y="31">${esc(n.kind)}</text></g>`;
  }).join("");
  state.shown = { nodes: nodes.length, edges: edges.length };
  showStatus();
  renderNamespaces(map.namespaces);
  if (state.selected) renderFacts();
}

function showStatus() {
  const m = state.map, n = state.shown || { nodes: 0, edges: 0 };
  $("status").textContent = `${n.nodes} nodes · ${n.edges} edges · ${m.flows_seen} flows seen · updated ${new Date(m.at * 1000).toLocaleTimeString()}`;
}

function renderNamespaces(all) {
  const box = $("namespaces");
  const have = [...box.querySelectorAll("input")].map((i) => i.value).join(",");
  if (have === all.join(",")) return;
  box.innerHTML = all.map((ns) => `<label><input type="checkbox" value="${esc(ns)}"${state.picked.has(ns) ? " checked" : ""}> ${esc(ns)}</label>`).join("");
}

// The flags of `weir observe` that select a node's flows, or an edge's
// (its client's as --from-*, its server's as --to-*).
function flagsFor(sel) {
  const map = state.map;
  if (sel.node) return map.byId.get(sel.node).select.map(([f, v]) => [f, v]);
  const e = map.edgeById.get(sel.edge);
  const side = (id, prefix) => map.byId.get(id).select.map(([f, v]) => [f === "node-name" ? f : `${prefix}-${f}`, v]);
  const flags = [...side(e.from, "from"), ...side(e.to, "to")];
  const seen = new Set();  // one --node-name at most
  const out = flags.filter(([f]) => f !== "node-name" || (!seen.has(f) && seen.add(f)));
  if (sel.kind === "denied") out.push(["verdict", "DROPPED"]);
  if (sel.kind === "audit") out.push(["verdict", "AUDIT"]);
  return out;
}

function shellQuote(v) {
  return /^[A-Za-z0-9_.\/:=@%+,-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

function renderFacts() {
  const sel = state.selected, map = state.map;
  const facts = [];
  if (sel.node) {
    const n = map.byId.get(sel.node);
    if (!n) return;
    const out = map.edges.filter((e) => e.from === n.id), inn = map.edges.filter((e) => e.to === n.id);
    facts.push(["kind", n.kind], ["namespace", n.namespace || "–"], ["talks to", out.map((e) => e.to).join(", ") || "–"], ["reached by", inn.map((e) => e.from).join(", ") || "–"]);
  } else {
    const e = map.edgeById.get(sel.edge);
    if (!e) return;
    facts.push(["ports", e.ports.join(", ")], ["services", e.services.join(", ") || "–"],
      ["connections", `${e.connections}, ${e.answered} answered (${rate(e.connections_per_s, "/s") || "0/s"})`],
      ["bytes", `${e.bytes} → ${e.reply_bytes} ← (${rate(e.bytes_per_s, "B") || "0 B/s"} → ${rate(e.reply_bytes_per_s, "B") || "0 B/s"} ←)`],
      ["handshake", e.handshake_p50_ms == null ? "–" : `p50 ${e.handshake_p50_ms.toFixed(3)} ms, p99 ${e.handshake_p99_ms.toFixed(3)} ms`],
      ["forwarded", String(e.forwarded)], ["dropped", `${e.dropped} ${Object.entries(e.drops).map(([r, n]) => `${r} ×${n}`).join(", ")}`]);
    if (e.denied_by.length) facts.push(["denied by", e.denied_by.join("; ")]);
    if (e.audited) facts.push(["audit", `${e.audited}: ${e.audited_by.join("; ")}`]);
  }
  $("detail-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
}

function select(sel) {
  state.selected = sel;
  const flags = flagsFor(sel);
  $("detail").hidden = false;
  $("check").hidden = true;
  $("detail-title").textContent = sel.node ? sel.node : `${sel.edge.replace(">", " → ")}${sel.kind === "ok" ? "" : " (" + sel.kind + ")"}`;
  const command = "weir observe " + flags.map(([f, v]) => `--${f} ${shellQuote(v)}`).join(" ") + " --follow";
  $("command").textContent = command;
  $("command").dataset.flags = JSON.stringify(flags);
  renderFacts();
  openTable(flags);
  render();
}

function openTable(flags) {
  if (state.source) state.source.close();
  state.held = [];
  state.paused = false;
  $("pause").textContent = "pause";
  $("flows").tBodies[0].innerHTML = "";
  $("table-status").textContent = "";
  const q = new URLSearchParams(flags).toString();
  const src = new EventSource(`api/flows/events?${q}`);
  state.source = src;
  src.addEventListener("flow", (ev) => {
    const f = JSON.parse(ev.data);
    if (state.paused) {
      state.held.push(f);
      $("table-status").textContent = `paused, ${state.held.length} new`;
    } else addRow(f);
  });
  src.addEventListener("lost", (ev) => { $("table-status").textContent = `${ev.data} flows lost (too fast for this page)`; });
  src.onerror = () => { $("table-status").textContent = "reconnecting…"; };
}

function addRow(f) {
  const body = $("flows").tBodies[0];
  const t = f.time ? new Date(f.time * 1000) : null;
  const time = t ? `${t.toLocaleTimeString()}.${String(t.getMilliseconds()).padStart(3, "0")}` : "";
  const ep = (name, ip, port) => `${name || ip}${port ? ":" + port : ""}`;
  const detail = f.verdict === "DROPPED" ? `${f.drop_reason} ${f.policy}`.trim() : (f.policy || f.event || "");
  const tr = document.createElement("tr");
  tr.className = "flow";
  tr.dataset.verdict = f.verdict;
  tr.dataset.source = f.source;
  tr.dataset.destination = f.destination;
  tr.innerHTML = `<td>${esc(time)}</td><td>${esc(f.node)}</td><td>${esc(ep(f.source, f.source_ip, f.source_port))}</td>` +
    `<td>${esc(ep(f.destination, f.destination_ip, f.destination_port))} ${esc(f.protocol)}</td><td>${esc(f.verdict)}</td><td title="${esc(f.drop_reason_text || f.summary)}">${esc(detail)}</td>`;
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
}

function receive(map, raw) {
  // The same map as a second ago (no traffic): nothing to redraw.
  const body = raw ? raw.replace(/^\{"at":\d+,/, "") : null;
  if (body && state.map && state.raw === body) {
    state.map.at = map.at;
    showStatus();
    return;
  }
  state.raw = body;
  map.byId = new Map(map.nodes.map((n) => [n.id, n]));
  map.edgeById = new Map(map.edges.map((e) => [e.id, e]));
  state.map = map;
  render();
}

$("map").addEventListener("click", (ev) => {
  const edge = ev.target.closest(".edge"), node = ev.target.closest(".node");
  if (node) select({ node: node.dataset.id });
  else if (edge) select({ edge: edge.dataset.id, kind: edge.dataset.kind });
});
$("namespaces").addEventListener("change", () => {
  state.picked = new Set([...$("namespaces").querySelectorAll("input:checked")].map((i) => i.value));
  render();
});
$("all-namespaces").addEventListener("click", () => {
  state.picked = new Set();
  $("namespaces").querySelectorAll("input").forEach((i) => { i.checked = false; });
  render();
});
$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "resume" : "pause";
  if (!state.paused) {
    state.held.forEach(addRow);
    state.held = [];
    $("table-status").textContent = "";
  }
});
$("copy").addEventListener("click", async () => {
  const text = $("command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy").textContent = "copied";
  } catch {
    const r = document.createRange();  // no clipboard access: select it
    r.selectNodeContents($("command"));
    getSelection().removeAllRanges();
    getSelection().addRange(r);
    $("copy").textContent = "selected";
  }
  setTimeout(() => { $("copy").textContent = "copy"; }, 1500);
});
window.addEventListener("resize", () => render());

// What would a policy change do: the relay judges every recorded
// connection under the policies now and with the change (nothing is
// applied); the pairs whose verdict changes are listed and marked on the
// map.
$("open-check").addEventListener("click", () => {
  $("detail").hidden = true;
  $("check").hidden = false;
  render();
});
$("close-check").addEventListener("click", () => {
  $("check").hidden = true;
  state.changes = new Map();
  render();
});
$("run-check").addEventListener("click", async () => {
  $("check-status").textContent = "judging the recorded connections…";
  $("check-result").innerHTML = "";
  let report;
  try {
    const r = await fetch("api/policy/check", { method: "POST", body: $("change").value, headers: { "content-type": "application/yaml" } });
    report = await r.json();
    if (!r.ok) throw new Error(report.error || r.statusText);
  } catch (err) {
    $("check-status").textContent = `not checked: ${err.message}`;
    return;
  }
  state.changes = new Map(report.groups.map((g) => [`${g.client}\u2192${g.server}`, g.after.startsWith("denied") ? "deny" : "allow"]));
  $("check-status").textContent = report.groups.length
    ? `${report.changed} of ${report.judged} recorded connections would change their verdict`
    : `no recorded connection would change its verdict (${report.judged} judged, ${report.flows} flows)`;
  const refused = report.refused.map(([p, why]) =>
    `<div class="change"><b>refused by the compiler:</b> ${esc(p)}: ${esc(why)} (an invalid policy isolates what it selects)</div>`);
  $("check-result").innerHTML = refused.join("") + report.groups.map((g) =>
    `<div class="change${g.after.startsWith("denied") ? "" : " to-allowed"}">` +
    `<div><b>${esc(g.client)} \u2192 ${esc(g.server)} ${esc(g.port)}</b>: ${esc(g.now)} \u2192 ${esc(g.after)}, ${g.connections} connection${g.connections === 1 ? "" : "s"}</div>` +
    `<div class="rule">now: ${esc(g.now)} by ${esc(g.rule_now)}</div>` +
    `<div class="rule">after: ${esc(g.after)} by ${esc(g.rule_after)}</div></div>`).join("");
  render();
});

fetch("api/map").then((r) => r.json()).then(receive).catch(() => {});
const maps = new EventSource("api/map/events");
maps.addEventListener("map", (ev) => {
  const map = JSON.parse(ev.data);
  if (map.nodes) receive(map, ev.data);
});
maps.onerror = () => { $("status").textContent = "relay not answering; retrying…"; };
