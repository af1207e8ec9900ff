// A run's plot: the lr of each param group (left axis) and the metric (right axis) against the
// step, drawn by the vendored uPlot (a global, loaded before the modules) from the service's
// plot at screen resolution (GET /v1/runs/{id}/plot: min and max per bucket of steps, every
// non-hold decision whole). The decisions are markers (hover: the reason; click: the entry),
// superseded branches are drawn faded, resizes, rewinds, cooldowns and retimes are vertical
// lines. From the run's summary (GET /summary): its newest checkpoints (a square on the step
// axis, the ref on hover), its rollbacks (a diamond at the step in trouble: trigger, value,
// checkpoint, lrs on hover) and its ranks' disagreements (a circle with the rank). What the
// chart shows is also on window.lrpilotPlot, for the tests and anyone curious.

import { num } from "./api.js";

const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d"];
const METRIC = "#868e96";
const WHATIF = "#e8590c";
const MARK = { reduce: "#c92a2a", stop: "#000000", rewind: "#862e9c", scale: "#0b7285",
  start_cooldown: "#1864ab", retime: "#5f3dc4",
  checkpoint: "#2b8a3e", rollback: "#e03131", disagreement: "#f08c00" };
const VERTICAL = new Set(["rewind", "scale", "start_cooldown", "retime"]);
const HIT_PX = 8;

// One bucket becomes one point (a single step, or a flat span) or two: its max where it
// starts and its min where it ends, the shape of a falling lr or loss at any zoom.
export function expand(buckets, groups) {
  const x = [];
  const lr = Array.from({ length: groups }, () => []);
  const metric = [];
  for (const b of buckets) {
    const lo = b.step_lo;
    const hi = b.step_hi;
    const flat =
      (b.lr_min || []).every((v, g) => v === (b.lr_max || [])[g]) && b.metric_min === b.metric_max;
    const points = lo === hi ? [[lo, "max"]] : flat ? [[lo, "max"], [hi, "max"]] : [[lo, "max"], [hi, "min"]];
    for (const [step, side] of points) {
      x.push(step);
      for (let g = 0; g < groups; g++) lr[g].push(num((b[`lr_${side}`] || [])[g]));
      metric.push(num(b[`metric_${side}`]));
    }
  }
  return { x, lr, metric };
}

// uPlot wants one x for all series: the union of the plot's steps and the what-if's
function aligned(main, whatif, groups) {
  if (!whatif) return [main.x, ...main.lr, main.metric];
  const xs = Array.from(new Set([...main.x, ...whatif.x])).sort((a, b) => a - b);
  const at = (src, col) => {
    const m = new Map();
    src.x.forEach((s, i) => m.set(s, col[i]));
    return xs.map((s) => (m.has(s) ? m.get(s) : null));
  };
  const out = [xs];
  for (let g = 0; g < groups; g++) out.push(at(main, main.lr[g]));
  out.push(at(main, main.metric));
  for (let g = 0; g < groups; g++) out.push(at(whatif, whatif.lr[g]));
  return out;
}

/* global uPlot */

export class RunChart {
  // onPick(event): a marker clicked; onRange({from, to} | null): the user zoomed (null: reset)
  // xLabel: what the run's steps count ("step", or "samples" / "tokens": the run's clock)
  constructor(element, { groups, metricName, xLabel, onPick, onRange, tip }) {
    this.element = element;
    this.groups = groups;
    this.metricName = metricName || "metric";
    this.xLabel = xLabel || "step";
    this.onPick = onPick;
    this.onRange = onRange;
    this.tip = tip;
    this.log = false;
    this.plot = null;
    this.main = { x: [], lr: [], metric: [] };
    this.whatif = null;
    this.markers = [];
    this.guard = { checkpoints: [], rollbacks: [], disagreements: [] };
    this.u = null;
    this.rangeTimer = null;
    this.resize = () => this.u && this.u.setSize(this.size());
    window.addEventListener("resize", this.resize);
  }

