// The REST client: the API key kept in localStorage and one request function that
// sends it and turns error bodies into ApiError.

const keyName = "smsbatch.apiKey";

export function getKey() {
  return localStorage.getItem(keyName) || "";
}

export function setKey(key) {
  localStorage.setItem(keyName, key);
}

export function clearKey() {
  localStorage.removeItem(keyName);
}

// ApiError carries the API's error body: code, message and per-field details.
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `request failed with status ${status}`);
    this.status = status;
    this.code = e.code || "";
    this.details = Array.isArray(e.details) ? e.details : [];
  }
}

// onUnauthorized is called when the API refuses the key, so the app can ask again.
let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export async function request(method, path, body) {
  const headers = { Authorization: `Bearer ${getKey()}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const api = {
  list: (limit, cursor) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set("cursor", cursor);
    return request("GET", `/api/batch?${q}`);
  },
  batch: (id) => request("GET", `/api/batch/${encodeURIComponent(id)}`),
  analytics: (id) => request("GET", `/api/batch/${encodeURIComponent(id)}/analytics`),
  errors: (id, { category, cursor, limit = 50 } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (category) q.set("category", category);
    if (cursor) q.set("cursor", cursor);
    return request("GET", `/api/batch/${encodeURIComponent(id)}/errors?${q}`);
  },
  act: (id, action) => request("POST", `/api/v2/batch/${encodeURIComponent(id)}/${action}`),
  create: (body) => request("POST", "/api/batch", body),
  ticket: () => request("POST", "/api/ws/ticket"),
};
