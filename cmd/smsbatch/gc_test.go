package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// The collector runs at gcPercent unless GOGC is set, which then stands.
func TestGCPercentUnlessGOGCIsSet(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	if v, ok := os.LookupEnv("GOGC"); ok {
		defer os.Setenv("GOGC", v)
	} else {
		defer os.Unsetenv("GOGC")
	}

	os.Unsetenv("GOGC")
	tuneGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC unset: collector at %d, want %d", got, gcPercent)
	}

	os.Setenv("GOGC", "100")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100: collector at %d, want GOGC's 100", got)
	}
}
