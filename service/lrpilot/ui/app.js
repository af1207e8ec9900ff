// The dashboard's pages, routed by the URL's fragment: #/runs (the list), #/runs/ID (a run),
// #/policies, #/login. Plain ES modules, no build step: what is here is what runs.

import { ApiError, call, get, post, url } from "./api.js";
import { RunChart, sparkline } from "./chart.js";
import { field, h, lrs, when } from "./dom.js";
import { whatIfForm } from "./whatif.js";

const LIVE_MS = 1500; // a training run's new decisions appear within 2 s
const PAGE = 50;
const MAX_GROUPS = 64; // the plot endpoint draws the first 64 param groups of a run
const main = document.getElementById("main");
const tip = document.getElementById("tip");
let me = null; // GET /ui/whoami
let policyList = null; // GET /v1/policies, once: released versions never change

function policies() {
  if (!policyList) policyList = get("/v1/policies").catch((error) => { policyList = null; throw error; });
  return policyList;
}
let leave = () => {}; // what the current page stops (its timers) when another opens

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parse() {
  const [path, query] = (location.hash.replace(/^#/, "") || "/runs").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
}

function show(...children) {
  main.replaceChildren(...children);
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401 && !(me && me.open_mode)) {
    go("#/login");
    return h("p", { class: "muted" }, "Log in to see the runs.");
  }
  return h("p", { class: "error" }, String(error.message || error));
}

async function whoami() {
  try {
    me = await get("/ui/whoami");
  } catch (error) {
    // 401: nobody logged in (and not open mode): the login form
    me = error instanceof ApiError && error.status === 401 ? { token: null, open_mode: false } : null;
  }
  const who = document.getElementById("who");
  const logout = document.getElementById("logout");
  if (me && me.open_mode) who.textContent = "open mode (no login needed on this machine)";
  else if (me && me.token) who.textContent = `${me.token} · project ${me.project} · ${me.role}`;
  else who.textContent = "";
  logout.hidden = !(me && me.token);
}

function canRewind() {
  return !!me && (me.open_mode || me.role === "admin");
}

async function route() {
  document.title = "lrpilot";
  leave();
  leave = () => {};
  tip.hidden = true;
  const { parts, query } = parse();
  if (parts[0] === "login") return loginPage();
  if (me && !me.open_mode && !me.token) return go("#/login");
  if (parts[0] === "runs" && parts.length > 1) return runPage(parts[1]);
  if (parts[0] === "policies") return policiesPage();
  return runsPage(query);
}

// ---------------------------------------------------------------- login

function loginPage() {
  const token = h("input", { type: "password", name: "token", id: "token", autocomplete: "current-password", required: true });
  const message = h("p", { class: "error" });
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "Your lrpilot token (lrpilot token create). It is kept in an HttpOnly cookie."),
    h("label", { for: "token" }, "token"), token, h("button", { type: "submit" }, "Log in"), message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await post("/ui/login", { token: token.value });
      await whoami();
      go("#/runs");
    } catch (error) {
      message.textContent = error.message;
    }
  });
  show(form);
  token.focus();
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await post("/ui/logout");
  } finally {
    await whoami();
    go("#/login");
  }
});

// ---------------------------------------------------------------- runs