  size() {
    return { width: Math.max(320, this.element.clientWidth || 800), height: 380 };
  }

  set(plot) {
    this.plot = plot;
    this.main = expand(plot.buckets || [], this.groups);
    this.render(false);
  }

  // The run's summary: what it says of checkpoints, rollbacks and ranks' disagreements
  setSummary(summary) {
    this.guard = {
      checkpoints: (summary && summary.checkpoints) || [],
      rollbacks: (summary && summary.rollbacks) || [],
      disagreements: (summary && summary.agreement && summary.agreement.disagreements) || [],
    };
  }

  setWhatIf(whatif) {
    this.whatif = whatif;
    this.render(true);
  }

  setLog(log) {
    this.log = log;
    this.render(true);
  }

  data() {
    const d = aligned(this.main, this.whatif, this.groups);
    if (!this.log) return d;
    // a log scale has no place for 0 (a warmup's first lr): a gap there
    const lrSeries = (i) => (i >= 1 && i <= this.groups) || i > this.groups + 1;
    return d.map((col, i) => (lrSeries(i) ? col.map((v) => (v !== null && v > 0 ? v : null)) : col));
  }

  options() {
    // an lr holds from its decision to the next: drawn as steps, not slopes
    const stepped = uPlot.paths.stepped({ align: 1 });
    const series = [{ label: this.xLabel }];
    for (let g = 0; g < this.groups; g++) {
      series.push({ label: `lr[${g}]`, scale: "lr", stroke: COLORS[g % COLORS.length], width: 2, paths: stepped,
        spanGaps: true, value: (u, v) => (v === null ? "–" : v.toPrecision(4)) });
    }
    series.push({ label: this.metricName, scale: "metric", stroke: METRIC, width: 1, spanGaps: true,
      value: (u, v) => (v === null ? "–" : v.toPrecision(4)) });
    if (this.whatif) {
      for (let g = 0; g < this.groups; g++) {
        series.push({ label: `what-if lr[${g}]`, scale: "lr", stroke: WHATIF, width: 2, dash: [6, 4], paths: stepped,
          spanGaps: true, value: (u, v) => (v === null ? "–" : v.toPrecision(4)) });
      }
    }
    return {
      ...this.size(),
      series,
      scales: { x: { time: false }, lr: { distr: this.log ? 3 : 1 }, metric: {} },
      axes: [
        { label: this.xLabel },
        { scale: "lr", label: this.log ? "lr (log)" : "lr", size: 70 },
        { scale: "metric", side: 1, label: this.metricName, grid: { show: false }, size: 70 },
      ],
      cursor: {
        drag: { x: true, y: false },
        // double click: the whole run again, asked of the service (not uPlot's reset, which
        // would only zoom out to the range already loaded)
        bind: { dblclick: () => () => { this.onRange(null); return null; } },
      },
      hooks: {
        draw: [(u) => this.drawOverlay(u)],
        setScale: [(u, key) => key === "x" && this.zoomed(u)],
      },
    };
  }

  render(rebuild) {
    const data = this.data();
    if (this.u && !rebuild) {
      this.u.setData(data);
    } else {
      if (this.u) this.u.destroy();
      this.u = new uPlot(this.options(), data, this.element);
      this.listen(this.u);
    }
    this.expose();
  }

  // A scale narrower than the data loaded is the user's zoom: ask for that range at full
  // resolution. (setData and a reset set the scale to the data's extent: never a request.)
  zoomed(u) {
    const x = this.main.x;
    if (!x.length) return;
    const { min, max } = u.scales.x;
    if (min <= x[0] && max >= x[x.length - 1]) return;
    clearTimeout(this.rangeTimer);
    this.rangeTimer = setTimeout(
      () => this.onRange({ from: Math.max(0, Math.floor(min)), to: Math.ceil(max) }), 120);
  }

