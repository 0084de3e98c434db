package main

import "testing"

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		name           string
		set, embedded  bool
		defaults, cpus int
		want           int
	}{
		{"embedded store, no quota: two a core", false, true, 2, 2, 4},
		{"embedded store on one core", false, true, 1, 1, 2},
		{"GOMAXPROCS given: it stands", true, true, 3, 2, 3},
		{"a CPU quota below the cores: its default stands", false, true, 2, 8, 2},
		{"PostgreSQL for both stores: one a core", false, false, 2, 2, 2},
	} {
		if got := procsFor(c.set, c.embedded, c.defaults, c.cpus); got != c.want {
			t.Errorf("%s: procsFor(%v, %v, %d, %d) = %d, want %d", c.name, c.set, c.embedded, c.defaults, c.cpus, got, c.want)
		}
	}
}
