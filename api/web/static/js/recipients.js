// The recipients tab of the batch page: every recipient with its outcome, in
// index order, filtered by status and searched by number.

import { api } from "./api.js";
import { errorAlert, formatTime, h } from "./ui.js";

const statuses = ["sent", "failed", "skipped", "pending", "unsent"];

export function recipientsPanel(id) {
  const message = h("div", { "aria-live": "polite" });
  const status = h(
    "select",
    { id: "recipient-status", onchange: () => load(true) },
    h("option", { value: "" }, "All statuses"),
    statuses.map((s) => h("option", { value: s }, s)),
  );
  const phone = h("input", {
    id: "recipient-phone", type: "search", inputmode: "tel", autocomplete: "off", spellcheck: "false",
    placeholder: "+1415…", "aria-describedby": "recipient-phone-hint",
  });
  let typing = 0;
  phone.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => load(true), 250);
  });
  const rows = h("tbody");
  const more = h("button", { type: "button", id: "recipients-more", hidden: true, onclick: () => load(false) }, "Load more");
  let cursor = "";
  let seq = 0;

  const el = h(
    "div",
    {},
    h(
      "div",
      { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "recipient-status" }, "Status"), status),
      h(
        "div",
        { class: "field" },
        h("label", { for: "recipient-phone" }, "Number ", h("span", { class: "hint", id: "recipient-phone-hint" }, "or its beginning")),
        phone,
      ),
    ),
    message,
    h(
      "table",
      { id: "recipients" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", class: "num" }, "#"),
          h("th", { scope: "col" }, "Phone number"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col", class: "hide-sm" }, "Attempts"),
          h("th", { scope: "col", class: "hide-sm" }, "Time"),
          h("th", { scope: "col", class: "hide-sm" }, "Provider ID"),
        ),
      ),
      rows,
    ),
    h("div", { class: "actions" }, more),
  );

  function row(r) {
    const why = r.category ? h("span", { class: "muted small" }, ` ${r.category}`) : "";
    const delivery = r.delivery ? h("span", { class: "muted small" }, ` · ${r.delivery}`) : "";
    return h(
      "tr",
      { "data-index": r.index, "data-status": r.status },
      h("td", { class: "num" }, r.index),
      h("td", { class: "mono" }, r.phoneNumber),
      h("td", {}, h("span", { class: `badge r-${r.status}` }, r.status), why, delivery),
      h("td", { class: "num hide-sm" }, r.attempts),
      h("td", { class: "hide-sm" }, formatTime(r.outcomeAt || r.dispatchedAt)),
      h("td", { class: "mono small hide-sm" }, r.providerMessageId || ""),
    );
  }

  async function load(reset) {
    const mine = ++seq;
    try {
      const page = await api.recipients(id, { status: status.value, phone: phone.value.trim(), cursor: reset ? "" : cursor });
      if (mine !== seq) return;
      message.replaceChildren();
      if (reset) rows.replaceChildren();
      for (const r of page.recipients) rows.append(row(r));
      cursor = page.nextCursor || "";
      more.hidden = !cursor;
      if (rows.children.length === 0) {
        rows.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No recipient matches.")));
      }
    } catch (err) {
      if (mine === seq) message.replaceChildren(errorAlert(err));
    }
  }

  return { el, load: () => load(true) };
}
