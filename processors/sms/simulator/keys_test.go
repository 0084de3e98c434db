package simulator

import "testing"

// Keys are remembered with their ids, whatever an id looks like, the oldest
// are forgotten first, and a key added again keeps one place.
func TestRecentKeysRememberTheNewestWithTheirIDs(t *testing.T) {
	k := newRecentKeys(3)
	ids := map[string]string{
		"b:0": newProviderID(),
		"b:1": "MM0123456789abcdef0123456789abcdef", // another provider's shape
		"b:2": "SM0123456789ABCDEF0123456789ABCDEF", // upper case is kept as given
		"b:3": newProviderID(),
	}
	for _, key := range []string{"b:0", "b:1", "b:2"} {
		k.add(key, ids[key])
	}
	for _, key := range []string{"b:0", "b:1", "b:2"} {
		if got, ok := k.get(key); !ok || got != ids[key] {
			t.Fatalf("%s: %q %v, want %q", key, got, ok, ids[key])
		}
	}
	k.add("b:1", ids["b:3"]) // known: a new id, no new place
	if got, _ := k.get("b:1"); got != ids["b:3"] || k.len() != 3 {
		t.Fatalf("b:1 added again: %q, %d keys", got, k.len())
	}
	k.add("b:3", ids["b:3"])
	if _, ok := k.get("b:0"); ok {
		t.Fatal("the oldest key is still remembered after a fourth")
	}
	if k.len() != 3 {
		t.Fatalf("%d keys held, want 3", k.len())
	}
	if _, ok := k.get("b:9"); ok {
		t.Fatal("a key never added is remembered")
	}
}
