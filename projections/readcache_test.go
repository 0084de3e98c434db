package projections_test

import (
	"testing"

	"github.com/smsbatch/smsbatch/projections"
)

// A state stored unchanged is decoded once however often it is read; stored
// anew, even with the same length, it is decoded again; each batch is its own
// entry. (The stores' contract tests read between applies and hold the reads
// to states rebuilt from the events.)
func TestReadCacheDecodesAStateOncePerStoredVersion(t *testing.T) {
	c := projections.NewReadCache()
	v1 := []byte(`{"id":"b1","tenant":"acme","sent":1}`)
	first, err := c.Decode("b1", v1)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := c.Decode("b1", []byte(string(v1))) // equal bytes, another slice
	if again != first {
		t.Fatal("an unchanged state was decoded again")
	}
	v2 := []byte(`{"id":"b1","tenant":"acme","sent":2}`)
	second, _ := c.Decode("b1", v2)
	if second == first || second.Sent != 2 {
		t.Fatalf("a state stored anew read as %+v", second)
	}
	other, _ := c.Decode("b2", v2)
	if other == second {
		t.Fatal("two batches share an entry")
	}
	// The store's buffer reused for the next version (pgx reuses a row's).
	buf := []byte(string(v1))
	c.Decode("b4", buf)
	copy(buf, v2)
	if reused, _ := c.Decode("b4", buf); reused.Sent != 2 {
		t.Fatalf("a buffer reused for a new version read as the old one: %+v", reused)
	}
	if _, err := c.Decode("b3", []byte(`{"id":`)); err == nil {
		t.Fatal("a state that does not decode read without an error")
	}
}
