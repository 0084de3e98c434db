// A minimal DOM for running the dashboard's modules under node: elements,
// text nodes, attributes, events, and querySelector for compound selectors
// (tag, #id, .class, [attr], [attr="v"]) and comma lists. Enough for the
// dashboard's own code; not a browser.

class Node {
  constructor() { this.parentNode = null; this.childNodes = []; }
  get children() { return this.childNodes.filter((c) => c instanceof Element); }
  get firstChild() { return this.childNodes[0] || null; }
  _adopt(nodes) {
    return nodes.flat().map((n) => {
      const node = n instanceof Node ? n : new Text(String(n));
      if (node.parentNode) node.remove();
      node.parentNode = this;
      return node;
    });
  }
  append(...nodes) { this.childNodes.push(...this._adopt(nodes)); }
  prepend(...nodes) { this.childNodes.unshift(...this._adopt(nodes)); }
  replaceChildren(...nodes) {
    for (const c of this.childNodes) c.parentNode = null;
    this.childNodes = [];
    this.append(...nodes);
  }
  remove() {
    if (!this.parentNode) return;
    const p = this.parentNode;
    p.childNodes = p.childNodes.filter((c) => c !== this);
    this.parentNode = null;
  }
  get textContent() { return this.childNodes.map((c) => c.textContent).join(""); }
  set textContent(v) { this.replaceChildren(...(v === "" || v == null ? [] : [String(v)])); }
}

class Text extends Node {
  constructor(data) { super(); this.data = data; }
  get textContent() { return this.data; }
  set textContent(v) { this.data = String(v); }
}

const boolProps = ["hidden", "disabled", "checked", "selected", "required", "open"];

class Element extends Node {
  constructor(tag) {
    super();
    this.tagName = tag.toUpperCase();
    this.attrs = new Map();
    this.listeners = {};
    this.style = {};
    this.validity = { badInput: false };
    this._value = undefined;
    const el = this;
    this.classList = {
      add: (...c) => { const s = new Set(el.className.split(/\s+/).filter(Boolean)); c.forEach((x) => s.add(x)); el.className = [...s].join(" "); },
      remove: (...c) => { el.className = el.className.split(/\s+/).filter((x) => x && !c.includes(x)).join(" "); },
      contains: (c) => el.className.split(/\s+/).includes(c),
    };
  }
  setAttribute(k, v) { this.attrs.set(k, String(v)); }
  getAttribute(k) { return this.attrs.has(k) ? this.attrs.get(k) : null; }
  hasAttribute(k) { return this.attrs.has(k); }
  removeAttribute(k) { this.attrs.delete(k); }
  get id() { return this.getAttribute("id") || ""; }
  set id(v) { this.setAttribute("id", v); }
  get className() { return this.getAttribute("class") || ""; }
  set className(v) { this.setAttribute("class", v); }
  get title() { return this.getAttribute("title") || ""; }
  set title(v) { this.setAttribute("title", v); }
  get href() { return this.getAttribute("href") || ""; }
  get value() {
    if (this._value !== undefined) return this._value;
    if (this.tagName === "SELECT") {
      const opts = this.querySelectorAll("option");
      const sel = opts.find((o) => o.hasAttribute("selected")) || opts[0];
      return sel ? sel.value : "";
    }
    if (this.tagName === "TEXTAREA") return this.textContent;
    return this.getAttribute("value") || "";
  }
  set value(v) { this._value = String(v); }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  removeEventListener(type, fn) { this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn); }
  dispatchEvent(ev) {
    ev.target ||= this;
    ev.preventDefault ||= () => { ev.defaultPrevented = true; };
    for (const fn of this.listeners[ev.type] || []) fn.call(this, ev);
    return !ev.defaultPrevented;
  }
  // A disabled button ignores clicks, as in a browser. detail counts the
  // clicks of a multiple click: 2 for the second click of a double click.
  click(detail = 1) { if (!this.disabled) this.dispatchEvent({ type: "click", detail }); }
  focus() { globalThis.document.activeElement = this; }
  showModal() { this.open = true; }
  close() { this.open = false; this.dispatchEvent({ type: "close" }); }
  requestSubmit() { this.dispatchEvent({ type: "submit" }); }
  _all() { return this.children.flatMap((c) => [c, ...c._all()]); }
  querySelectorAll(sel) { const m = matcher(sel); return this._all().filter(m); }
  querySelector(sel) { return this.querySelectorAll(sel)[0] || null; }
}
for (const p of boolProps) {
  Object.defineProperty(Element.prototype, p, {
    get() { return this.hasAttribute(p); },
    set(v) { if (v) this.setAttribute(p, ""); else this.removeAttribute(p); },
  });
}

