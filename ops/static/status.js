// pvaflow status page: polls /status, draws the pipeline (SVG) and the stage table, and
// refreshes the thumbnails of the topics the monitor was started with. No dependencies.
"use strict";

const STATUS_PERIOD_MS = 1000;
const THUMB_PERIOD_MS = 1500;
const TIMEOUT_MS = 4000;
const SVG = "http://www.w3.org/2000/svg";

const fmt = new Intl.NumberFormat("en-US");
const fmtRate = new Intl.NumberFormat("en-US", {maximumFractionDigits: 1, minimumFractionDigits: 1});

function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
function count(v) { return fmt.format(num(v)); }
function rate(v) { return fmtRate.format(num(v)); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

async function fetchWithTimeout(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    return await fetch(url, {cache: "no-store", signal: ctl.signal});
  } finally {
    clearTimeout(timer);
  }
}

// -- header ---------------------------------------------------------------------------------

function setConnection(ok, text) {
  const conn = document.getElementById("conn");
  conn.className = "conn " + (ok ? "live" : "down");
  document.getElementById("conn-text").textContent = text;
}

function setLost(view) {
  const lost = num(view.lost_total);
  const pill = document.getElementById("lost-total");
  pill.textContent = "lost in the pipeline: " + count(lost);
  pill.dataset.value = String(lost);
  pill.className = "pill" + (lost > 0 ? " bad" : "");
}

// -- graph ----------------------------------------------------------------------------------

const W = 236, H = 96, GAP = 150, ROW = 22, PAD = 14;

function stateColour(s) {
  if (s.running === s.components && s.components > 0) return "#1f9d55";
  if (s.running > 0) return "#d98a00";
  return "#9aa5b1";
}

function columns(stages) {
  const cols = [];
  let last = null;
  for (const s of stages) {
    if (s.kind !== last) { cols.push([]); last = s.kind; }
    cols[cols.length - 1].push(s);
  }
  return cols;
}

function feeds(a, b) {  // does stage a write a topic stage b reads?
  const out = a.topics_out || [], inp = b.topics_in || [];
  return out.some((t) => inp.includes(t));
}

