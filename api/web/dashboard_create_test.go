package web

import (
	"strings"
	"testing"
)

// When creating a batch fails for the network (the request may well have
// reached the server, whose answer was lost) the form says so and lets the
// user try again. Trying again with the same form is the same request: it
// must carry the same Idempotency-Key, or the server creates a second batch
// and every recipient gets the message twice.
func TestCreateFormRetriesWithTheSameIdempotencyKey(t *testing.T) {
	out := runDashboardJS(t, `
const { onFetch, jsonResponse, tick, text, requests } = dom;
localStorage.setItem("smsbatch.apiKey", "k");
let down = true;
onFetch((r) => {
  if (r.method === "POST" && r.path === "/api/batch") {
    if (down) throw new TypeError("Failed to fetch");
    return jsonResponse(201, { id: "NEW", status: "processing" });
  }
  return jsonResponse(404, {});
});
const { render } = await import("./js/create.js");
const main = document.createElement("main");
document.body.append(main);
render(main);
main.querySelector("#template").value = "Hello {{name}}";
main.querySelector("#recipients").value = "phoneNumber,name\n+14155550100,Ada\n";
const form = main.querySelector("#create-form");
form.dispatchEvent({ type: "submit" });
await tick(50);
console.log("after the first try: " + text(main.querySelector("#form-errors")));
down = false;
form.dispatchEvent({ type: "submit" });   // the user clicks Create batch again
await tick(50);
const keys = [...new Set(requests.filter((r) => r.method === "POST" && r.path === "/api/batch").map((r) => r.headers["Idempotency-Key"]))];
console.log("location: " + location.hash);
console.log("distinct keys: " + keys.length);
`)
	t.Log(out)
	if !strings.Contains(out, "distinct keys: 1") {
		t.Fatalf("the second submission of the same form carried a new Idempotency-Key: a second batch if the first reached the server:\n%s", out)
	}
}
