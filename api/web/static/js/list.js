// The batches page: the tenant's batches, newest first, updated live.

import { api } from "./api.js";
import { follow } from "./live.js";
import { badge, errorAlert, formatTime, h, isStale, progressBar, setProgress } from "./ui.js";

const pageSize = 20;

export function render(root) {
  const rows = new Map(); // batch id -> {tr, cells}
  const tbody = h("tbody");
  const message = h("div");
  const more = h("button", { type: "button", hidden: true, onclick: () => load(cursor) }, "Load more");
  const mode = h("span", { class: "live", "aria-live": "polite" }, "connecting");
  let cursor = "";
  let loaded = false; // the first page has been shown
  const search = h("input", { id: "batch-search", type: "search", autocomplete: "off", placeholder: "Name or ID" });
  const statusFilter = h(
    "select",
    { id: "batch-status-filter", onchange: () => reload() },
    h("option", { value: "" }, "All statuses"),
    ["pending", "processing", "paused", "completed", "failed", "cancelled"].map((s) => h("option", { value: s }, s)),
  );
  let typing = 0;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(reload, 250);
  });
  const filters = () => ({ status: statusFilter.value, search: search.value.trim() });
  const filtered = () => !!(statusFilter.value || search.value.trim());

  root.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Batches"), mode),
      h("a", { class: "button primary", href: "#/new" }, "New batch"),
    ),
    message,
    h(
      "div",
      { class: "card" },
      h(
        "div",
        { class: "filters" },
        h("div", { class: "field" }, h("label", { for: "batch-search" }, "Search"), search),
        h("div", { class: "field" }, h("label", { for: "batch-status-filter" }, "Status"), statusFilter),
      ),
      h(
        "table",
        { id: "batches" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Batch"),
            h("th", { scope: "col" }, "Status"),
            h("th", { scope: "col", class: "hide-sm" }, "Priority"),
            h("th", { scope: "col", class: "hide-sm" }, "Created"),
            h("th", { scope: "col" }, "Progress"),
            h("th", { scope: "col", class: "num" }, "Done"),
          ),
        ),
        tbody,
      ),
      h("div", { class: "actions" }, more),
    ),
  );

  function row(b) {
    let r = rows.get(b.id);
    if (!r) {
      const bar = progressBar();
      const link = h("a", { href: `#/batch/${encodeURIComponent(b.id)}`, class: "batch-link" });
      const cells = {
        link,
        status: h("td"),
        priority: h("td", { class: "hide-sm" }),
        created: h("td", { class: "hide-sm" }),
        bar,
        done: h("td", { class: "num" }),
      };
      const tr = h(
        "tr",
        { class: "clickable", "data-id": b.id, onclick: (e) => e.target !== link && link.click() },
        h("td", {}, link),
        cells.status,
        cells.priority,
        cells.created,
        h("td", {}, bar),
        cells.done,
      );
      r = { tr, cells, b: null };
      rows.set(b.id, r);
    }
    // An answer that arrives after newer live updates is not shown.
    if (isStale(b, r.b)) return r.tr;
    r.b = b;
    const p = b.progress || { total: 0, completed: 0, failed: 0, pending: 0 };
    // A batch without a name shows the end of its ID, which is what varies.
    r.cells.link.replaceChildren(b.name ? b.name : h("span", { class: "mono" }, b.id.slice(-12)));
    r.cells.link.title = b.id;
    r.cells.status.replaceChildren(badge(b.status));
    r.cells.priority.replaceChildren(h("span", { class: "badge prio" }, b.priority));
    r.cells.created.textContent = formatTime(b.createdAt);
    setProgress(r.cells.bar, p);
    r.cells.done.textContent = `${p.completed + p.failed + (p.skipped || 0)} / ${p.total}`;
    return r.tr;
  }

  function isNewest(b) {
    const t = Date.parse(b.createdAt);
    for (const r of rows.values()) if (r.b && !(Date.parse(r.b.createdAt) <= t)) return false;
    return true;
  }

  function showEmpty() {
    if (rows.size === 0) {
      tbody.replaceChildren(
        h("tr", {}, h("td", { colspan: 6, class: "empty" }, ...(filtered() ? ["No batch matches."] : ["No batches yet. ", h("a", { href: "#/new" }, "Create one"), "."]))),
      );
    }
  }

  function reload() {
    loaded = false;
    rows.clear();
    tbody.replaceChildren();
    cursor = "";
    load("");
  }

  async function load(from) {
    try {
      const page = await api.list(pageSize, from, filters());
      if (!from && rows.size === 0) tbody.replaceChildren();
      for (const b of page.batches) tbody.append(row(b));
      cursor = page.nextCursor || "";
      more.hidden = !cursor;
      loaded = true;
      message.replaceChildren();
      showEmpty();
    } catch (err) {
      message.replaceChildren(errorAlert(err));
    }
  }

  // Polling refreshes the first page: new batches go on top, known ones update.
  async function refresh() {
    const page = await api.list(pageSize, "", filters());
    const fresh = page.batches.filter((b) => !rows.has(b.id));
    for (const b of page.batches) row(b);
    if (fresh.length) {
      if (rows.size === fresh.length) tbody.replaceChildren();
      tbody.prepend(...fresh.map((b) => rows.get(b.id).tr));
      if (!cursor && page.nextCursor && rows.size === page.batches.length) {
        cursor = page.nextCursor;
        more.hidden = false;
      }
    }
    message.replaceChildren();
  }

  load("");
  const stop = follow({
    path: "/api/ws",
    pollMs: 2000,
    poll: refresh,
    onMode: (m) => {
      mode.className = `live ${m === "live" ? "on" : "poll"}`;
      mode.textContent = m === "live" ? "live" : "updating every 2 s";
    },
    onMessage: (msg) => {
      if (msg.type !== "batch.status" || !msg.batch) return;
      const known = rows.has(msg.batch.id);
      // A filtered list is what the server chose: new batches wait for the next load.
      if (!known && filtered()) return;
      // The feed opens with the status of the 100 newest batches: one the page
      // does not show belongs on the top only when it is newer than every batch
      // shown (a new batch); else it is on a later page, which "Load more" brings.
      if (!known && !(loaded && isNewest(msg.batch))) return;
      const tr = row(msg.batch);
      if (!known) {
        if (rows.size === 1) tbody.replaceChildren();
        tbody.prepend(tr);
      }
    },
  });
  return stop;
}
