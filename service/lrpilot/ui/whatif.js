// What-if: a form made from the run's policy's params schema (GET /v1/policies), each field
// filled with the run's value (or the default); submitted, it replays the run's own metric
// stream through those params (POST /v1/simulate with run_id), overlays the lrs on the plot
// and lists the steps where the decisions differ from the recorded ones.

import { post } from "./api.js";
import { field, h, lrs } from "./dom.js";

const MAX_OVERLAY = 4000; // points drawn: a long run's what-if is thinned evenly
const MAX_LISTED = 200;

// "#/$defs/X" within the policy's schema; anything else is taken as it is
function resolve(schema, root) {
  const ref = schema && schema.$ref;
  if (typeof ref !== "string" || !ref.startsWith("#/")) return schema || {};
  return ref.slice(2).split("/").reduce((node, key) => (node || {})[key], root) || {};
}

// The object schema the params follow: a union (plateau@1's flavors) gives the variant whose
// discriminating const the run's params match, else its first
function variant(root, current) {
  const options = root.oneOf || root.anyOf;
  if (root.properties || !options) return root;
  const resolved = options.map((o) => resolve(o, root));
  const key = root.discriminator && root.discriminator.propertyName;
  return resolved.find((o) => key && (o.properties || {})[key] && o.properties[key].const === current[key])
    || resolved[0];
}

// A param that may take several forms (a number or a list of them, a value or null): the form
// its current value has, when that is one an input can show, else the schema (JSON)
function formOf(schema, value, root) {
  const options = schema.anyOf || schema.oneOf;
  if (!options) return schema;
  const forms = options.map((o) => resolve(o, root)).filter((o) => o.type !== "null");
  if (forms.length === 1) return forms[0];
  const kinds = { number: ["number", "integer"], string: ["string"], boolean: ["boolean"] }[typeof value] || [];
  return forms.find((o) => kinds.includes(o.type)) || schema;
}

function input(name, schema, value) {
  if (schema.const !== undefined) {
    return h("input", { name, "data-kind": "json", value: JSON.stringify(schema.const), readonly: true });
  }
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (schema.enum) {
    return h("select", { name, "data-kind": "enum" },
      ...schema.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === value }, String(v))));
  }
  if (type === "boolean") return h("input", { type: "checkbox", name, "data-kind": "boolean", checked: !!value });
  if (type === "number" || type === "integer") {
    return h("input", { type: "number", name, "data-kind": type, step: type === "integer" ? 1 : "any",
      value: value ?? "", min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum });
  }
  if (type === "string") return h("input", { name, "data-kind": "string", value: value ?? "" });
  return h("textarea", { name, "data-kind": "json", rows: 3, cols: 60 },
    value === undefined ? "" : JSON.stringify(value));
}

function read(el) {
  const kind = el.dataset.kind;
  if (kind === "boolean") return el.checked;
  if (el.value === "") return undefined;
  if (kind === "number" || kind === "integer") return Number(el.value);
  if (kind === "string") return el.value;
  return JSON.parse(el.value); // enum options and JSON fields
}

function thin(items) {
  if (items.length <= MAX_OVERLAY) return items;
  const every = items.length / MAX_OVERLAY;
  const out = [];
  for (let i = 0; i < MAX_OVERLAY; i++) out.push(items[Math.floor(i * every)]);
  out.push(items[items.length - 1]);
  return out;
}

function differs(item) {
  const r = item.recorded;
  if (!r) return false;
  return r.action !== item.action || JSON.stringify(r.lrs) !== JSON.stringify(item.lrs);
}

export function whatIfForm(box, run, items, overlay) {
  const policy = items.find((p) => p.name === run.policy.name && p.version === run.policy.version);
  if (!policy) {
    box.replaceChildren(h("p", { class: "muted" }, "This run's policy version is not served here."));
    return;
  }
  const current = { ...(policy.defaults || {}), ...(run.policy.params || {}) };
  const root = policy.params_schema || {};
  const properties = variant(root, current).properties || {};
  const inputs = Object.entries(properties).map(
    ([name, schema]) => input(name, formOf(resolve(schema, root), current[name], root), current[name]));
  const result = h("div", { id: "whatif-result" });
  const form = h("form", { class: "whatif", id: "whatif-form" },
    ...inputs.map((el) => field(el.name, el)),
    h("button", { type: "submit" }, "Run what-if"),
    h("button", { type: "button", onclick: () => { overlay(null); result.replaceChildren(); } }, "Clear"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let params;
    try {
      params = Object.fromEntries(inputs.map((el) => [el.name, read(el)]).filter(([, v]) => v !== undefined));
    } catch (error) {
      result.replaceChildren(h("p", { class: "error" }, `not JSON: ${error.message}`));
      return;
    }
    result.replaceChildren(h("p", { class: "muted" }, "Simulating…"));
    let sim;
    try {
      sim = await post("/v1/simulate", { run_id: run.run_id, policy: { name: policy.name, version: policy.version, params } });
    } catch (error) {
      result.replaceChildren(h("p", { class: "error" }, error.message));
      return;
    }
    const drawn = thin(sim.items);
    const groups = run.base_lrs.length;
    overlay({
      x: drawn.map((i) => i.step),
      lr: Array.from({ length: groups }, (_, g) => drawn.map((i) => i.lrs[g] ?? null)),
      params,
    });
    const different = sim.items.filter(differs);
    result.replaceChildren(
      h("p", { id: "whatif-summary" }, `${sim.count} steps simulated; decisions differ at ${sim.differing ?? different.length} steps.`),
      different.length
        ? h("table", { id: "whatif-differ" },
          h("thead", {}, h("tr", {}, ...["step", "recorded", "what-if", "what-if lrs", "reason"].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...different.slice(0, MAX_LISTED).map((i) => h("tr", {},
            h("td", { class: "num" }, i.step),
            h("td", {}, `${i.recorded.action} ${lrs(i.recorded.lrs)}`),
            h("td", {}, i.action), h("td", { class: "num" }, lrs(i.lrs)), h("td", {}, i.reason)))))
        : null,
      different.length > MAX_LISTED ? h("p", { class: "muted" }, `(the first ${MAX_LISTED} shown)`) : null);
  });
  box.replaceChildren(form, result);
}
