package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/bolt"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// open opens the read models at path and closes them when the test ends.
func open(t testing.TB, path string) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tempPath(t testing.TB) string { return filepath.Join(t.TempDir(), bolt.FileName) }

func TestContract(t *testing.T) {
	projectionstest.Run(t, func(t *testing.T) projections.Store { return open(t, tempPath(t)) })
}
