// Package web owns smsbatch's browser dashboard: static HTML, CSS and JavaScript
// modules embedded in the binary and served at "/" and "/static/", with the
// security and caching headers they need. The pages talk to the REST API (and the
// WebSocket feed when there is one) with the API key the user types in; this
// package serves files only and never sees a key.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// ContentSecurityPolicy allows the page to load scripts, styles and images from
// its own origin only and to connect back only to it (WebSocket included: CSP 3's
// 'self' matches ws: and wss: on the same host). No inline script or style
// markup is needed: the scripts set styles through the CSSOM, which CSP allows.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// file is one embedded file with the strong validator it is served with.
type file struct {
	name string
	data []byte
	etag string
}

// Handler serves the dashboard: index.html at "/" and the files of the static
// folder under "/static/". Mount it for "/" and "/static/*" outside the API's
// authentication: the page itself holds no data.
//
// Every answer says Cache-Control: no-cache with a content-hash ETag: the asset
// names carry no version, so a browser must revalidate (a cheap 304) to be sure
// it runs the JavaScript of the binary it talks to, never a previous release's.
func Handler() http.Handler {
	files, err := load()
	if err != nil {
		// The files are compiled in; failing here means the binary itself is broken.
		panic(fmt.Sprintf("web: embedded files: %v", err))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := "index.html"
		if r.URL.Path != "/" {
			name = strings.TrimPrefix(path.Clean(r.URL.Path), "/static/")
		}
		f, ok := files[name]
		if !ok || r.URL.Path != "/" && !strings.HasPrefix(r.URL.Path, "/static/") {
			http.NotFound(w, r)
			return
		}
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		if f.name == "index.html" {
			h.Set("Content-Security-Policy", ContentSecurityPolicy)
			h.Set("X-Frame-Options", "DENY")
		}
		// ServeContent sets the Content-Type from the extension (text/javascript
		// for modules, which browsers insist on) and answers If-None-Match.
		http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.data))
	})
}

// load reads every embedded file once, keyed by its path under static/.
func load() (map[string]file, error) {
	root, err := fs.Sub(static, "static")
	if err != nil {
		return nil, err
	}
	files := map[string]file{}
	err = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(root, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		files[p] = file{name: path.Base(p), data: data, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	return files, err
}