  drawOverlay(u) {
    const ctx = u.ctx;
    const plot = this.plot || {};
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    // superseded branches: faded, beside the live one
    ctx.globalAlpha = 0.3;
    for (const branch of plot.superseded || []) {
      const part = expand(branch.buckets || [], this.groups);
      for (let g = 0; g < this.groups; g++) {
        ctx.strokeStyle = COLORS[g % COLORS.length];
        ctx.lineWidth = 2;
        ctx.setLineDash([2, 3]);
        ctx.beginPath();
        let last = null; // the previous point's y: steps, as the live branch is drawn
        part.x.forEach((s, i) => {
          const v = part.lr[g][i];
          if (v === null || (this.log && v <= 0)) return;
          const px = u.valToPos(s, "x", true);
          const py = u.valToPos(v, "lr", true);
          if (last === null) ctx.moveTo(px, py);
          else { ctx.lineTo(px, last); ctx.lineTo(px, py); }
          last = py;
        });
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    ctx.setLineDash([]);
    // the decisions: vertical lines for rewinds, resizes, cooldowns, retimes; a triangle on the lr otherwise
    const ratio = devicePixelRatio || 1;
    this.markers = [];
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    for (const event of plot.events || []) {
      if (event.action === "checkpoint") continue; // drawn with its ref, from the summary
      const colour = MARK[event.action] || "#e67700";
      const px = u.valToPos(event.step, "x", true);
      if (px < left - 1 || px > left + width + 1) continue;
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      let py;
      if (VERTICAL.has(event.action)) {
        ctx.setLineDash([4, 4]);
        ctx.beginPath();
        ctx.moveTo(px, top);
        ctx.lineTo(px, top + height);
        ctx.stroke();
        ctx.setLineDash([]);
        py = top + 14 * ratio;
        const resize = event.resize;
        const cooldown = event.cooldown;
        const label = resize ? `${resize.by === "world_size" ? "world" : resize.by} ${resize.to}`
          : cooldown ? `cooldown from ${cooldown.at_step}`
          : event.retime ? `retimed: ends at ${event.retime.horizon}` : event.action;
        ctx.fillText(label, px + 4 * ratio, py);
      } else {
        const lr = num((event.lrs || [])[0]);
        py = lr !== null && !(this.log && lr <= 0) ? u.valToPos(lr, "lr", true) : top + 6 * ratio;
        const r = 6 * ratio;
        ctx.beginPath();
        ctx.moveTo(px, py - r);
        ctx.lineTo(px - r, py + r * 0.8);
        ctx.lineTo(px + r, py + r * 0.8);
        ctx.closePath();
        ctx.fill();
      }
      // where the marker is, in the overlay's CSS pixels: for hover, click and the tests
      this.markers.push({ seq: event.seq, step: event.step, action: event.action,
        left: (px - left) / ratio, top: (py - top) / ratio, event });
    }
    this.drawGuard(u, ratio);
    ctx.restore();
    this.expose();
    if (this.plot) window.lrpilotReady = true;
  }

  // Checkpoints on the step axis, rollbacks at the top (at the step in trouble, on the branch
  // the rollback left), disagreements above the step axis with their rank: one shape each.
  drawGuard(u, ratio) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const r = 5 * ratio;
    const at = (step) => {
      const px = u.valToPos(step, "x", true);
      return px < left - 1 || px > left + width + 1 ? null : px;
    };
    const mark = (action, step, py, event, tip, shape) => {
      const px = at(step);
      if (px === null) return;
      ctx.fillStyle = MARK[action];
      ctx.strokeStyle = MARK[action];
      ctx.beginPath();
      shape(px, py);
      ctx.fill();
      this.markers.push({ seq: event.seq, step, action, left: (px - left) / ratio,
        top: (py - top) / ratio, event, tip });
    };
    const square = (px, py) => ctx.rect(px - r * 0.8, py - r * 0.8, r * 1.6, r * 1.6);
    const diamond = (px, py) => {
      ctx.moveTo(px, py - r * 1.3); ctx.lineTo(px + r, py); ctx.lineTo(px, py + r * 1.3); ctx.lineTo(px - r, py);
      ctx.closePath();
    };
    const circle = (px, py) => ctx.arc(px, py, r, 0, 2 * Math.PI);
    for (const c of this.guard.checkpoints) {
      mark("checkpoint", c.step, top + height - r, c,
        `checkpoint at step ${c.step} (seq ${c.seq}): ${c.ref}`, square);
    }
    for (const b of this.guard.rollbacks) {
      const c = b.checkpoint || {};
      mark("rollback", b.step, top + 2 * r, b,
        `rollback at step ${b.step} (seq ${b.seq}): ${b.trigger}, value ${b.value}, to checkpoint ` +
        `${c.ref} (step ${c.step}), lrs ${(b.lrs || []).join(", ")}: ${b.reason}`, diamond);
    }
    for (const d of this.guard.disagreements) {
      const py = top + height - 4 * r;
      mark("disagreement", d.step, py, d,
        `rank ${d.rank} disagrees at step ${d.step} (seq ${d.seq}): applied ${String(d.got).slice(0, 12)}…, ` +
        `the run's ${String(d.expected).slice(0, 12)}…`, circle);
      const px = at(d.step);
      if (px !== null) ctx.fillText(`rank ${d.rank}`, px + r + 2 * ratio, py + 4 * ratio);
    }
  }

  nearest(e) {
    const rect = this.u.over.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const y = e.clientY - rect.top;
    let best = null;
    let bestD = HIT_PX;
    for (const m of this.markers) {
      const d = Math.hypot(m.left - x, VERTICAL.has(m.action) ? 0 : m.top - y);
      if (d <= bestD) { best = m; bestD = d; }
    }
    return best;
  }

  listen(u) {
    u.over.addEventListener("mousemove", (e) => {
      const m = this.nearest(e);
      if (!m) { this.tip.hidden = true; return; }
      const ev = m.event;
      this.tip.textContent = m.tip || `${ev.action} at step ${ev.step} (seq ${ev.seq}): ${ev.reason}`;
      this.tip.style.left = `${e.clientX + 12}px`;
      this.tip.style.top = `${e.clientY + 12}px`;
      this.tip.hidden = false;
    });
    u.over.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    u.over.addEventListener("click", (e) => {
      const m = this.nearest(e);
      if (m) this.onPick(m.event);
    });
  }

  expose() {
    window.lrpilotPlot = {
      x: this.main.x, lr: this.main.lr, metric: this.main.metric,
      events: (this.plot && this.plot.events) || [],
      superseded: (this.plot && this.plot.superseded) || [],
      range: this.plot ? { from: this.plot.from_step, to: this.plot.to_step } : null,
      whatif: this.whatif, markers: this.markers.map(({ event, tip, ...m }) => m), log: this.log,
      xLabel: this.xLabel,
    };
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    clearTimeout(this.rangeTimer);
    if (this.u) this.u.destroy();
    this.u = null;
  }
}

// A run list's sparkline: the lr of the first group, drawn into a small canvas
export function sparkline(canvas, plot) {
  const { x, lr } = expand(plot.buckets || [], 1);
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const ys = lr[0].filter((v) => v !== null);
  if (x.length < 1 || !ys.length) return;
  const [x0, x1] = [x[0], x[x.length - 1]];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  ctx.strokeStyle = COLORS[0];
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  if (x1 === x0) { // one step so far: a level line
    ctx.moveTo(1, h / 2);
    ctx.lineTo(w - 1, h / 2);
  }
  let started = false;
  x.forEach((s, i) => {
    const v = lr[0][i];
    if (v === null || x1 === x0) return;
    const px = ((s - x0) / (x1 - x0)) * (w - 2) + 1;
    const py = y1 > y0 ? h - 2 - ((v - y0) / (y1 - y0)) * (h - 4) : h / 2;
    if (started) ctx.lineTo(px, py); else ctx.moveTo(px, py);
    started = true;
  });
  ctx.stroke();
}
