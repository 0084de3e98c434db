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

// newKey returns a fresh Idempotency-Key.
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// request sends one API request. A command (create, pause, resume...) carries an
// Idempotency-Key and is retried with the same key when the network fails or the
// service answers 503: the retry gets the first answer, never a second batch.
//
// key, when given, is the command's Idempotency-Key: a page that lets the user
// send the same command again after a network failure or a 5xx (whose outcome
// it cannot know) passes the first try's key, so that the server answers with
// what the first did, if it did anything, rather than doing it twice.
//
// timeout, when set, bounds each try in milliseconds: a request that never
// returns (a connection gone silent) fails like a network failure, tried again
// with the same key, rather than holding the page for good.
export async function request(method, path, body, { command = false, key = "", timeout = 0 } = {}) {
  const headers = { Authorization: `Bearer ${getKey()}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (command) headers["Idempotency-Key"] = key || newKey();
  let resp;
  for (let attempt = 0; ; attempt++) {
    let timer = 0;
    if (timeout > 0) {
      const ac = new AbortController();
      timer = setTimeout(() => ac.abort(), timeout);
      init.signal = ac.signal;
    }
    try {
      resp = await fetch(path, init);
    } catch (err) {
      clearTimeout(timer);
      if (!command || attempt >= 2) throw err;
      await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      continue;
    }
    clearTimeout(timer);
    if (!command || attempt >= 2 || (resp.status !== 503 && resp.status !== 409) || !resp.headers.get("Retry-After")) break;
    await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
  }
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
    err.retryAfter = resp.headers.get("Retry-After") || "";
    if (resp.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

// answered says whether err is the server's answer to a request (a 4xx), so
// that sending the request again is a new request; after a network failure or a
// 5xx the outcome is unknown, and a try again must reuse the Idempotency-Key.
// A 409 with Retry-After (the first request with the key still runs) and a 429
// (refused before it ran) say nothing of the outcome either.
export function answered(err) {
  if (!(err instanceof ApiError) || err.status < 400 || err.status >= 500) return false;
  return err.status !== 429 && !(err.status === 409 && err.retryAfter);
}

// commandTimeout bounds one try of a lifecycle command (start, pause, resume,
// cancel, reschedule): the server answers them in well under a second.
const commandTimeout = 30000;

export const api = {
  list: (limit, cursor, { status, search } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set("cursor", cursor);
    if (status) q.set("status", status);
    if (search) q.set("q", search);
    return request("GET", `/api/batch?${q}`);
  },
  recipients: (id, { status, phone, cursor, limit = 50 } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (status) q.set("status", status);
    if (phone) q.set("phone", phone);
    if (cursor) q.set("cursor", cursor);
    return request("GET", `/api/batch/${encodeURIComponent(id)}/recipients?${q}`);
  },
  retryFailed: (id, key) => request("POST", `/api/v2/batch/${encodeURIComponent(id)}/retry-failed`, undefined, { command: true, key }),
  // exportURL is a link the browser can follow: a link carries no bearer
  // header, so it carries a single-use ticket instead.
  exportURL: async (id) => {
    const t = await request("POST", "/api/ws/ticket");
    return `/api/batch/${encodeURIComponent(id)}/export.csv?ticket=${encodeURIComponent(t.ticket)}`;
  },
  batch: (id) => request("GET", `/api/batch/${encodeURIComponent(id)}`),
  analytics: (id) => request("GET", `/api/batch/${encodeURIComponent(id)}/analytics`),
  errors: (id, { category, cursor, limit = 50 } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (category) q.set("category", category);
    if (cursor) q.set("cursor", cursor);
    return request("GET", `/api/batch/${encodeURIComponent(id)}/errors?${q}`);
  },
  act: (id, action) => request("POST", `/api/v2/batch/${encodeURIComponent(id)}/${action}`, undefined, { command: true, timeout: commandTimeout }),
  create: (body, key) => request("POST", "/api/batch", body, { command: true, key }),
  ticket: () => request("POST", "/api/ws/ticket"),
  optOuts: (limit, cursor) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set("cursor", cursor);
    return request("GET", `/api/optouts?${q}`);
  },
  addOptOut: (phoneNumber) => request("POST", "/api/optouts", { phoneNumber }, { command: true }),
  removeOptOut: (phoneNumber) => request("DELETE", `/api/optouts/${encodeURIComponent(phoneNumber)}`),
};
