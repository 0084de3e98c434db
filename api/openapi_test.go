package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"
)

// The document is OpenAPI 3.1, valid, served as it is embedded, and names
// every route the handler has: a route added without its description fails here.
func TestOpenAPIDocumentDescribesEveryRoute(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Fatalf("the document is OpenAPI %s, want 3.1.0", doc.OpenAPI)
	}
	if err := doc.Validate(t.Context()); err != nil {
		t.Fatalf("the document is not valid OpenAPI 3.1: %v", err)
	}

	env := newWebhookAPI(t) // every optional route but the live ones
	routes, ok := env.handler.(chi.Routes)
	if !ok {
		t.Fatalf("the handler is a %T, not a chi router", env.handler)
	}
	seen := map[string]bool{}
	err = chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if route == "/" || strings.HasPrefix(route, "/static/") {
			return nil // the dashboard's files
		}
		seen[method+" "+route] = true
		item := doc.Paths.Find(route)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("%s %s is served but not in the OpenAPI document", method, route)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Served only with a metrics handler and a live hub, which this handler has not.
	optional := map[string]bool{"/metrics": true, "/api/ws/ticket": true, "/api/ws": true, "/api/batch/{id}/ws": true}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !seen[method+" "+path] && !optional[path] {
				t.Errorf("%s %s is in the OpenAPI document but not served", method, path)
			}
		}
	}

	a := env.do("GET", "/api/openapi.json", "", "")
	if a.Code != http.StatusOK || a.Body.String() != string(OpenAPI) || a.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/openapi.json without a key: %d %s, want the document", a.Code, a.Header().Get("Content-Type"))
	}
}
