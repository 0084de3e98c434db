package web

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runDashboardJS runs script, an ES module, under node next to a copy of the
// dashboard's modules (./js/*.js) and the fake DOM (./dom.mjs), and returns
// what it printed. The script fails the test by throwing.
func runDashboardJS(t *testing.T, script string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_NODE") != "" {
			t.Fatal("node is not installed, and SMSBATCH_REQUIRE_NODE is set")
		}
		t.Skip("node not installed")
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "js"), 0o700); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("static/js/*.js")
	if err != nil || len(files) == 0 {
		t.Fatalf("no modules: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "js", filepath.Base(f)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dom, err := os.ReadFile("testdata/dom.mjs")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"package.json": `{"type":"module"}`,
		"dom.mjs":      string(dom),
		"test.mjs":     `import * as dom from "./dom.mjs";` + "\n" + script,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(node, "test.mjs")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}
