// Small DOM helpers shared by the views. Text always goes in as text nodes, never
// as HTML, so API data cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const timeFmt = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateFmt.format(d);
}

export function formatClock(d) {
  return timeFmt.format(d);
}

// progressBar returns a bar whose completed, failed and pending parts are
// widths out of the total, the completed part split into delivered and
// undelivered as receipts come; update it with setProgress.
export function progressBar(big = false) {
  const bar = h(
    "div",
    { class: big ? "progress big" : "progress", role: "img" },
    h("span", { class: "completed" }, h("span", { class: "delivered" }), h("span", { class: "undelivered" })),
    h("span", { class: "failed" }),
    h("span", { class: "pending" }),
  );
  return bar;
}

export function setProgress(bar, p) {
  const total = Math.max(p.total || 0, 0);
  const pct = (n, of = total) => (of > 0 ? `${(100 * Math.max(n || 0, 0)) / of}%` : "0%");
  const [c, f, pe] = bar.children;
  const [d, u] = c.children;
  // Styles set through the CSSOM are allowed by the page's style-src 'self'.
  c.style.width = pct(p.completed);
  d.style.width = pct(p.delivered, p.completed);
  u.style.width = pct(p.undelivered, p.completed);
  f.style.width = pct(p.failed);
  pe.style.width = pct(p.pending);
  let label = `${p.completed} completed, ${p.failed} failed, ${p.pending} pending of ${total}`;
  if (p.delivered || p.undelivered) label += `; ${p.delivered || 0} delivered, ${p.undelivered || 0} undelivered`;
  bar.setAttribute("aria-label", label);
  bar.title = label;
}

export function errorAlert(err) {
  return h("div", { class: "alert error", role: "alert" }, err.message || String(err));
}
