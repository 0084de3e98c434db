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

export const skippedTitle = "Not sent, and not failed: the number opted out, or the batch's validity ran out first";
export const waitingTitle = "Not sent yet because it is quiet hours where the recipient is; they go when the window ends";

// progressBar returns a bar whose completed, failed, skipped, pending and
// waiting parts are widths out of the total, the completed part split into
// delivered and undelivered as receipts come; update it with setProgress.
export function progressBar(big = false) {
  const bar = h(
    "div",
    { class: big ? "progress big" : "progress", role: "img" },
    h("span", { class: "completed" }, h("span", { class: "delivered" }), h("span", { class: "undelivered" })),
    h("span", { class: "failed" }),
    h("span", { class: "skipped", title: skippedTitle }),
    h("span", { class: "pending" }),
    h("span", { class: "waiting", title: waitingTitle }),
  );
  return bar;
}

export function setProgress(bar, p) {
  const total = Math.max(p.total || 0, 0);
  const pct = (n, of = total) => (of > 0 ? `${(100 * Math.max(n || 0, 0)) / of}%` : "0%");
  const part = (cls) => bar.querySelector(`.${cls}`);
  // Styles set through the CSSOM are allowed by the page's style-src 'self'.
  part("completed").style.width = pct(p.completed);
  part("delivered").style.width = pct(p.delivered, p.completed);
  part("undelivered").style.width = pct(p.undelivered, p.completed);
  part("failed").style.width = pct(p.failed);
  part("skipped").style.width = pct(p.skipped);
  part("pending").style.width = pct(p.pending);
  part("waiting").style.width = pct(p.waiting);
  let label = `${p.completed} completed, ${p.failed} failed`;
  if (p.skipped) label += `, ${p.skipped} skipped`;
  label += `, ${p.pending} pending`;
  if (p.waiting) label += `, ${p.waiting} waiting for quiet hours to end`;
  label += ` of ${total}`;
  if (p.delivered || p.undelivered) label += `; ${p.delivered || 0} delivered, ${p.undelivered || 0} undelivered`;
  bar.setAttribute("aria-label", label);
  bar.title = label;
}

// isStale says whether next, a status of the batch cur is a status of, is older
// than cur: the answer to a GET (or a command) can arrive after newer statuses
// from the live feed, and a page must not go back to it. A finished batch does
// not start again, and a status's updatedAt is the time of its last event.
const finalStatuses = new Set(["completed", "failed", "cancelled"]);
export function isStale(next, cur) {
  if (!cur || !next || cur.id !== next.id) return false;
  if (finalStatuses.has(cur.status) && !finalStatuses.has(next.status)) return true;
  // The revision only grows; updatedAt is the clock of whichever instance
  // decided the event, and goes back when two instances' clocks differ.
  if (Number.isInteger(next.revision) && Number.isInteger(cur.revision)) return next.revision < cur.revision;
  return Date.parse(next.updatedAt) < Date.parse(cur.updatedAt); // false when either is missing
}

export function errorAlert(err) {
  return h("div", { class: "alert error", role: "alert" }, err.message || String(err));
}
