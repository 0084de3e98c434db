// Package storetest runs a test against every event store adapter that can run
// here (memory, bolt, and PostgreSQL where pgtest finds a server), for tests of
// rules that rest on the store.
package storetest

import (
	"path/filepath"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// Each runs test once per adapter, as a subtest named after it, on a fresh
// store closed when the subtest ends.
func Each(t *testing.T, test func(t *testing.T, store eventstore.Store)) {
	for _, st := range []struct {
		name string
		open func(t *testing.T) eventstore.Store
	}{
		{"memory", func(t *testing.T) eventstore.Store { return memory.New() }},
		{"bolt", func(t *testing.T) eventstore.Store {
			s, err := bolt.Open(filepath.Join(t.TempDir(), "events.db"), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"postgres", func(t *testing.T) eventstore.Store {
			s, err := postgres.Open(t.Context(), pgtest.Database(t), postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(st.name, func(t *testing.T) {
			store := st.open(t)
			t.Cleanup(func() { store.Close() })
			test(t, store)
		})
	}
}
