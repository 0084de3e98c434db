// The batches page: the tenant's batches, newest first, updated live.

import { api } from "./api.js";
import { follow } from "./live.js";
import { badge, errorAlert, formatTime, h, progressBar, setProgress } from "./ui.js";

const pageSize = 20;

export function render(root) {
  const rows = new Map(); // batch id -> {tr, cells}
  const tbody = h("tbody");
  const message = h("div");
  const more = h("button", { type: "button", hidden: true, onclick: () => load(cursor) }, "Load more");
  const mode = h("span", { class: "live", "aria-live": "polite" }, "connecting");
  let cursor = "";

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
            h("th", { scope: "col" }, "Priority"),
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
      const link = h("a", { href: `#/batch/${encodeURIComponent(b.id)}`, class: "mono" }, b.id.slice(-12));
      const cells = {
        status: h("td"),
        priority: h("td"),
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
      r = { tr, cells };
      rows.set(b.id, r);
    }
    const p = b.progress || { total: 0, completed: 0, failed: 0, pending: 0 };
    r.cells.status.replaceChildren(badge(b.status));
    r.cells.priority.replaceChildren(h("span", { class: "badge prio" }, b.priority));
    r.cells.created.textContent = formatTime(b.createdAt);
    setProgress(r.cells.bar, p);
    r.cells.done.textContent = `${p.completed + p.failed} / ${p.total}`;
    return r.tr;
  }

  function showEmpty() {
    if (rows.size === 0) {
      tbody.replaceChildren(
        h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No batches yet. ", h("a", { href: "#/new" }, "Create one"), ".")),
      );
    }
  }

  async function load(from) {
    try {
      const page = await api.list(pageSize, from);
      if (!from && rows.size === 0) tbody.replaceChildren();
      for (const b of page.batches) tbody.append(row(b));
      cursor = page.nextCursor || "";
      more.hidden = !cursor;
      message.replaceChildren();
      showEmpty();
    } catch (err) {
      message.replaceChildren(errorAlert(err));
    }
  }

  // Polling refreshes the first page: new batches go on top, known ones update.
  async function refresh() {
    const page = await api.list(pageSize);
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
      const tr = row(msg.batch);
      if (!known) {
        if (rows.size === 1) tbody.replaceChildren();
        tbody.prepend(tr);
      }
    },
  });
  return stop;
}
