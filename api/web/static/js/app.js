// The dashboard's entry point: the API key prompt and hash routing between the
// batches list (#/), a batch (#/batch/<id>), the create form (#/new) and the
// opt-out list (#/optouts).

import { clearKey, getKey, setKey, whenUnauthorized } from "./api.js";
import * as batch from "./batch.js";
import * as create from "./create.js";
import * as list from "./list.js";
import * as optouts from "./optouts.js";

const main = document.getElementById("main");
const dialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyError = document.getElementById("key-error");
const changeKey = document.getElementById("change-key");

let cleanup = () => {};

function askKey(reason = "") {
  keyError.textContent = reason;
  keyInput.value = "";
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
}

keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    keyError.textContent = "Enter a key.";
    return;
  }
  setKey(key);
  dialog.close();
  changeKey.hidden = false;
  route();
});
// Without a key there is nothing to show: Escape must not leave an empty page.
dialog.addEventListener("cancel", (ev) => {
  if (!getKey()) ev.preventDefault();
});

changeKey.addEventListener("click", () => {
  clearKey();
  cleanup();
  cleanup = () => {};
  main.replaceChildren();
  askKey();
});

whenUnauthorized(() => {
  if (dialog.open) return;
  clearKey();
  cleanup();
  cleanup = () => {};
  main.replaceChildren();
  askKey("The API refused that key. Enter a valid one.");
});

function route() {
  cleanup();
  cleanup = () => {};
  if (!getKey()) {
    askKey();
    return;
  }
  changeKey.hidden = false;
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = /^\/batch\/([^/]+)$/.exec(hash);
  if (m) {
    document.title = "Batch · smsbatch";
    cleanup = batch.render(main, decodeURIComponent(m[1]));
  } else if (hash === "/new") {
    document.title = "New batch · smsbatch";
    cleanup = create.render(main);
  } else if (hash === "/optouts") {
    document.title = "Opt-outs · smsbatch";
    cleanup = optouts.render(main);
  } else {
    document.title = "Batches · smsbatch";
    cleanup = list.render(main);
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
