// fedgrpc dashboard: renders GetStatus JSON pushed over server-sent events.
// No framework, no build step, nothing fetched from elsewhere. Every value
// from the coordinator goes into the page as text (textContent), never as
// markup: client names are chosen by clients.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const APPLIED = "ROUND_OUTCOME_APPLIED";
const GUARD = "divergence_guard";

function $(id) { return document.getElementById(id); }
function num(v) { return v === undefined || v === null || v === "" ? 0 : Number(v); }

function svgEl(parent, tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  parent.appendChild(el);
  return el;
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function short(phase) {
  return String(phase || "").replace("ROUND_PHASE_", "").toLowerCase().replace(/_/g, " ");
}

function guardTrip(r) {
  return r.secure_abort_reason === GUARD || /guard/i.test(r.reason || "");
}

// Linear scale from [d0, d1] to [r0, r1]; a flat domain maps to the middle.
function scale(d0, d1, r0, r1) {
  if (d1 === d0) return () => (r0 + r1) / 2;
  return (v) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0);
}

// Clears `svg`, draws the grid and both axes' labels; returns the scales.
// `inset` keeps the first and last bars clear of the y labels and the edge.
function frame(svg, w, h, pad, ymin, ymax, rounds, yfmt, inset = 0) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const x = scale(rounds[0], rounds[rounds.length - 1], pad.l + inset, w - pad.r - inset);
  const y = scale(ymin, ymax, h - pad.b, pad.t);
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4;
    svgEl(svg, "line", { class: "grid", x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v) });
    svgEl(svg, "text", { class: "axis", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, yfmt(v));
  }
  const step = Math.max(1, Math.ceil(rounds.length / 10));
  rounds.forEach((r, i) => {
    if (i % step === 0 || i === rounds.length - 1) {
      svgEl(svg, "text", { class: "axis", x: x(r), y: h - pad.b + 16, "text-anchor": "middle" }, String(r));
    }
  });
  return { x, y };
}

function drawLoss(rounds) {
  const svg = $("loss-curve");
  const ids = rounds.map((r) => num(r.round_id));
  if (!ids.length) { while (svg.firstChild) svg.removeChild(svg.firstChild); return; }
  const applied = rounds.filter((r) => r.outcome === APPLIED);
  // Validation: what clients measured of the model each round started from.
  const evals = rounds.filter((r) => num(r.eval_reports) > 0);
  const losses = applied.map((r) => num(r.mean_train_loss))
    .concat(evals.map((r) => num(r.mean_eval_loss)));
  const lo = losses.length ? Math.min(...losses) : 0;
  const hi = losses.length ? Math.max(...losses) : 1;
  const span = hi - lo || Math.abs(hi) || 1;
  const floor = lo >= 0 ? Math.max(0, lo - 0.05 * span) : lo - 0.05 * span;
  const { x, y } = frame(svg, 800, 240, { l: 56, r: 16, t: 12, b: 28 },
    floor, hi + 0.05 * span, ids, (v) => v.toPrecision(3), 8);
  if (applied.length > 1) {
    const pts = applied.map((r) => `${x(num(r.round_id))},${y(num(r.mean_train_loss))}`);
    svgEl(svg, "polyline", { class: "curve", points: pts.join(" ") });
  }
  if (evals.length > 1) {
    const pts = evals.map((r) => `${x(num(r.round_id))},${y(num(r.mean_eval_loss))}`);
    svgEl(svg, "polyline", { class: "curve eval", points: pts.join(" ") });
  }
  for (const r of evals) {
    const p = svgEl(svg, "circle", { class: "point eval", cx: x(num(r.round_id)),
      cy: y(num(r.mean_eval_loss)), r: 3, "data-round": num(r.round_id) });
    svgEl(p, "title", {}, `round ${r.round_id}: validation loss ` +
      `${num(r.mean_eval_loss).toPrecision(4)} of its starting model (${r.eval_reports} reports)`);
  }
  for (const r of rounds) {
    const cx = x(num(r.round_id));
    if (r.outcome === APPLIED) {
      const p = svgEl(svg, "circle", {
        class: "point applied" + (r.secure ? " secure" : ""), cx, cy: y(num(r.mean_train_loss)),
        r: 4, "data-round": num(r.round_id), "data-loss": num(r.mean_train_loss),
      });
      svgEl(p, "title", {}, `round ${r.round_id}: loss ${num(r.mean_train_loss).toPrecision(4)}, ` +
        `${r.num_updates || 0} updates${r.secure ? ", secure" : ""}`);
    } else {
      const g = svgEl(svg, "g", { class: "mark skipped", "data-round": num(r.round_id) });
      svgEl(g, "line", { x1: cx - 5, x2: cx + 5, y1: 207, y2: 217 });
      svgEl(g, "line", { x1: cx - 5, x2: cx + 5, y1: 217, y2: 207 });
      svgEl(g, "title", {}, `round ${r.round_id} skipped: ${r.reason || "no reason given"}`);
    }
    if (guardTrip(r)) {
      const t = svgEl(svg, "polygon", { class: "mark guard", "data-round": num(r.round_id),
        points: `${cx},14 ${cx - 6},24 ${cx + 6},24` });
      svgEl(t, "title", {}, `round ${r.round_id}: divergence guard tripped`);
    }
  }
}

