package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/smsbatch/smsbatch/api"
)

// Every request the end-to-end tests make through client.do, and every answer
// they get, is checked against the OpenAPI document the service serves
// (api.OpenAPI), so that the document cannot drift from the service: a route,
// a parameter, a field or a status it does not describe fails the test that
// met it.

var (
	openAPIOnce   sync.Once
	openAPIRouter routers.Router
	openAPIErr    error
)

func openAPI(t testing.TB) routers.Router {
	t.Helper()
	openAPIOnce.Do(func() {
		var doc *openapi3.T
		if doc, openAPIErr = openapi3.NewLoader().LoadFromData(api.OpenAPI); openAPIErr != nil {
			return
		}
		if openAPIErr = doc.Validate(context.Background()); openAPIErr != nil {
			return
		}
		openAPIRouter, openAPIErr = gorillamux.NewRouter(doc)
	})
	if openAPIErr != nil {
		t.Fatalf("the OpenAPI document: %v", openAPIErr)
	}
	return openAPIRouter
}

// checkOpenAPI validates one exchange. A request the service refused (a 4xx
// or 5xx) may break the document's rules on purpose, as the bad-input tests'
// do: only its answer is checked. A request it accepted must follow them.
// Benchmarks are not checked: the validator compiles the document's schemas
// for every exchange (2.7 CPU-s of the PostgreSQL end to end's 100 creates
// and its status polls), on the cores the service they measure runs on; the
// tests check every exchange they make.
func checkOpenAPI(t testing.TB, req *http.Request, body []byte, resp *http.Response, answer []byte) {
	t.Helper()
	if _, bench := t.(*testing.B); bench {
		return
	}
	route, params, err := openAPI(t).FindRoute(req)
	if err != nil {
		t.Errorf("OpenAPI: %s %s is not in the document: %v", req.Method, req.URL.Path, err)
		return
	}
	// The request as the server got it, with its body to read again.
	sent := req.Clone(req.Context())
	sent.Body = io.NopCloser(bytes.NewReader(body))
	in := &openapi3filter.RequestValidationInput{
		Request: sent, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if resp.StatusCode < 400 {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			t.Errorf("OpenAPI: the request %s %s, which the service accepted (%d), does not follow the document: %v",
				req.Method, req.URL.RequestURI(), resp.StatusCode, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(answer)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		t.Errorf("OpenAPI: the answer %d to %s %s does not follow the document: %v\n%s",
			resp.StatusCode, req.Method, req.URL.RequestURI(), err, clip(answer, 600))
	}
}

func clip(b []byte, n int) []byte {
	if len(b) > n {
		return append(b[:n:n], "…"...)
	}
	return b
}
