package api

import (
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What is spooled reads back the same, in order: empty numbers and values,
// no variables, several, non-ASCII and long strings.
func TestSpoolReadsBackWhatWasWritten(t *testing.T) {
	want := []spooled{
		{Phone: "+14155550100", Vars: map[string]string{"name": "Ada"}},
		{Phone: "", Vars: map[string]string{}},
		{Phone: "+442079460958", Vars: map[string]string{"a": "", "b": "é 😀", "name": "Grace"}},
		{Phone: "+4915123456789", Vars: map[string]string{"long": strings.Repeat("x", 70_000)}},
	}
	f := spoolFile(t)
	var buf []byte
	for _, sp := range want {
		names := slices.Sorted(maps.Keys(sp.Vars))
		values := make([]string, len(names))
		for i, n := range names {
			values[i] = sp.Vars[n]
		}
		buf = appendSpoolRecord(buf, sp.Phone, names, values)
	}
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	for range 2 { // read twice, as a create does
		var got []spooled
		for i, item := range readSpool(f) {
			if item.err != nil {
				t.Fatalf("record %d: %v", i, item.err)
			}
			got = append(got, item.spooled)
		}
		if len(got) != len(want) {
			t.Fatalf("read %d records, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Phone != want[i].Phone || !maps.Equal(got[i].Vars, want[i].Vars) {
				t.Fatalf("record %d: %+v, want %+v", i, got[i], want[i])
			}
		}
	}
}

// A file cut anywhere inside a record reads its whole records, then fails with
// io.ErrUnexpectedEOF; cut between records, it simply ends.
func TestSpoolCutShortIsAnError(t *testing.T) {
	one := appendSpoolRecord(nil, "+14155550100", []string{"name"}, []string{"Ada"})
	two := append(append([]byte{}, one...), one...)
	for cut := len(one); cut <= len(two); cut++ {
		f := spoolFile(t)
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

func spoolFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