function drawBytes(rounds, numParameters) {
  const svg = $("bytes-chart");
  const ids = rounds.map((r) => num(r.round_id));
  if (!ids.length) return;
  const dense = rounds.map((r) => num(r.num_updates) * numParameters * 4);
  const up = rounds.map((r) => num(r.bytes_received));
  const down = rounds.map((r) => num(r.bytes_sent));
  const top = Math.max(1, ...dense, ...up, ...down);
  const bw = Math.max(2, Math.min(14, 240 / ids.length - 3));
  const { x, y } = frame(svg, 600, 220, { l: 64, r: 8, t: 8, b: 24 }, 0, top, ids,
    (v) => bytes(Math.round(v)), bw + 6);
  rounds.forEach((r, i) => {
    for (const [cls, v, dx] of [["bar up", up[i], -bw], ["bar down", down[i], 0]]) {
      const bar = svgEl(svg, "rect", { class: cls, x: x(ids[i]) + dx, y: y(v), width: bw,
        height: Math.max(0, y(0) - y(v)), "data-round": ids[i] });
      svgEl(bar, "title", {}, `round ${ids[i]}: ${bytes(up[i])} up, ${bytes(down[i])} down, ` +
        `dense fp32 up ${bytes(dense[i])}`);
    }
    svgEl(svg, "line", { class: "dense", x1: x(ids[i]) - bw - 2, x2: x(ids[i]) + 2,
      y1: y(dense[i]), y2: y(dense[i]) });
  });
  const totalUp = up.reduce((a, b) => a + b, 0);
  const totalDense = dense.reduce((a, b) => a + b, 0);
  $("bytes-note").textContent = totalDense
    ? `last ${ids.length} rounds: ${bytes(totalUp)} up, ${(totalDense / Math.max(1, totalUp)).toFixed(1)}x ` +
      `less than dense fp32 (dashed: ${numParameters.toLocaleString()} parameters x 4 B x updates)`
    : "";
}

// Seconds of each round, stacked: what the coordinator did, then waiting.
const PARTS = [
  ["ingest", (r) => num(r.ingest_s)],
  ["unmask", (r) => num(r.unmask_s)],
  ["apply", (r) => num(r.apply_s)],
  ["checkpoint", (r) => num(r.checkpoint_s)],
];

