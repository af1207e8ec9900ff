// The service's API as the pages call it: same origin, the session cookie sent by the browser,
// and on every request the header the service asks of a cookie's unsafe requests (a cross-site
// form cannot send it). Paths are relative to the page (/ui/), so a proxy's prefix is kept.

export const ROOT = new URL("../", document.baseURI);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function url(path, query) {
  const u = new URL(path.replace(/^\//, ""), ROOT);
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) u.searchParams.append(key, v);
  }
  return u;
}

// The message of a refusal: {"detail": "..."} or {"detail": [{"msg": ...}, ...]}
function explain(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `the service answered ${status}`;
}

export async function call(method, path, { query, body, signal } = {}) {
  const headers = { "X-LRPilot-CSRF": "1", Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, explain(response.status, parsed));
  return parsed;
}

export const get = (path, query, signal) => call("GET", path, { query, signal });
export const post = (path, body, query) => call("POST", path, { body, query });

// Strict JSON writes non-finite numbers as strings: a plot needs numbers or gaps
export function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}
