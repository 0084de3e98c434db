// The create form: template with its variables and segment count as you type,
// recipients as CSV (pasted or read from a file), options, and the API's
// validation problems shown next to what caused them.

import { answered, api, ApiError, newKey } from "./api.js";
import * as csv from "./csv.js";
import { segments, variables } from "./sms.js";
import { h } from "./ui.js";

const example = "phoneNumber,name\n+14155550100,Ada\n+14155550101,Grace";

export function render(root) {
  const fieldError = (id) => h("p", { class: "field-error", id, role: "alert" });
  const errors = {
    name: fieldError("name-error"),
    text: fieldError("text-error"),
    recipients: fieldError("recipients-error"),
    priority: fieldError("priority-error"),
    scheduleTime: fieldError("schedule-error"),
    quietHours: fieldError("quiet-error"),
    timezone: fieldError("timezone-error"),
    validUntil: fieldError("valid-until-error"),
    autoStart: fieldError("autostart-error"),
  };
  const summary = h("div", { id: "form-errors", "aria-live": "polite" });

  const name = h("input", { id: "batch-name-input", name: "name", type: "text", maxlength: 200, autocomplete: "off", "aria-describedby": "name-error" });
  const text = h("textarea", {
    id: "template", name: "text", rows: 4, required: true, maxlength: 1600,
    "aria-describedby": "template-info text-error",
    placeholder: "Hi {{name}}, your order {{order}} has shipped",
  });
  const varsOut = h("span", { class: "chips", id: "template-vars" });
  const segOut = h("output", { id: "template-segments", for: "template" });
  const needs = h("span", { id: "csv-columns" });

  const rcpts = h("textarea", {
    id: "recipients", name: "recipients", rows: 8, class: "mono", spellcheck: "false",
    "aria-describedby": "recipients-hint recipients-error", placeholder: example,
  });
  const file = h("input", { id: "recipients-file", type: "file", accept: ".csv,text/csv,text/plain" });
  const rcptSummary = h("span", { id: "recipients-count", class: "hint" });
  const rcptProblems = h("ul", { id: "recipient-problems", class: "field-error" });

  const priority = h(
    "select",
    { id: "priority", name: "priority", "aria-describedby": "priority-error" },
    h("option", { value: "high" }, "High"),
    h("option", { value: "normal", selected: true }, "Normal"),
    h("option", { value: "low" }, "Low"),
  );
  const schedule = h("input", { id: "schedule", name: "scheduleTime", type: "datetime-local", "aria-describedby": "schedule-hint schedule-error" });
  const autoStart = h("input", { id: "autostart", name: "autoStart", type: "checkbox", checked: true });
  const quietStart = h("input", { id: "quiet-start", name: "quietStart", type: "time", "aria-describedby": "quiet-hint quiet-error" });
  const quietEnd = h("input", { id: "quiet-end", name: "quietEnd", type: "time", "aria-describedby": "quiet-hint quiet-error" });
  const timezone = h("input", {
    id: "timezone", name: "timezone", type: "text", list: "timezones", autocomplete: "off", spellcheck: "false",
    placeholder: "America/New_York", "aria-describedby": "timezone-hint timezone-error",
  });
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const zoneList = h("datalist", { id: "timezones" }, ["UTC", ...zones.filter((z) => z !== "UTC")].map((z) => h("option", { value: z })));
  const validUntil = h("input", {
    id: "valid-until-input", name: "validUntil", type: "datetime-local", "aria-describedby": "valid-until-hint valid-until-error",
  });
  const submit = h("button", { type: "submit", class: "primary", id: "create-submit" }, "Create batch");

  const field = (key, ...children) => h("div", { class: "field", "data-field": key }, ...children);

  const form = h(
    "form",
    { id: "create-form", novalidate: true, onsubmit: onSubmit },
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Message"),
      field("name", h("label", { for: "batch-name-input" }, "Name ", h("span", { class: "hint" }, "optional, shown in the list")), name, errors.name),
      field(
        "text",
        h("label", { for: "template" }, "Template ", h("span", { class: "hint" }, "placeholders look like {{name}}")),
        text,
        h(
          "div",
          { class: "template-info", id: "template-info" },
          h("span", {}, "Variables: ", varsOut),
          h("span", {}, "Length: ", segOut),
        ),
        errors.text,
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Recipients"),
      field(
        "recipients",
        h("label", { for: "recipients" }, "Recipients as CSV ", rcptSummary),
        h(
          "p",
          { class: "hint", id: "recipients-hint" },
          "A header row with a phoneNumber column and one column per variable",
          needs,
          ", then one row per recipient. Paste it here or read a file.",
        ),
        rcpts,
        h("div", { class: "actions" }, h("label", { for: "recipients-file", class: "hint" }, "CSV file"), file),
        errors.recipients,
        rcptProblems,
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Options"),
      h(
        "div",
        { class: "row" },
        field("priority", h("label", { for: "priority" }, "Priority"), priority, errors.priority),
        field(
          "scheduleTime",
          h("label", { for: "schedule" }, "Schedule ", h("span", { class: "hint", id: "schedule-hint" }, "your local time; empty sends now")),
          schedule,
          errors.scheduleTime,
        ),
        field("autoStart", h("label", { class: "check" }, autoStart, "Start automatically"), errors.autoStart),
      ),
      h(
        "div",
        { class: "row" },
        field(
          "quietHours",
          h(
            "fieldset",
            {},
            h("legend", {}, "Quiet hours ", h("span", { class: "hint", id: "quiet-hint" }, "recipient's local time; both or neither")),
            h(
              "div",
              { class: "pair" },
              h("div", {}, h("label", { for: "quiet-start", class: "sub" }, "From"), quietStart),
              h("div", {}, h("label", { for: "quiet-end", class: "sub" }, "To"), quietEnd),
            ),
          ),
          errors.quietHours,
        ),
        field(
          "timezone",
          h("label", { for: "timezone" }, "Time zone ", h("span", { class: "hint", id: "timezone-hint" }, "for the quiet hours; empty: each number's zone")),
          timezone,
          zoneList,
          errors.timezone,
        ),
        field(
          "validUntil",
          h("label", { for: "valid-until-input" }, "Valid until ", h("span", { class: "hint", id: "valid-until-hint" }, "your local time; unsent then: skipped")),
          validUntil,
          errors.validUntil,
        ),
      ),
      h("div", { class: "actions" }, submit, h("a", { class: "button", href: "#/" }, "Back to batches")),
    ),
  );

  root.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "New batch")), summary, form);

  // attempt is the body of a create whose outcome is unknown (the network
  // failed, or the server answered 5xx) and the Idempotency-Key it was sent
  // with: sending the same body again reuses the key, so the server answers
  // with the batch the first try may have created instead of creating another.
  let attempt = null;

  function updateTemplate() {
    const names = variables(text.value);
    varsOut.replaceChildren(...(names.length ? names.map((n) => h("span", { class: "chip" }, n)) : ["none"]));
    const s = segments(text.value);
    const unit = s.encoding === "GSM-7" ? "characters" : "UTF-16 units";
    segOut.textContent = text.value
      ? `${s.units} ${unit}, ${s.encoding}, ${s.segments} segment${s.segments === 1 ? "" : "s"} (before variables are filled in)`
      : "empty";
    needs.textContent = names.length ? ` (${names.join(", ")})` : "";
    updateRecipients();
  }

  function updateRecipients() {
    const parsed = csv.recipients(rcpts.value);
    rcptSummary.textContent = rcpts.value.trim() ? `(${parsed.recipients.length} recipient${parsed.recipients.length === 1 ? "" : "s"})` : "";
    return parsed;
  }

  text.addEventListener("input", updateTemplate);
  rcpts.addEventListener("input", updateRecipients);
  file.addEventListener("change", async () => {
    const f = file.files && file.files[0];
    if (!f) return;
    rcpts.value = await f.text();
    updateRecipients();
  });
  updateTemplate();

  function clearErrors() {
    summary.replaceChildren();
    for (const el of Object.values(errors)) el.textContent = "";
    rcptProblems.replaceChildren();
    for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // mark shows a problem at a field; inputs are the ones it is about, by
  // default all of the field's.
  function mark(key, problem, inputs) {
    const out = errors[key];
    out.textContent = out.textContent ? `${out.textContent} ${problem}` : problem;
    const f = form.querySelector(`.field[data-field="${key}"]`);
    f.classList.add("invalid");
    for (const input of inputs || f.querySelectorAll("input, select, textarea")) input.setAttribute("aria-invalid", "true");
  }

  // The API names the quiet hours as one field; its problem says which end.
  function quietInputs(problem) {
    if (problem.startsWith("quietHours.start ")) return [quietStart];
    if (problem.startsWith("quietHours.end ")) return [quietEnd];
    return [quietStart, quietEnd];
  }

  function recipientProblem(line, what) {
    rcptProblems.append(h("li", {}, line ? `Row ${line}: ${what}` : what));
    const f = form.querySelector('.field[data-field="recipients"]');
    f.classList.add("invalid");
    rcpts.setAttribute("aria-invalid", "true");
  }

  // showProblems puts each of the API's details next to its input; recipients[i]
  // problems become a list naming the CSV row (line) of recipient i.
  function showProblems(err, lines) {
    const other = [];
    for (const d of err.details) {
      const f = d.field || "";
      const m = /^recipients\[(\d+)\](?:\.(.*))?$/.exec(f);
      if (m) {
        const i = Number(m[1]);
        const col = m[2] ? m[2].replace(/^variables\./, "") : "";
        recipientProblem(lines[i], col ? `${col}: ${d.problem}` : d.problem);
      } else if (f === "text") mark("text", d.problem);
      else if (f === "recipients") mark("recipients", d.problem);
      else if (f === "options.priority") mark("priority", d.problem);
      else if (f === "options.name") mark("name", d.problem);
      else if (f === "options.scheduleTime") mark("scheduleTime", d.problem);
      else if (f === "options.autoStart") mark("autoStart", d.problem);
      else if (f === "options.quietHours" || f.startsWith("options.quietHours.")) mark("quietHours", d.problem, quietInputs(d.problem));
      else if (f === "options.timezone") mark("timezone", d.problem);
      else if (f === "options.validUntil") mark("validUntil", d.problem);
      else other.push(f ? `${f}: ${d.problem}` : d.problem);
    }
    summary.replaceChildren(
      h(
        "div",
        { class: "alert error", role: "alert" },
        err.details.length ? "The batch was not created: fix the problems marked below." : `The batch was not created: ${err.message}`,
        other.length ? h("ul", {}, other.map((o) => h("li", {}, o))) : null,
      ),
    );
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    clearErrors();
    const parsed = updateRecipients();
    if (parsed.problems.length) {
      for (const p of parsed.problems) recipientProblem(p.line, p.problem);
      summary.replaceChildren(h("div", { class: "alert error", role: "alert" }, "The recipients CSV cannot be read: see the rows listed."));
      rcpts.focus();
      return;
    }
    const options = { priority: priority.value, autoStart: autoStart.checked };
    if (name.value.trim()) options.name = name.value.trim();
    if (schedule.value) {
      const when = rfc3339(schedule.value);
      if (!when) {
        mark("scheduleTime", "not a valid date and time");
        return;
      }
      options.scheduleTime = when;
    }
    // A time typed in part reads as empty: say so rather than drop it.
    const partial = [quietStart, quietEnd].filter((i) => i.validity.badInput);
    if (partial.length) {
      mark("quietHours", "enter whole times, hours and minutes", partial);
      return;
    }
    if (quietStart.value || quietEnd.value) {
      if (!quietStart.value || !quietEnd.value) {
        mark("quietHours", "give both a start and an end, or neither", [quietStart.value ? quietEnd : quietStart]);
        return;
      }
      options.quietHours = { start: quietStart.value, end: quietEnd.value };
    }
    // Without quiet hours the API refuses a time zone, and says so at the field.
    if (timezone.value.trim()) options.timezone = timezone.value.trim();
    if (validUntil.validity.badInput) {
      mark("validUntil", "enter a whole date and time");
      return;
    }
    if (validUntil.value) {
      const until = rfc3339(validUntil.value);
      if (!until) {
        mark("validUntil", "not a valid date and time");
        return;
      }
      options.validUntil = until;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    const body = { text: text.value, recipients: parsed.recipients, options };
    const sent = JSON.stringify(body);
    if (!attempt || attempt.body !== sent) attempt = { body: sent, key: newKey() };
    try {
      const b = await api.create(body, attempt.key);
      attempt = null;
      location.hash = `#/batch/${encodeURIComponent(b.id)}`;
    } catch (err) {
      if (answered(err)) attempt = null;
      if (err instanceof ApiError) showProblems(err, parsed.lines);
      else summary.replaceChildren(h("div", { class: "alert error", role: "alert" }, err.message));
      const first = form.querySelector("[aria-invalid]");
      (first || summary).focus?.();
    } finally {
      submit.disabled = false;
      submit.textContent = "Create batch";
    }
  }

  return () => {};
}

// rfc3339 turns a datetime-local value, which is local time, into the API's
// UTC form; "" when it is not a time.
function rfc3339(local) {
  const when = new Date(local);
  return Number.isNaN(when.getTime()) ? "" : when.toISOString().replace(/\.\d{3}Z$/, "Z");
}
