package projections

import (
	"bytes"
	"encoding/json"
	"fmt"

	lru "github.com/hashicorp/golang-lru/v2"
)

// CachedReads bounds how many decoded states a store's read side keeps
// (ReadCache): a state's JSON grows little with a batch's recipients (its
// throughput buckets are bounded), 8 KB at 1,000 and 12 KB at 10,000, so a
// few megabytes.
const CachedReads = 256

// ReadCache keeps the states a store's read side decoded, each with the stored
// bytes it came from: a state read again while it is stored unchanged (a
// finished, paused or scheduled batch's status read again, a list page of them
// shown again) is not decoded again, which was most of a status read (a
// 1,000-recipient batch's state is 8 KB of JSON, its throughput buckets
// mostly). The bytes are compared whole, so an entry never answers for another
// version of its state. A sending batch's state changes with every apply and
// is decoded again. Readers share the states it returns and must not change
// them (the views copy what they hand out). Safe for concurrent use.
type ReadCache struct {
	states *lru.Cache[string, readState]
}

type readState struct {
	raw []byte
	st  *BatchState
}

// NewReadCache returns an empty cache of CachedReads states.
func NewReadCache() *ReadCache {
	c, err := lru.New[string, readState](CachedReads)
	if err != nil {
		panic(err) // only for a size that is not positive
	}
	return &ReadCache{states: c}
}

// Decode returns the state of batch id stored as raw: the one decoded before
// when raw is what it was decoded from, else raw decoded (and kept).
func (c *ReadCache) Decode(id string, raw []byte) (*BatchState, error) {
	if r, ok := c.states.Get(id); ok && bytes.Equal(r.raw, raw) {
		return r.st, nil
	}
	st := &BatchState{}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, fmt.Errorf("decode state: %w", err)
	}
	c.states.Add(id, readState{raw: bytes.Clone(raw), st: st})
	return st, nil
}