async function runsPage(query) {
  const filters = { policy: query.get("policy") || "", label: query.get("label") || "", state: query.get("state") || "" };
  const after = query.get("after") || "";
  const input = (name, placeholder) => h("input", { name, value: filters[name], placeholder });
  const state = h("select", { name: "state" },
    ...["", "active", "stopped"].map((s) => h("option", { value: s, selected: s === filters.state }, s || "any")));
  const form = h("form", { class: "filters", id: "run-filters" },
    field("policy", input("policy", "plateau or plateau@1")),
    field("label", input("label", "key:value")),
    field("state", state),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    go(`#/runs?${q}`);
  });
  const body = h("tbody");
  const pager = h("div", { class: "toolbar" });
  show(h("h1", {}, "Runs"), form,
    h("table", { id: "runs" }, h("thead", {}, h("tr", {},
      ...["run", "policy", "labels", "state", "current lrs", "last step", "last decision", "lr"].map((t) => h("th", {}, t)))), body),
    pager);
  let page;
  try {
    page = await get("/v1/runs", { ...filters, after, limit: PAGE, sort: "activity" });
  } catch (error) {
    return show(h("h1", {}, "Runs"), form, failure(error));
  }
  if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No runs.")));
  for (const run of page.items) {
    const canvas = h("canvas", { class: "spark", width: 120, height: 28 });
    const labels = Object.entries(run.labels || {}).map(([k, v]) => `${k}:${v}`).join(" ");
    const open = () => go(`#/runs/${encodeURIComponent(run.run_id)}`);
    body.append(h("tr", { class: "clickable", "data-run": run.run_id, onclick: open },
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.run_id)),
      h("td", {}, `${run.policy.name}@${run.policy.version}`),
      h("td", {}, labels),
      h("td", {}, run.last_action === "stop" ? "stopped" : "active"),
      h("td", { class: "num" }, lrs(run.lrs)),
      h("td", { class: "num" }, run.last_step ?? "–"),
      h("td", {}, when(run.last_decision_at)),
      h("td", {}, canvas)));
    if (run.sparkline) sparkline(canvas, { buckets: run.sparkline });
    else get(`/v1/runs/${encodeURIComponent(run.run_id)}/plot`, { points: 50 })
      .then((plot) => sparkline(canvas, plot), () => {});
  }
  const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  if (after) pager.append(h("a", { href: `#/runs?${q}` }, "First page"));
  if (page.next) {
    q.set("after", page.next);
    pager.append(h("a", { href: `#/runs?${q}`, id: "next-page" }, "Next page"));
  }
}

// ---------------------------------------------------------------- a run

