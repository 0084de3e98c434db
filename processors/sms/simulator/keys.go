package simulator

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"strings"
)

// recentKeys remembers the idempotency keys of the most recently accepted
// messages, at most max of them: a re-send comes soon after the first send (a
// sender that lost an answer tries again within seconds or minutes), and a
// simulator that remembered every key it ever accepted would hold the whole
// outbox in memory.
//
// A key is held as a 64-bit hash and an id of the simulator's own shape ("SM"
// and 32 hex digits) as its 16 bytes, about 40 bytes a key where the strings
// took 150: a restart after a long history reads back max keys, and they were
// most of a restarted instance's memory. Two keys whose hashes collide (odds of
// about 10^-9 among 200,000) would be taken for one.
type recentKeys struct {
	max   int
	seed  maphash.Seed
	ids   map[uint64][16]byte // hash of key -> provider ID of the simulator's shape
	other map[uint64]string   // hash of key -> any other provider ID
	order []uint64            // ring of hashes, oldest at next once full
	next  int
}

func newRecentKeys(max int) *recentKeys {
	return &recentKeys{max: max, seed: maphash.MakeSeed(), ids: make(map[uint64][16]byte), other: make(map[uint64]string)}
}

func (k *recentKeys) get(key string) (string, bool) {
	h := maphash.String(k.seed, key)
	if b, ok := k.ids[h]; ok {
		return providerIDPrefix + hex.EncodeToString(b[:]), true
	}
	id, ok := k.other[h]
	return id, ok
}

// add remembers key, forgetting the oldest key once max are held.
func (k *recentKeys) add(key, providerID string) {
	h := maphash.String(k.seed, key)
	_, known := k.ids[h]
	if _, ok := k.other[h]; ok {
		known = true
	}
	if !known {
		if len(k.order) < k.max {
			k.order = append(k.order, h)
		} else {
			delete(k.ids, k.order[k.next])
			delete(k.other, k.order[k.next])
			k.order[k.next] = h
			k.next = (k.next + 1) % k.max
		}
	}
	delete(k.ids, h)
	delete(k.other, h)
	var b [16]byte
	if rest, ok := strings.CutPrefix(providerID, providerIDPrefix); ok && len(rest) == 32 && strings.ToLower(rest) == rest {
		if _, err := hex.Decode(b[:], []byte(rest)); err == nil {
			k.ids[h] = b
			return
		}
	}
	k.other[h] = providerID
}

func (k *recentKeys) len() int { return len(k.ids) + len(k.other) }

// outboxKey is what a restart reads back of an outbox line.
type outboxKey struct {
	Key        string `json:"key"`
	ProviderID string `json:"providerId"`
}

// tailChunk is how much of the outbox is read at a time, from its end.
const tailChunk = 64 << 10

// readOutboxTail reads the last entries of the outbox in f, up to max with a
// key, in the order they were written, without reading the rest of the file:
// start-up costs the same whatever the outbox's size. It reports how many
// unreadable lines it skipped and whether the file ends mid-line.
func readOutboxTail(f *os.File, max int) (entries []outboxKey, skipped int, midLine bool, err error) {
	info, err := f.Stat()
	if err != nil {
		return nil, 0, false, err
	}
	pos := info.Size()
	if pos == 0 {
		return nil, 0, false, nil
	}
	var last [1]byte
	if _, err := f.ReadAt(last[:], pos-1); err != nil {
		return nil, 0, false, err
	}
	midLine = last[0] != '\n'
	var carry []byte // the start of a line whose beginning is in the next chunk back
	keyed := 0
	for pos > 0 && keyed < max {
		n := min(int64(tailChunk), pos)
		pos -= n
		chunk := make([]byte, n, n+int64(len(carry)))
		if _, err := f.ReadAt(chunk, pos); err != nil && err != io.EOF {
			return nil, 0, false, err
		}
		data := append(chunk, carry...)
		lines := bytes.Split(data, []byte{'\n'})
		carry = nil
		if pos > 0 {
			carry, lines = lines[0], lines[1:]
		}
		for i := len(lines) - 1; i >= 0 && keyed < max; i-- {
			line := bytes.TrimSpace(lines[i])
			if len(line) == 0 {
				continue
			}
			var e outboxKey
			if json.Unmarshal(line, &e) != nil || e.ProviderID == "" {
				skipped++
				continue
			}
			entries = append(entries, e)
			if e.Key != "" {
				keyed++
			}
		}
		if len(carry) > 1<<20 {
			return nil, 0, false, fmt.Errorf("an outbox line over 1 MiB near byte %d", pos)
		}
	}
	for i, j := 0, len(entries)-1; i < j; i, j = i+1, j-1 {
		entries[i], entries[j] = entries[j], entries[i]
	}
	return entries, skipped, midLine, nil
}