function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function drawGraph(stages) {
  const box = document.getElementById("graph");
  if (!stages.length) {
    box.replaceChildren(el("p", {class: "empty"}, "no component has reported yet"));
    return;
  }
  const cols = columns(stages);
  const rows = Math.max(...cols.map((c) => c.length));
  const width = PAD * 2 + cols.length * W + (cols.length - 1) * GAP;
  const height = PAD * 2 + rows * H + (rows - 1) * ROW;
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                           "aria-label": "pipeline graph"});
  root.style.maxWidth = width + "px";
  const defs = svg("defs");
  const marker = svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse"});
  marker.appendChild(svg("path", {d: "M0,0 L10,5 L0,10 z", fill: "#8795a5"}));
  defs.appendChild(marker);
  root.appendChild(defs);

  const pos = new Map();
  cols.forEach((col, i) => {
    const top = PAD + ((rows - col.length) * (H + ROW)) / 2;
    col.forEach((s, j) => pos.set(s.stage, {x: PAD + i * (W + GAP), y: top + j * (H + ROW)}));
  });

  const edges = svg("g"), labels = svg("g"), nodes = svg("g");
  for (let i = 1; i < cols.length; i++) {
    const prev = cols[i - 1];
    for (const b of cols[i]) {
      let from = prev.filter((a) => feeds(a, b));
      if (!from.length) from = prev;  // topics unknown: follow the stage order
      const pb = pos.get(b.stage);
      const y2 = pb.y + H / 2;
      for (const a of from) {
        const pa = pos.get(a.stage);
        const x1 = pa.x + W, y1 = pa.y + H / 2, x2 = pb.x - 2;
        const mid = (x1 + x2) / 2;
        edges.appendChild(svg("path", {class: "edge", "marker-end": "url(#arrow)",
                                       d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`}));
      }
      const topics = (b.topics_in && b.topics_in.length) ? b.topics_in
        : [...new Set(from.flatMap((a) => a.topics_out || []))];
      if (topics.length) {
        const text = shorten(topics.join(", "), 21);
        const tw = Math.min(GAP - 16, 12 + text.length * 6.2);
        const cx = pb.x - GAP / 2, g = svg("g", {class: "topic", "data-topics": topics.join(",")});
        g.appendChild(svg("title", {}, "topic " + topics.join(", ")));
        g.appendChild(svg("rect", {x: cx - tw / 2, y: y2 - 11, width: tw, height: 22, rx: 11}));
        g.appendChild(svg("text", {x: cx, y: y2 + 4, "text-anchor": "middle"}, text));
        labels.appendChild(g);
      }
    }
  }

  for (const s of stages) {
    const p = pos.get(s.stage);
    const g = svg("g", {class: "node", "data-stage": s.stage, transform: `translate(${p.x},${p.y})`});
    g.appendChild(svg("rect", {class: "box", width: W, height: H, rx: 8}));
    g.appendChild(svg("rect", {class: "state", width: 6, height: H - 2, x: 1, y: 1, rx: 3,
                               fill: stateColour(s)}));
    const title = svg("text", {class: "title", x: 16, y: 21}, s.kind);
    title.appendChild(svg("title", {}, s.stage));
    g.appendChild(title);
    g.appendChild(svg("text", {class: "group", x: 16, y: 38}, shorten(s.group, 32)));
    g.appendChild(svg("text", {class: "line", x: 16, y: 56},
                      `${s.running}/${s.components} up · ${rate(s.rate_out)} frames/s`));
    g.appendChild(svg("text", {class: "line", x: 16, y: 72},
                      `in ${count(s.frames_in)} · out ${count(s.frames_out)}`));
    const lost = num(s.lost_total);
    g.appendChild(svg("text", {class: lost > 0 ? "lost" : "line", x: 16, y: 88},
                      `lost ${count(lost)} · lag ${count(s.lag)}`));
    nodes.appendChild(g);
  }
  root.append(edges, labels, nodes);
  box.replaceChildren(root);
}

// -- tables ---------------------------------------------------------------------------------

function cell(stage, field, value, text, cls) {
  const td = el("td", {"data-stage": stage, "data-field": field}, text);
  td.dataset.value = String(value);
  if (cls) td.className = cls;
  return td;
}

function reasons(lost) {
  const parts = Object.entries(lost || {}).filter(([, n]) => num(n) > 0)
    .map(([r, n]) => `${r}=${count(n)}`);
  return parts.length ? parts.join(" ") : "–";
}

function others(extras) {
  const parts = Object.entries(extras || {}).filter(([, n]) => num(n) !== 0)
    .map(([k, n]) => `${k}=${count(n)}`);
  return parts.length ? parts.join(" ") : "–";
}

function drawStages(stages) {
  const body = document.querySelector("#stages tbody");
  const rows = stages.map((s) => {
    const tr = el("tr", {"data-stage": s.stage});
    const lost = num(s.lost_total);
    tr.append(
      cell(s.stage, "stage", s.stage, s.stage, "l stage"),
      cell(s.stage, "up", s.running, `${s.running}/${s.components}`),
      cell(s.stage, "frames_in", num(s.frames_in), count(s.frames_in)),
      cell(s.stage, "frames_out", num(s.frames_out), count(s.frames_out)),
      cell(s.stage, "rate_in", num(s.rate_in), rate(s.rate_in)),
      cell(s.stage, "rate_out", num(s.rate_out), rate(s.rate_out)),
      cell(s.stage, "lag", num(s.lag), count(s.lag)),
      cell(s.stage, "lost_total", lost, count(lost), lost > 0 ? "bad" : ""),
      cell(s.stage, "lost", lost, reasons(s.lost), "l" + (lost > 0 ? " bad" : " muted")),
      cell(s.stage, "extras", 0, others(s.extras), "l muted"));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", {colspan: "10", class: "l muted"}, "no stages yet"));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function drawComponents(components) {
  const body = document.querySelector("#components tbody");
  body.replaceChildren(...components.map((c) => {
    const tr = el("tr", {"data-component": c.component});
    const state = el("td", {class: "l"});
    state.appendChild(el("span", {class: "state " + c.state}, c.state));
    tr.append(el("td", {class: "l"}, c.component), state,
              el("td", {}, num(c.age).toFixed(1) + " s"), el("td", {}, count(c.frames_in)),
              el("td", {}, count(c.frames_out)), el("td", {}, rate(c.rate_out)));
    return tr;
  }));
}

// -- polling --------------------------------------------------------------------------------

async function pollStatus() {
  try {
    const r = await fetchWithTimeout("/status");
    if (!r.ok) throw new Error("HTTP " + r.status);
    const view = await r.json();
    const stages = view.stages || [];
    drawGraph(stages);
    drawStages(stages);
    drawComponents(view.components || []);
    setLost(view);
    setConnection(true, "live · " + new Date().toLocaleTimeString("en-GB"));
  } catch (err) {
    setConnection(false, "no answer from the monitor");
  } finally {
    setTimeout(pollStatus, STATUS_PERIOD_MS);
  }
}

function thumbTopics() {
  try {
    const topics = JSON.parse(document.body.dataset.thumbnailTopics || "[]");
    return Array.isArray(topics) ? topics : [];
  } catch (err) {
    return [];
  }
}

function setupThumb(topic) {
  const fig = el("figure", {"data-topic": topic});
  const frame = el("div", {class: "frame"});
  const img = el("img", {alt: "latest frame of " + topic, "data-topic": topic});
  img.hidden = true;
  const waiting = el("span", {class: "waiting"}, "waiting for a frame…");
  frame.append(img, waiting);
  const caption = el("figcaption");
  caption.append(el("b", {}, topic), el("span", {class: "meta"}, ""));
  fig.append(frame, caption);
  document.getElementById("thumbs").appendChild(fig);
  let url = null;

  async function refresh() {
    try {
      const r = await fetchWithTimeout("/thumbnail/" + encodeURIComponent(topic) + ".png");
      if (r.status === 200) {
        const blob = await r.blob();
        const next = URL.createObjectURL(blob);
        img.src = next;
        if (url) URL.revokeObjectURL(url);
        url = next;
        img.hidden = false;
        waiting.hidden = true;
        const uid = r.headers.get("X-Unique-Id") || "?";
        const shape = r.headers.get("X-Frame-Shape") || "?";
        img.dataset.uid = uid;
        img.dataset.size = String(blob.size);
        caption.querySelector(".meta").textContent =
          `uniqueId ${uid} · ${shape.replace(/x/g, " × ")}`;
      }
    } catch (err) {
      // the status line already says when the monitor does not answer
    } finally {
      setTimeout(refresh, THUMB_PERIOD_MS);
    }
  }
  refresh();
}

function main() {
  const topics = thumbTopics();
  if (topics.length) {
    document.getElementById("thumbs-card").hidden = false;
    topics.forEach(setupThumb);
  }
  pollStatus();
}

main();