async function runPage(runId) {
  document.title = `${runId} · lrpilot`;
  const path = `/v1/runs/${encodeURIComponent(runId)}`;
  let run;
  try {
    run = await get(path);
  } catch (error) {
    return show(h("h1", {}, runId), failure(error));
  }
  const groups = Math.min(run.base_lrs.length, MAX_GROUPS);
  const facts = h("div", { class: "facts", id: "facts" });
  const guardFacts = h("div", { class: "facts", id: "guard-facts" });
  const badge = h("span", { id: "verify-badge" });
  const detail = h("div", { id: "decision", class: "panel", hidden: true });
  const chartBox = h("div", { class: "chart", id: "chart" });
  const logScale = h("input", { type: "checkbox", id: "log-scale" });
  const live = h("span", { class: "muted", id: "live" });
  const rewindStep = h("input", { type: "number", min: 0, id: "rewind-step", placeholder: "to step" });
  const plotNote = h("p", { class: "muted", id: "plot-note" });
  const toolbar = h("div", { class: "toolbar" },
    h("button", { type: "button", id: "verify", onclick: () => verify() }, "Verify"),
    badge,
    h("a", { href: url(`${path}/export`).pathname, download: `${runId}.ndjson`, id: "export" }, "Export bundle"),
    h("label", {}, logScale, " log-scale lr"),
    h("span", { title: "when zoomed: half a window to earlier or later steps" },
      h("button", { type: "button", id: "pan-earlier", onclick: () => pan(-1) }, "◀"),
      h("button", { type: "button", id: "pan-later", onclick: () => pan(1) }, "▶")),
    canRewind() ? h("span", {}, rewindStep, h("button", { type: "button", id: "rewind", onclick: () => rewind() }, "Rewind")) : null,
    live);
  const table = decisionTable(path, (d) => showDecision(d));
  const whatIfBox = h("div", { id: "whatif" });
  show(h("h1", {}, run.run_id), facts, guardFacts, toolbar, chartBox, plotNote, detail,
    h("h2", {}, "What if"), whatIfBox, h("h2", {}, "Decisions"), table.element);

  let range = null; // the zoomed steps, or null: the whole run
  const chart = new RunChart(chartBox, {
    groups, metricName: run.metric, tip,
    xLabel: run.clock && run.clock !== "steps" ? run.clock : "step", // samples or tokens consumed
    onPick: (event) => pick(event),
    onRange: (r) => { range = r; refresh(); },
  });
  logScale.addEventListener("change", () => chart.setLog(logScale.checked));

  // Pan: the zoomed window moves by half its width, within the run's steps.
  function pan(direction) {
    if (!range) return;
    const width = range.to - range.from;
    const last = Math.max(run.last_step ?? range.to, range.to);
    const from = Math.max(0, Math.min(range.from + direction * Math.max(1, Math.floor(width / 2)), last - width));
    if (from === range.from) return;
    range = { from, to: from + width };
    refresh();
  }

  function showFacts() {
    const counts = run.counts ? Object.entries(run.counts).map(([k, v]) => `${k} ${v}`).join(", ") : "";
    facts.replaceChildren(
      h("details", {}, h("summary", {}, h("b", {}, "policy "), `${run.policy.name}@${run.policy.version}`),
        h("pre", {}, JSON.stringify(run.policy.params, null, 2))),
      h("span", {}, h("b", {}, "base lrs "), lrs(run.base_lrs)),
      h("span", { id: "current-lrs" }, h("b", {}, "lrs "), lrs(run.lrs)),
      h("span", { id: "last-step" }, h("b", {}, "last step "), run.last_step ?? "–",
        run.clock && run.clock !== "steps" ? ` (${run.clock})` : null),
      h("span", {}, h("b", {}, "seq "), run.last_seq),
      counts ? h("span", {}, h("b", {}, "entries "), counts) : null,
      h("span", {}, h("b", {}, "labels "), Object.entries(run.labels || {}).map(([k, v]) => `${k}:${v}`).join(" ") || "–"));
  }

  // The summary's checkpoints, rollbacks and ranks' agreement, each a line when the run has it.
  // The summary lists only the newest checkpoints: how many there are is its checkpoint_count.
  function showGuard(summary) {
    const lines = [];
    const checkpoints = summary.checkpoints;
    if (checkpoints) {
      const last = checkpoints[checkpoints.length - 1];
      const count = summary.checkpoint_count ?? checkpoints.length;
      lines.push(h("span", { id: "checkpoints" }, h("b", {}, "checkpoints "), `${count}`,
        last ? ` · last ${last.ref} (step ${last.step})` : ""));
    }
    if (summary.guard) {
      const g = summary.guard;
      lines.push(h("span", { id: "rollbacks" }, h("b", {}, "rollbacks "), `${g.rollbacks}`,
        ` · lrs cut × ${g.cut}`, g.stopped ? " · stopped" : "",
        ...(summary.rollbacks || []).map((b) =>
          ` · step ${b.step}: ${b.trigger} ${b.value} → ${b.checkpoint.ref} (step ${b.checkpoint.step})`)));
    }
    const a = summary.agreement;
    if (a && a.acked_ranks) {
      lines.push(h("span", { id: "agreement" }, h("b", {}, "agreement "),
        `${a.acked_ranks} of ${a.world_size} ranks acknowledged · agreed through step ${a.agreed_through ?? "–"}`,
        ` · ${a.disagreeing} disagreeing`,
        ...a.disagreements.map((d) => ` · rank ${d.rank} at step ${d.step}`)));
    }
    guardFacts.replaceChildren(...lines);
    guardFacts.hidden = !lines.length;
  }

  let inFlight = null;
  async function refresh() {
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const query = { points: Math.min(4000, Math.max(200, Math.round(chartBox.clientWidth || 1000))) };
    if (range) Object.assign(query, { from_step: range.from, to_step: range.to });
    try {
      const [plot, summary] = await Promise.all([
        get(`${path}/plot`, query, inFlight.signal), get(`${path}/summary`, {}, inFlight.signal)]);
      chart.setSummary(summary);
      chart.set(plot);
      showGuard(summary);
      plotNote.className = "muted";
      plotNote.textContent = plot.truncated_events
        ? `More decisions changed something than are marked: the first ${plot.events.length} are; zoom in for the others.`
        : "";
    } catch (error) {
      if (error.name === "AbortError") return;
      plotNote.className = "error";
      plotNote.textContent = `the plot could not be read: ${error.message}`;
    }
  }

  async function showDecision(decision) {
    detail.hidden = false;
    detail.replaceChildren(
      h("div", { class: "toolbar" }, h("b", {}, `seq ${decision.seq} · step ${decision.step} · ${decision.action}`),
        h("button", { type: "button", onclick: () => { detail.hidden = true; } }, "Close")),
      decision.ranks ? ranksTable(decision.ranks) : null,
      h("pre", { id: "decision-json" }, JSON.stringify(decision, null, 2)));
  }

  async function pick(event) {
    try {
      const page = await get(`${path}/decisions`, { after: event.seq - 1, limit: 1 });
      if (page.items.length) showDecision(page.items[0]);
    } catch (error) {
      detail.hidden = false;
      detail.replaceChildren(failure(error));
    }
  }

  async function verify() {
    badge.className = "badge";
    badge.textContent = "verifying…";
    try {
      const report = await post(`${path}/verify`);
      if (report.ok) {
        badge.className = "badge good";
        // whether this service signs the run's exports, and with which key (when it says)
        const signed = report.signed === undefined ? "" :
          report.signed ? ` · exports signed, key ${report.key_id || "?"}` : " · exports not signed";
        badge.textContent = `verified through seq ${report.last_seq ?? report.count} · head ${report.head_hash.slice(0, 16)}…${signed}`;
        badge.title = `head hash ${report.head_hash}; ${report.count} decisions checked; ${(report.notes || []).join(" ")}`;
      } else {
        const m = report.mismatch || {};
        badge.className = "badge bad";
        badge.textContent = `verify FAILED at seq ${m.seq ?? "?"}${m.line ? ` (line ${m.line})` : ""}: ${m.message || "mismatch"}`;
        badge.title = JSON.stringify({ expected: m.expected, found: m.found });
      }
    } catch (error) {
      badge.className = "badge bad";
      badge.textContent = `verify refused: ${error.message}`;
    }
  }

  async function rewind() {
    const step = Number(rewindStep.value);
    if (rewindStep.value === "" || !Number.isInteger(step) || step < 0) {
      rewindStep.focus();
      return;
    }
    if (!confirm(`Rewind ${runId} to step ${step}? Every decision after it is superseded (kept, drawn faded).`)) return;
    try {
      await post(`${path}/rewind`, { to_step: step });
      await update(true);
    } catch (error) {
      live.textContent = `rewind refused: ${error.message}`;
    }
  }

  // live: the run's head, every LIVE_MS; a new entry redraws the plot and the table's first page
  let timer = null;
  let stopped = false;
  const ticking = new AbortController(); // aborted when the page is left
  async function update(force) {
    try {
      const now = await get(path, undefined, ticking.signal);
      if (force || now.last_seq !== run.last_seq) {
        run = now;
        showFacts();
        await refresh();
        table.refresh();
      }
      live.textContent = `live · seq ${run.last_seq}`;
    } catch (error) {
      if (!stopped) live.textContent = `not updated: ${error.message}`;
    }
  }
  async function tick() {
    await update(false);
    if (!stopped) timer = setTimeout(tick, LIVE_MS);
  }
  leave = () => {
    stopped = true;
    clearTimeout(timer);
    ticking.abort();
    if (inFlight) inFlight.abort();
    chart.destroy();
  };

  showFacts();
  await refresh();
  timer = setTimeout(tick, LIVE_MS);
  table.refresh();
  policies().then((list) => {
    table.actions(list.items.find((p) => p.name === run.policy.name && p.version === run.policy.version));
    whatIfForm(whatIfBox, run, list.items, (whatif) => chart.setWhatIf(whatif));
  }).catch((error) => whatIfBox.replaceChildren(failure(error)));
}

