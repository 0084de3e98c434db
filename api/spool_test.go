package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What is spooled reads back the same, in order: empty numbers and values,
// no variables, several, non-ASCII and long strings; from memory, and from the
// file a spool moves to when it outgrows memory, the move falling inside the
// records written.
func TestSpoolReadsBackWhatWasWritten(t *testing.T) {
	small := []spooled{
		{Phone: "+14155550100", Vars: map[string]string{"name": "Ada"}},
		{Phone: "", Vars: map[string]string{}},
		{Phone: "+442079460958", Vars: map[string]string{"a": "", "b": "é 😀", "name": "Grace"}},
		{Phone: "+4915123456789", Vars: map[string]string{"long": strings.Repeat("x", 70_000)}},
	}
	large := slices.Clone(small)
	for i := range 40 {
		large = append(large, spooled{Phone: fmt.Sprintf("+1415555%04d", i), Vars: map[string]string{"long": strings.Repeat("y", 10_000+i)}})
	}
	for _, tc := range []struct {
		name   string
		want   []spooled
		inFile bool
	}{{"memory", small, false}, {"file", large, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := newSpool(dir)
			t.Cleanup(s.close)
			for _, sp := range tc.want {
				names := slices.Sorted(maps.Keys(sp.Vars))
				values := make([]string, len(names))
				for i, n := range names {
					values[i] = sp.Vars[n]
				}
				if _, err := s.Write(appendSpoolRecord(nil, sp.Phone, names, values)); err != nil {
					t.Fatal(err)
				}
			}
			if (s.file != nil) != tc.inFile {
				t.Fatalf("spool in a file: %v, want %v", s.file != nil, tc.inFile)
			}
			if names, _ := os.ReadDir(dir); len(names) != 0 {
				t.Fatalf("the spool directory shows %v", names)
			}
			for range 2 { // read twice, as a create does
				var got []spooled
				for i, item := range readSpool(s) {
					if item.err != nil {
						t.Fatalf("record %d: %v", i, item.err)
					}
					got = append(got, item.spooled)
				}
				if len(got) != len(tc.want) {
					t.Fatalf("read %d records, want %d", len(got), len(tc.want))
				}
				for i := range tc.want {
					if got[i].Phone != tc.want[i].Phone || !maps.Equal(got[i].Vars, tc.want[i].Vars) {
						t.Fatalf("record %d: %+v, want %+v", i, got[i], tc.want[i])
					}
				}
			}
		})
	}
}

// A spool that cannot move to its file (its directory gone) fails the write
// that needed the file; what fits in memory never needed the directory.
func TestSpoolFailsOnlyWhenItNeedsItsFile(t *testing.T) {
	s := newSpool(filepath.Join(t.TempDir(), "missing"))
	t.Cleanup(s.close)
	if _, err := s.Write(make([]byte, spoolInMemory)); err != nil {
		t.Fatalf("a write that fits in memory: %v", err)
	}
	if _, err := s.Write([]byte{1}); err == nil {
		t.Fatal("a write past memory with no directory for its file succeeded")
	}
}

// A file cut anywhere inside a record reads its whole records, then fails with
// io.ErrUnexpectedEOF; cut between records, it simply ends.
func TestSpoolCutShortIsAnError(t *testing.T) {
	one := appendSpoolRecord(nil, "+14155550100", []string{"name"}, []string{"Ada"})
	two := append(append([]byte{}, one...), one...)
	for cut := len(one); cut <= len(two); cut++ {
		f := newSpool(t.TempDir())
		if _, err := f.Write(two[:cut]); err != nil {
			t.Fatal(err)
		}
		read, readErr := 0, error(nil)
		for _, item := range readSpool(f) {
			if item.err != nil {
				readErr = item.err
				break
			}
			read++
		}
		switch {
		case cut == len(one) || cut == len(two):
			if readErr != nil || read != cut/len(one) {
				t.Fatalf("cut at %d: %d records, %v", cut, read, readErr)
			}
		case read != 1 || !errors.Is(readErr, io.ErrUnexpectedEOF):
			t.Fatalf("cut at %d: %d records, %v; want 1 and io.ErrUnexpectedEOF", cut, read, readErr)
		}
	}
}

// An upload too large for the spool's memory goes through its file the same
// way: every recipient is checked against the template once it is known (the
// last one's missing variable is named), counted in a dry run, and stored.
func TestAnUploadSpooledToItsFileIsReadWhole(t *testing.T) {
	const n = 8000
	body := func(lastHasName bool) string {
		var b strings.Builder
		b.WriteString(`{"recipients": [`)
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			vars := fmt.Sprintf(`{"name": "Customer %04d", "note": %q}`, i, strings.Repeat("n", 60))
			if i == n-1 && !lastHasName {
				vars = `{"note": "x"}`
			}
			fmt.Fprintf(&b, `{"phoneNumber": "+1415555%04d", "variables": %s}`, i, vars)
		}
		b.WriteString(`], "text": "Hi {{name}}"}`)
		return b.String()
	}
	if len(body(true)) < 2*spoolInMemory {
		t.Fatalf("the body is %d bytes: too small to leave the spool's memory", len(body(true)))
	}
	env := newAPI(t, nil)
	bad := env.do("POST", "/api/batch", testKey, body(false))
	if bad.Code != http.StatusUnprocessableEntity || !strings.Contains(bad.Body.String(), fmt.Sprintf("recipients[%d].variables", n-1)) {
		t.Fatalf("the last recipient without its variable: %d %s", bad.Code, bad.Body)
	}
	dry := env.do("POST", "/api/batch?dryRun=true", testKey, body(true))
	var d dryRun
	if err := json.Unmarshal(dry.Body.Bytes(), &d); err != nil || dry.Code != http.StatusOK || d.Total != n || d.TotalSegments != n {
		t.Fatalf("dry run: %d, total %d, segments %d, want %d each (%v)", dry.Code, d.Total, d.TotalSegments, n, err)
	}
	created := env.do("POST", "/api/batch", testKey, body(true))
	var st struct{ Progress struct{ Total int } }
	if err := json.Unmarshal(created.Body.Bytes(), &st); err != nil || created.Code != http.StatusCreated || st.Progress.Total != n {
		t.Fatalf("create: %d, total %d, want %d (%v)", created.Code, st.Progress.Total, n, err)
	}
	if files := env.spoolFiles(t); len(files) != 0 {
		t.Fatalf("spool directory holds %v", files)
	}
}