function matcher(sel) {
  const alts = sel.split(",").map((s) => s.trim()).map((s) => {
    const parts = [];
    const re = /([a-zA-Z][a-zA-Z0-9-]*)|#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:="([^"]*)")?\]/g;
    let m;
    while ((m = re.exec(s))) parts.push(m);
    return (el) => parts.every((p) =>
      p[1] ? el.tagName === p[1].toUpperCase()
        : p[2] ? el.id === p[2]
        : p[3] ? el.className.split(/\s+/).includes(p[3])
        : p[5] !== undefined ? el.getAttribute(p[4]) === p[5]
        : el.hasAttribute(p[4]));
  });
  return (el) => alts.some((a) => a(el));
}

class Document extends Element {
  constructor() { super("#document"); this.title = ""; this.body = new Element("body"); this.append(this.body); }
  createElement(tag) { return new Element(tag); }
  createElementNS(_ns, tag) { return new Element(tag); }
  createTextNode(t) { return new Text(t); }
  getElementById(id) { return this.querySelector(`#${id}`); }
}

globalThis.Node = Node;
globalThis.Element = Element;
globalThis.document = new Document();
globalThis.window = globalThis;
globalThis.location = { protocol: "http:", host: "example.test", hash: "" };
const store = new Map();
globalThis.localStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};

// text returns what a person reads in el, whitespace squeezed.
export function text(el) { return el.textContent.replace(/\s+/g, " ").trim(); }

// tick lets pending promises and 1ms timers run.
export const tick = (ms = 5) => new Promise((r) => realSetTimeout(r, ms));
export const realSetTimeout = globalThis.setTimeout;
// Waits of the pages (retry backoff, polling) pass in 1ms, so a test runs fast.
// Waits are cut to 1 ms, but a request's timeout (10 s and more) to 2 s: it
// must not fire before a test answers the request it bounds.
globalThis.setTimeout = (fn, ms, ...args) => realSetTimeout(fn, ms >= 10000 ? 2000 : 1, ...args);

// deferred is a promise with its resolve and reject.
export function deferred() {
  let resolve, reject;
  const p = new Promise((a, b) => { resolve = a; reject = b; });
  return { promise: p, resolve, reject };
}

// jsonResponse is what fetch resolves to.
export function jsonResponse(status, body, headers = {}) {
  return {
    ok: status >= 200 && status < 300,
    status,
    headers: { get: (k) => headers[k] ?? null },
    text: async () => (body === undefined ? "" : JSON.stringify(body)),
  };
}

// Fake fetch: every request is recorded in requests and answered by the
// handler the test sets (method, path, init) => response or promise.
export const requests = [];
let handler = () => jsonResponse(404, { error: { code: "not_found", message: "no handler" } });
export function onFetch(fn) { handler = fn; }
globalThis.fetch = async (path, init = {}) => {
  const r = { method: init.method || "GET", path, headers: init.headers || {}, body: init.body };
  requests.push(r);
  const answer = handler(r);
  if (!init.signal) return answer;
  // An aborted request fails as a browser's does, answered or not.
  return new Promise((resolve, reject) => {
    const abort = () => reject(new DOMException("The operation was aborted.", "AbortError"));
    if (init.signal.aborted) return abort();
    init.signal.addEventListener("abort", abort);
    Promise.resolve(answer).then(resolve, reject);
  });
};

// Fake WebSocket: sockets lists every one the page opened; a test opens one
// and sends it messages.
export const sockets = [];
globalThis.WebSocket = class {
  constructor(url) { this.url = url; this.closed = false; sockets.push(this); }
  open() { this.onopen && this.onopen(); }
  send(msg) { this.onmessage && this.onmessage({ data: JSON.stringify(msg) }); }
  close() { this.closed = true; }
};