// an aggregated step: each rank's report and its weight in the mean
function ranksTable(ranks) {
  const keys = Array.from(new Set(ranks.flatMap((r) => Object.keys(r))));
  return h("table", { id: "decision-ranks" },
    h("thead", {}, h("tr", {}, ...keys.map((k) => h("th", {}, k)))),
    h("tbody", {}, ...ranks.map((r) => h("tr", {}, ...keys.map((k) => h("td", { class: "num" },
      typeof r[k] === "object" && r[k] !== null ? JSON.stringify(r[k]) : r[k] ?? "–"))))));
}

function decisionTable(path, onOpen) {
  // the run's policy's actions, once the policies are read, and the log's own entries
  const action = h("select", { name: "action" }, h("option", { value: "" }, "any"));
  const actions = (policy) => {
    for (const a of [...((policy && policy.actions) || []), "rewind", "scale", "start_cooldown", "retime"]) {
      action.append(h("option", { value: a }, a));
    }
  };
  const from = h("input", { type: "number", name: "from_step", min: 0, placeholder: "from step" });
  const to = h("input", { type: "number", name: "to_step", min: 0, placeholder: "to step" });
  const form = h("form", { class: "filters", id: "decision-filters" },
    field("action", action), field("from step", from), field("to step", to), h("button", { type: "submit" }, "Filter"));
  const body = h("tbody");
  const pager = h("div", { class: "toolbar" });
  let pages = [0]; // the `after` of each page seen: back is one pop away
  form.addEventListener("submit", (e) => { e.preventDefault(); pages = [0]; load(); });
  async function load() {
    const query = { after: pages[pages.length - 1], limit: PAGE, action: action.value, from_step: from.value, to_step: to.value };
    let page;
    try {
      page = await get(`${path}/decisions`, query);
    } catch (error) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 7 }, failure(error))));
      return;
    }
    body.replaceChildren(...page.items.map((d) => h("tr", { class: "clickable", "data-seq": d.seq, onclick: () => onOpen(d) },
      h("td", { class: "num" }, d.seq), h("td", { class: "num" }, d.step),
      h("td", { class: "num" }, d.value ?? "–"), h("td", {}, d.action),
      h("td", { class: "num" }, lrs(d.lrs)), h("td", {}, d.reason), h("td", {}, when(d.created_at)))));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No decisions.")));
    pager.replaceChildren(
      pages.length > 1 ? h("button", { type: "button", onclick: () => { pages.pop(); load(); } }, "Previous") : null,
      page.next !== null ? h("button", { type: "button", id: "decisions-next", onclick: () => { pages.push(page.next); load(); } }, "Next") : null);
  }
  const element = h("div", {}, form,
    h("table", { id: "decisions" }, h("thead", {}, h("tr", {},
      ...["seq", "step", "value", "action", "lrs", "reason", "time"].map((t) => h("th", {}, t)))), body), pager);
  // live updates refresh the first page only: a reader paging back is not moved
  return { element, actions, refresh: () => { if (pages.length === 1) load(); } };
}