function drawTimes(rounds) {
  const svg = $("time-chart");
  const ids = rounds.map((r) => num(r.round_id));
  if (!ids.length) return;
  // duration_s covers the wait, ingest, unmask and apply; the checkpoint follows it.
  const totals = rounds.map((r) => num(r.duration_s) + num(r.checkpoint_s));
  const top = Math.max(0.001, ...totals);
  const bw = Math.max(2, Math.min(24, 480 / ids.length - 4));
  const { x, y } = frame(svg, 600, 220, { l: 48, r: 8, t: 8, b: 24 }, 0, top, ids,
    (v) => v.toPrecision(2), bw / 2 + 6);
  rounds.forEach((r, i) => {
    const parts = PARTS.map(([cls, get]) => [cls, Math.max(0, get(r))]);
    const busy = parts.reduce((a, [, v]) => a + v, 0);
    parts.push(["rest", Math.max(0, totals[i] - busy)]);
    let base = 0;
    for (const [cls, v] of parts) {
      if (v <= 0) continue;
      const rect = svgEl(svg, "rect", { class: cls, x: x(ids[i]) - bw / 2, y: y(base + v), width: bw,
        height: Math.max(0, y(base) - y(base + v)), "data-round": ids[i] });
      svgEl(rect, "title", {}, `round ${ids[i]}: ${cls} ${v.toFixed(3)} s of ${totals[i].toFixed(3)} s`);
      base += v;
    }
  });
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function drawClients(status, rounds) {
  const tbody = $("clients").querySelector("tbody");
  const last = rounds.length ? rounds[rounds.length - 1] : null;
  const selected = new Set(last ? last.selected_clients || [] : []);
  const everyone = !last || !(last.selected_clients || []).length;
  const rows = [];
  for (const c of status.clients || []) {
    const tr = document.createElement("tr");
    tr.dataset.client = c.client_id;
    if (!c.connected) tr.className = "gone";
    const excluded = num(c.excluded_until_round) > num(status.round_id);
    const state = excluded ? `excluded (${c.exclusion_reason || "?"})` : c.connected ? "connected" : "left";
    cell(tr, c.client_id);
    cell(tr, c.name || "");
    cell(tr, state);
    cell(tr, String(num(c.updates_accepted)), "num");
    cell(tr, String(num(c.samples_contributed)), "num");
    cell(tr, num(c.updates_accepted) ? num(c.last_train_loss).toPrecision(4) : "-", "num");
    cell(tr, everyone ? "all" : selected.has(c.client_id) ? "yes" : "no");
    const trust = c.trust_state ? `${num(c.trust_score).toFixed(2)} ${c.trust_state}` : num(c.trust_score).toFixed(2);
    cell(tr, trust, "num");
    cell(tr, num(c.record_dp_epsilon) ? num(c.record_dp_epsilon).toFixed(2) : "-", "num");
    cell(tr, String(num(c.last_round)), "num");
    cell(tr, bytes(num(c.bytes_received)), "num");
    cell(tr, bytes(num(c.bytes_sent)), "num");
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  $("client-count").textContent = `(${rows.length} of ${num(status.total_clients)})`;
}

function render(status) {
  const rounds = status.recent_rounds || [];
  $("run-id").textContent = "run " + (status.run_id || "");
  $("round").textContent = String(num(status.round_id));
  $("phase").textContent = short(status.phase);
  $("version").textContent = String(num(status.model_version));
  $("mode").textContent = status.round_mode || "sync";
  $("goodput").textContent = num(status.compute_offered_s) ? (100 * num(status.goodput)).toFixed(1) + " %" : "-";
  const connected = (status.clients || []).filter((c) => c.connected).length;
  $("connected").textContent = `${connected} / ${num(status.total_clients)}`;
  $("traffic").textContent = `${bytes(num(status.bytes_received))} / ${bytes(num(status.bytes_sent))}`;
  $("epsilon").textContent = status.privacy && status.privacy !== "off"
    ? num(status.privacy_epsilon).toFixed(3) + (num(status.max_epsilon) ? ` of ${num(status.max_epsilon)}` : "")
    : "off";
  const banner = $("banner");
  banner.hidden = !status.not_serving;
  banner.textContent = status.not_serving ? "NOT SERVING: " + (status.not_serving_reason || "") : "";
  drawLoss(rounds);
  drawBytes(rounds, num(status.num_parameters));
  drawTimes(rounds);
  drawClients(status, rounds);
  $("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
  document.body.dataset.round = String(num(status.round_id));
}

function connect() {
  const live = $("live");
  const source = new EventSource("/api/v1/events");
  source.addEventListener("status", (event) => {
    live.textContent = "live";
    live.className = "badge on";
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    live.textContent = source.readyState === EventSource.CLOSED ? "disconnected (reload)" : "reconnecting";
    live.className = "badge off";
  };
}

document.addEventListener("DOMContentLoaded", connect);
