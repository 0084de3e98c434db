// The batch page: progress, live rate, actions, throughput, latency and errors of
// one batch, updated over the WebSocket feed or by polling.

import { answered, api, ApiError, newKey } from "./api.js";
import { throughputChart } from "./chart.js";
import { follow } from "./live.js";
import { recipientsPanel } from "./recipients.js";
import { badge, errorAlert, formatTime, h, isStale, progressBar, setProgress, skippedTitle, waitingTitle } from "./ui.js";

export const categories = [
  "invalid_number",
  "unroutable",
  "blocked",
  "not_sms_capable",
  "rate_limited",
  "provider_unavailable",
  "timeout",
  "unknown",
  "opted_out",
  "expired",
  "cancelled",
];

// Which actions each status allows (domain/batch.go): anything not final can be
// cancelled.
const allowed = {
  pending: ["start", "cancel"],
  processing: ["pause", "cancel"],
  paused: ["resume", "cancel"],
};

const final = new Set(["completed", "failed", "cancelled"]);

export function render(root, id) {
  let current = null;
  let lastAnalytics = 0;
  let analyticsTimer = 0;
  let stopLive = () => {};
  // acting: a command is in flight; the action buttons stay disabled until its
  // answer, whatever live updates say meanwhile.
  let acting = false;
  // retryKey is the Idempotency-Key of a retry-failed whose outcome is unknown
  // (network failure, 5xx): clicking again sends it again, not a new request.
  let retryKey = "";

  const status = h("span", { id: "batch-status" });
  const mode = h("span", { class: "live", "aria-live": "polite" }, "connecting");
  const message = h("div", { "aria-live": "polite" });
  const bar = progressBar(true);
  bar.id = "batch-progress";
  const num = (key) => h("strong", { id: `count-${key}` }, "0");
  const counts = {
    completed: num("completed"),
    delivered: num("delivered"),
    undelivered: num("undelivered"),
    failed: num("failed"),
    skipped: num("skipped"),
    pending: num("pending"),
    waiting: num("waiting"),
    total: num("total"),
  };
  const remaining = num("remaining");
  // Only a batch with quiet hours has recipients waiting for them.
  const waitingLegend = h("span", { class: "waiting", title: waitingTitle, hidden: true }, counts.waiting, " waiting for quiet hours");
  const rate = h("dd", { id: "rate" }, "0");
  const success = h("dd", { id: "success-rate" }, "–");
  const created = h("dd", {}, "");
  const priority = h("dd", {}, "");
  const scheduled = h("dd", { id: "schedule" }, "–");
  const validUntil = h("dd", { id: "valid-until" }, "–");
  const quietHours = h("dd", { id: "quiet-hours" }, "–");
  const title = h("h1", { id: "batch-name" }, "Batch");
  const links = h("p", { id: "batch-links", class: "small", hidden: true });
  const text = h("p", { id: "batch-text", class: "message-text" });
  const pauseNote = h("p", { id: "pause-note", class: "pause-note", hidden: true });
  const holdNote = h("p", { id: "hold-note", class: "hold-note", role: "status", hidden: true });
  const capNote = h("p", { id: "cap-note", class: "cap-note", role: "status", hidden: true });
  const buttons = {};
  for (const [action, label, cls] of [
    ["start", "Start", "primary"],
    ["pause", "Pause", ""],
    ["resume", "Resume", "primary"],
    ["cancel", "Cancel batch", "danger"],
  ]) {
    // Cancel is for good: it asks first. The second click of a double click is
    // not a second command: by then the first's answer may have put Resume
    // where Pause was.
    const onclick = (ev) => {
      if (ev && ev.detail > 1) return;
      if (action === "cancel") confirmCancel();
      else act(action);
    };
    buttons[action] = h("button", { type: "button", id: `action-${action}`, class: cls, disabled: true, onclick }, label);
  }
  const confirmText = h("p", { id: "confirm-text" });
  const confirm = h(
    "dialog",
    { id: "confirm-cancel", "aria-labelledby": "confirm-title" },
    h("h2", { id: "confirm-title" }, "Cancel this batch?"),
    confirmText,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", id: "confirm-keep", onclick: () => confirm.close() }, "Keep sending"),
      h("button", { type: "button", id: "confirm-yes", class: "danger", onclick: () => { confirm.close(); act("cancel"); } }, "Cancel batch"),
    ),
  );
  const exportButton = h("button", { type: "button", id: "action-export", onclick: () => exportCSV() }, "Export CSV");
  const retryButton = h("button", { type: "button", id: "action-retry", hidden: true, onclick: () => retryFailed() }, "Retry failed");

  const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  chart.setAttribute("role", "img");
  chart.id = "throughput";
  const totals = {
    sent: h("dd", { id: "total-sent" }, "0"),
    failed: h("dd", { id: "total-failed" }, "0"),
    retries: h("dd", {}, "0"),
    segments: h("dd", {}, "0"),
    p50: h("dd", { id: "latency-p50" }, "–"),
    p95: h("dd", {}, "–"),
    p99: h("dd", {}, "–"),
    deliveryRate: h("dd", { id: "delivery-rate" }, "–"),
    deliveryP50: h("dd", {}, "–"),
  };

  const category = h(
    "select",
    { id: "error-category", onchange: () => loadErrors(true) },
    h("option", { value: "" }, "All categories"),
    categories.map((c) => h("option", { value: c }, c)),
  );
  const errorRows = h("tbody");
  const errorsMore = h("button", { type: "button", id: "errors-more", hidden: true, onclick: () => loadErrors(false) }, "Load more");
  let errorsCursor = "";
  let errorsShown = new Set();

  const stat = (label, dd) => h("div", {}, h("dt", {}, label), dd);

  const recipients = recipientsPanel(id);
  const panels = {
    errors: h("div", { id: "panel-errors", role: "tabpanel", "aria-labelledby": "tab-errors" }),
    recipients: h("div", { id: "panel-recipients", role: "tabpanel", "aria-labelledby": "tab-recipients", hidden: true }, recipients.el),
  };
  const tab = (key, label) =>
    h("button", { type: "button", role: "tab", id: `tab-${key}`, "aria-controls": `panel-${key}`, onclick: () => select(key) }, label);
  const tabs = { errors: tab("errors", "Errors"), recipients: tab("recipients", "Recipients") };
  let recipientsLoaded = false;
  function select(key) {
    for (const [k, t] of Object.entries(tabs)) {
      t.setAttribute("aria-selected", String(k === key));
      panels[k].hidden = k !== key;
    }
    if (key === "recipients" && !recipientsLoaded) {
      recipientsLoaded = true;
      recipients.load();
    }
  }
  select("errors");

  root.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("p", { class: "small" }, h("a", { href: "#/" }, "← All batches")),
        title,
        h("p", { class: "small muted mono batch-id" }, id),
        h("div", { class: "status-line" }, status, mode),
        links,
      ),
      h("div", { class: "actions", role: "group", "aria-label": "Batch actions" }, Object.values(buttons), retryButton, exportButton),
    ),
    message,
    confirm,
    h("section", { class: "card", "aria-labelledby": "text-title" }, h("h2", { id: "text-title" }, "Message"), text),
    h(
      "section",
      { class: "card", "aria-labelledby": "progress-title" },
      h("h2", { id: "progress-title" }, "Progress"),
      bar,
      h(
        "div",
        { class: "legend" },
        h("span", { class: "completed" }, counts.completed, " completed"),
        h("span", { class: "delivered", title: "The provider reported these sent messages delivered" }, counts.delivered, " delivered"),
        h("span", { class: "undelivered", title: "The provider could not deliver these sent messages" }, counts.undelivered, " undelivered"),
        h("span", { class: "failed" }, counts.failed, " failed"),
        h("span", { class: "skipped", title: skippedTitle }, counts.skipped, " skipped"),
        h("span", { class: "pending", title: "Handed to the provider, without a final answer yet" }, counts.pending, " pending"),
        waitingLegend,
        h("span", { class: "remaining", title: "Not handed to the provider yet" }, remaining, " not sent yet"),
        h("span", { class: "of" }, "of ", counts.total),
      ),
      pauseNote,
      holdNote,
      capNote,
      h(
        "dl",
        { class: "stats" },
        stat("Messages / second", rate),
        stat("Success rate", success),
        stat("Priority", priority),
        stat("Created", created),
        stat("Scheduled for", scheduled),
        stat("Valid until", validUntil),
        stat("Quiet hours", quietHours),
      ),
    ),
    h(
      "section",
      { class: "card chart", "aria-labelledby": "throughput-title" },
      h("h2", { id: "throughput-title" }, "Throughput"),
      chart,
      h(
        "dl",
        { class: "stats" },
        stat("Sent", totals.sent),
        stat("Failed", totals.failed),
        stat("Retries", totals.retries),
        stat("Segments", totals.segments),
        stat("Latency p50", totals.p50),
        stat("Latency p95", totals.p95),
        stat("Latency p99", totals.p99),
        stat("Delivery rate", totals.deliveryRate),
        stat("Delivered in (p50)", totals.deliveryP50),
      ),
    ),
    h(
      "section",
      { class: "card", "aria-label": "Errors and recipients" },
      h(
        "div",
        { class: "tabs", role: "tablist" },
        tabs.errors,
        tabs.recipients,
      ),
      panels.recipients,
      panels.errors,
    ),
  );
  panels.errors.append(
      h(
        "div",
        { class: "filters" },
        h("div", { class: "field" }, h("label", { for: "error-category" }, "Category"), category),
      ),
      h(
        "table",
        { id: "errors" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col", class: "num" }, "#"),
            h("th", { scope: "col" }, "Phone number"),
            h("th", { scope: "col" }, "Category"),
            h("th", { scope: "col" }, "Message"),
            h("th", { scope: "col", class: "num" }, "Attempts"),
            h("th", { scope: "col", class: "hide-sm" }, "Time"),
          ),
        ),
        errorRows,
      ),
      h("div", { class: "actions" }, errorsMore),
  );
  throughputChart(chart, []);

  function setActions(b) {
    const ok = (b && allowed[b.status]) || [];
    for (const [action, btn] of Object.entries(buttons)) btn.disabled = acting || !ok.includes(action);
  }

  function show(b) {
    // An answer that arrives after newer live updates is not shown.
    if (isStale(b, current)) return;
    const old = current;
    current = b;
    const p = b.progress || { total: 0, completed: 0, failed: 0, pending: 0 };
    status.replaceChildren(badge(b.status));
    title.textContent = b.name || "Batch";
    document.title = `${b.name || "Batch"} · smsbatch`;
    text.textContent = b.text || "";
    scheduled.textContent = b.scheduleTime ? formatTime(b.scheduleTime) : "–";
    validUntil.textContent = b.validUntil ? formatTime(b.validUntil) : "–";
    const q = b.quietHours;
    waitingLegend.hidden = !q && !p.waiting;
    quietHours.replaceChildren(
      ...(q
        ? [`${q.start}–${q.end}`, h("span", { class: "zone" }, q.timezone ? q.timezone : "each recipient's local time")]
        : ["–"]),
    );
    const linked = [];
    if (b.retryOf) linked.push("Retry of ", h("a", { href: `#/batch/${encodeURIComponent(b.retryOf)}`, class: "mono" }, b.retryOf.slice(-12)));
    if (b.retries && b.retries.length) {
      if (linked.length) linked.push(" · ");
      linked.push("Retried as ");
      b.retries.forEach((r, i) => linked.push(i ? ", " : "", h("a", { href: `#/batch/${encodeURIComponent(r)}`, class: "mono retry-link" }, r.slice(-12))));
    }
    links.replaceChildren(...linked);
    links.hidden = linked.length === 0;
    retryButton.hidden = !(p.failed > 0);
    setProgress(bar, p);
    for (const k of Object.keys(counts)) counts[k].textContent = String(p[k] || 0);
    // Skipped recipients have their outcome, and waiting ones are counted apart.
    remaining.textContent = String(
      Math.max(0, p.total - p.completed - p.failed - (p.skipped || 0) - p.pending - (p.waiting || 0)),
    );
    const m = b.metrics || {};
    rate.textContent = (m.messagesPerSecond || 0).toFixed(1);
    success.textContent = p.completed + p.failed > 0 ? `${Math.round((m.successRate || 0) * 100)}%` : "–";
    priority.textContent = b.priority;
    created.textContent = formatTime(b.createdAt);
    const pi = b.pauseInfo;
    if (b.status === "paused" && pi) {
      pauseNote.hidden = false;
      pauseNote.textContent = `Paused at ${formatTime(pi.pauseTime)}. Progress is kept; resume continues with the next unsent recipient.`;
    } else if (pi && pi.resumeTime) {
      pauseNote.hidden = false;
      pauseNote.textContent = `Paused at ${formatTime(pi.pauseTime)}, resumed at ${formatTime(pi.resumeTime)}.`;
    } else {
      pauseNote.hidden = true;
    }
    const hold = b.hold;
    if (hold && b.status === "processing") {
      holdNote.hidden = false;
      holdNote.textContent =
        hold.reason === "provider_outage"
          ? `Held since ${formatTime(hold.since)}: the SMS provider is failing on its side. Sending resumes by itself once it answers; no recipient fails because of it.`
          : `Held since ${formatTime(hold.since)}: ${hold.reason}.`;
    } else {
      holdNote.hidden = true;
    }
    const cap = b.rateCap;
    if (cap && b.status === "processing") {
      capNote.hidden = false;
      capNote.textContent = `Held to ${+cap.rate.toFixed(1)}/s by the account's rate cap, shared with its other running batches.`;
    } else {
      capNote.hidden = true;
    }
    setActions(b);
    buttons.pause.hidden = b.status !== "processing";
    buttons.resume.hidden = b.status !== "paused";
    buttons.start.hidden = b.status !== "pending";
    // A finished batch has nothing left to pause or cancel.
    buttons.cancel.hidden = final.has(b.status);

    // A finished batch changes no more once every sent message has its
    // delivery receipt: stop following it. Receipts come after the end, so
    // until then keep following.
    if (final.has(b.status) && (p.delivered || 0) + (p.undelivered || 0) >= p.completed) {
      stopLive();
      mode.className = "live";
      mode.textContent = "finished";
    }

    const moved =
      !old ||
      old.progress.completed !== p.completed ||
      old.progress.failed !== p.failed ||
      old.progress.delivered !== p.delivered ||
      old.progress.undelivered !== p.undelivered ||
      old.status !== b.status;
    if (moved) scheduleAnalytics();
    if (old && old.progress.failed !== p.failed && !errorsCursor) loadErrors(true);
  }

  // Analytics are heavier than the status: at most one request every 2 s.
  function scheduleAnalytics() {
    if (analyticsTimer) return;
    const wait = Math.max(0, lastAnalytics + 2000 - Date.now());
    analyticsTimer = setTimeout(async () => {
      analyticsTimer = 0;
      lastAnalytics = Date.now();
      try {
        const a = await api.analytics(id);
        throughputChart(chart, a.throughput || []);
        const t = a.totals || {};
        for (const k of ["sent", "failed", "retries", "segments"]) totals[k].textContent = String(t[k] || 0);
        const l = a.latencyMs || {};
        for (const k of ["p50", "p95", "p99"]) totals[k].textContent = l[k] ? `${Math.round(l[k])} ms` : "–";
        const receipts = (t.delivered || 0) + (t.undelivered || 0);
        totals.deliveryRate.textContent = receipts > 0 ? `${Math.round((a.deliveryRate || 0) * 100)}%` : "–";
        const dl = (a.deliveryLatencyMs || {}).p50;
        totals.deliveryP50.textContent = dl ? `${(dl / 1000).toFixed(1)} s` : "–";
      } catch {
        // The next change tries again.
      }
    }, wait);
  }

  function errorRow(e) {
    return h(
      "tr",
      {},
      h("td", { class: "num" }, e.index),
      h("td", { class: "mono" }, e.phoneNumber),
      h("td", {}, h("code", {}, e.category)),
      h("td", {}, e.message, e.code ? h("span", { class: "muted small" }, ` (${e.code})`) : ""),
      h("td", { class: "num" }, e.attempts),
      h("td", { class: "hide-sm" }, formatTime(e.time)),
    );
  }

  let errorsSeq = 0;
  async function loadErrors(reset) {
    const seq = ++errorsSeq;
    try {
      const page = await api.errors(id, { category: category.value, cursor: reset ? "" : errorsCursor });
      if (seq !== errorsSeq) return;
      if (reset) {
        errorRows.replaceChildren();
        errorsShown = new Set();
      }
      for (const e of page.errors) {
        errorsShown.add(e.index);
        errorRows.append(errorRow(e));
      }
      errorsCursor = page.nextCursor || "";
      errorsMore.hidden = !errorsCursor;
      if (errorRows.children.length === 0) {
        errorRows.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, category.value ? "No errors in this category." : "No errors.")));
      }
    } catch (err) {
      message.replaceChildren(errorAlert(err));
    }
  }

  async function act(action) {
    if (acting) return;
    acting = true;
    for (const btn of Object.values(buttons)) btn.disabled = true;
    let refresh = false;
    try {
      const b = await api.act(id, action);
      message.replaceChildren();
      if (b && b.id) show(b);
      else refresh = true;
    } catch (err) {
      const text = err instanceof ApiError && err.status === 409 ? `Cannot ${action}: ${err.message}` : err.message;
      message.replaceChildren(errorAlert(new Error(text)));
      refresh = true;
    } finally {
      acting = false;
      setActions(current);
    }
    // The command has its answer: the actions are back whatever the status
    // read below takes (on a connection gone silent, as long as it).
    if (refresh) {
      try {
        show(await api.batch(id));
      } catch {
        // current stays as it was.
      }
    }
  }

  function confirmCancel() {
    const p = (current && current.progress) || { total: 0, completed: 0, failed: 0 };
    const left = Math.max(0, p.total - p.completed - p.failed - (p.skipped || 0));
    confirmText.textContent = `The ${left} recipient${left === 1 ? "" : "s"} not sent yet will never be sent. This cannot be undone.`;
    confirm.showModal();
  }

  async function exportCSV() {
    exportButton.disabled = true;
    try {
      const a = h("a", { href: await api.exportURL(id), download: `batch-${id}.csv`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) {
      message.replaceChildren(errorAlert(err));
    } finally {
      exportButton.disabled = false;
    }
  }

  async function retryFailed() {
    retryButton.disabled = true;
    retryKey ||= newKey();
    try {
      const b = await api.retryFailed(id, retryKey);
      retryKey = "";
      location.hash = `#/batch/${encodeURIComponent(b.id)}`;
    } catch (err) {
      if (answered(err)) retryKey = "";
      message.replaceChildren(errorAlert(err));
      retryButton.disabled = false;
    }
  }

  async function poll() {
    show(await api.batch(id));
  }

  (async () => {
    try {
      show(await api.batch(id));
    } catch (err) {
      message.replaceChildren(errorAlert(err.status === 404 ? new Error("No such batch.") : err));
    }
  })();
  loadErrors(true);
  stopLive = follow({
    path: `/api/batch/${encodeURIComponent(id)}/ws`,
    poll,
    onMode: (m) => {
      mode.className = `live ${m === "live" ? "on" : "poll"}`;
      mode.textContent = m === "live" ? "live" : "updating every second";
    },
    onMessage: (msg) => {
      if (msg.type === "batch.status" && msg.batch && msg.batch.id === id) {
        show(msg.batch);
      } else if (msg.type === "batch.error" && msg.batchId === id && msg.error) {
        const e = msg.error;
        if (errorsCursor || errorsShown.has(e.index)) return; // load more will bring it
        if (category.value && category.value !== e.category) return;
        if (errorsShown.size === 0) errorRows.replaceChildren();
        errorsShown.add(e.index);
        errorRows.append(errorRow(e));
      }
    },
  });
  return () => {
    stopLive();
    clearTimeout(analyticsTimer);
  };
}