// ---------------------------------------------------------------- policies

async function policiesPage() {
  show(h("h1", {}, "Policies"), h("p", { class: "muted" }, "Loading…"));
  let list;
  try {
    list = await policies();
  } catch (error) {
    return show(h("h1", {}, "Policies"), failure(error));
  }
  const sections = list.items.map((p) => {
    const chartBox = h("div", { class: "chart" });
    // the schema's first example (every released version has one), else the defaults
    const params = ((p.params_schema || {}).examples || [])[0] || p.defaults || {};
    // a composite's example may carry the base lrs it is written for (groups@1: one a group)
    const example = { policy: { name: p.name, version: p.version, params }, base_lrs: params.base_lrs || [0.1] };
    const section = h("section", { class: "policy", id: `policy-${p.name}-${p.version}` },
      h("h2", {}, `${p.name}@${p.version}`),
      h("p", {}, p.description),
      h("p", { class: "muted" }, `actions: ${(p.actions || []).join(", ")}`),
      h("div", { class: "grid2" },
        h("div", {}, h("b", {}, "params schema"), h("pre", {}, JSON.stringify(p.params_schema, null, 2))),
        h("div", {}, h("b", {}, "example"), h("pre", {}, JSON.stringify(example, null, 2)), chartBox)));
    return { section, chartBox, example };
  });
  show(h("h1", {}, "Policies"), ...sections.map((s) => s.section));
  // each example through simulate, on a made-up loss that improves then stalls
  const steps = Array.from({ length: 1000 }, (_, i) => i + 1);
  const values = steps.map((s) => 1 / Math.sqrt(Math.min(s, 400)) + 0.0001 * (s % 3));
  for (const { chartBox, example } of sections) {
    const body = { policy: example.policy, base_lrs: example.base_lrs, steps, values };
    post("/v1/simulate", body).then((result) => {
      const x = result.items.map((i) => i.step);
      const ys = example.base_lrs.map((_, g) => result.items.map((i) => i.lrs[g]));
      const strokes = ["#2457c5", "#c56a24", "#2a9d4b", "#8e44ad"];
      new uPlot({ width: Math.max(280, chartBox.clientWidth || 400), height: 160, legend: { show: false },
        scales: { x: { time: false } },
        series: [{}, ...ys.map((_, g) => ({ stroke: strokes[g % strokes.length], width: 2 }))],
        axes: [{}, { size: 60 }] }, [x, ...ys], chartBox);
    }, (error) => chartBox.replaceChildren(h("p", { class: "error" }, error.message)));
  }
}

window.addEventListener("hashchange", route);
whoami().then(route);
