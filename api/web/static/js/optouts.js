// The opt-out page: the tenant's suppression list (numbers that replied STOP or
// were added by hand), a form to add a number, and a button to take one off.
// Nobody on it is sent to.

import { api, ApiError } from "./api.js";
import { errorAlert, formatTime, h } from "./ui.js";

const pageSize = 100;

export function render(root) {
  const tbody = h("tbody");
  const message = h("div", { "aria-live": "polite" });
  const total = h("strong", { id: "optout-total" }, "0");
  const more = h("button", { type: "button", id: "optouts-more", hidden: true, onclick: () => load(cursor) }, "Load more");
  const input = h("input", {
    id: "optout-phone",
    name: "phoneNumber",
    type: "text",
    inputmode: "tel",
    autocomplete: "off",
    placeholder: "+14155550100",
    required: true,
  });
  const fieldError = h("p", { class: "field-error", id: "optout-error", role: "alert" });
  const field = h("div", { class: "field" }, h("label", { for: "optout-phone" }, "Phone number"), input, fieldError);
  const add = h("button", { type: "submit", class: "primary", id: "optout-add" }, "Add to the list");
  let cursor = "";
  let count = 0;

  root.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("h1", {}, "Opt-outs"),
        h("p", { class: "muted" }, "Numbers on this list are never sent to: they replied STOP (or a synonym) or were added here. A START reply takes a number off."),
      ),
    ),
    message,
    h(
      "form",
      {
        class: "card",
        id: "optout-form",
        novalidate: true,
        onsubmit: (ev) => {
          ev.preventDefault();
          submit();
        },
      },
      h("h2", {}, "Add a number"),
      field,
      h("div", { class: "actions" }, add),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "optouts-title" },
      h("h2", { id: "optouts-title" }, "The list ", h("span", { class: "muted small" }, "(", total, " numbers)")),
      h(
        "table",
        { id: "optouts" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Phone number"),
            h("th", { scope: "col" }, "Since"),
            h("th", { scope: "col" }, "How"),
            h("th", { scope: "col" }, h("span", { class: "hide-sm" }, "Action")),
          ),
        ),
        tbody,
      ),
      h("div", { class: "actions" }, more),
    ),
  );

  function setTotal(n) {
    count = Math.max(0, n);
    total.textContent = String(count);
  }

  function row(e) {
    const remove = h("button", { type: "button", class: "danger", onclick: () => removeNumber(e.phoneNumber, tr, remove) }, "Remove");
    const tr = h(
      "tr",
      { "data-phone": e.phoneNumber },
      h("td", { class: "mono" }, e.phoneNumber),
      h("td", {}, formatTime(e.since)),
      h("td", {}, e.source === "keyword" ? "replied with a keyword" : "added by hand"),
      h("td", {}, remove),
    );
    return tr;
  }

  function showEmpty() {
    if (!tbody.querySelector("tr[data-phone]")) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "Nobody has opted out.")));
    }
  }

  async function load(from) {
    try {
      const page = await api.optOuts(pageSize, from);
      if (!from) tbody.replaceChildren();
      for (const e of page.optOuts) tbody.append(row(e));
      cursor = page.nextCursor || "";
      more.hidden = !cursor;
      setTotal(page.total);
      showEmpty();
    } catch (err) {
      message.replaceChildren(errorAlert(err));
    }
  }

  async function submit() {
    fieldError.textContent = "";
    field.classList.remove("invalid");
    const phone = input.value.trim();
    if (!phone) {
      fieldError.textContent = "Enter a phone number.";
      field.classList.add("invalid");
      return;
    }
    add.disabled = true;
    try {
      const e = await api.addOptOut(phone);
      input.value = "";
      message.replaceChildren(h("div", { class: "alert info" }, `${e.phoneNumber} is on the list.`));
      // The list is in number order: reload its first page to show it in place.
      await load("");
    } catch (err) {
      if (err instanceof ApiError && err.details.length) {
        fieldError.textContent = err.details.map((d) => d.problem).join("; ");
        field.classList.add("invalid");
      } else {
        message.replaceChildren(errorAlert(err));
      }
    } finally {
      add.disabled = false;
    }
  }

  async function removeNumber(phone, tr, btn) {
    btn.disabled = true;
    try {
      await api.removeOptOut(phone);
      tr.remove();
      setTotal(count - 1);
      message.replaceChildren(h("div", { class: "alert info" }, `${phone} is off the list.`));
      showEmpty();
    } catch (err) {
      btn.disabled = false;
      message.replaceChildren(errorAlert(err));
    }
  }

  load("");
  return () => {};
}
