package simulator

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"slices"
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
	k.remember(newKeyEntry(maphash.String(k.seed, key), providerID))
}

// keyEntry is one remembered key as recentKeys holds it: its hash, and its
// provider ID as 16 bytes when it has the simulator's own shape (sm), or
// whole (other).
type keyEntry struct {
	h     uint64
	sm    [16]byte
	other string
}

// newKeyEntry is the entry of a key with hash h and its provider ID.
func newKeyEntry[T string | []byte](h uint64, providerID T) keyEntry {
	if b, ok := smID(providerID); ok {
		return keyEntry{h: h, sm: b}
	}
	return keyEntry{h: h, other: string(providerID)}
}

// remember adds e, forgetting the oldest key once max are held.
func (k *recentKeys) remember(e keyEntry) {
	h := e.h
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
	if e.other == "" {
		k.ids[h] = e.sm
		return
	}
	k.other[h] = e.other
}

// smID is the 16 bytes of a provider ID of the simulator's own shape: "SM"
// and 32 lower-case hex digits.
func smID[T string | []byte](id T) (b [16]byte, ok bool) {
	if len(id) != len(providerIDPrefix)+2*len(b) || string(id[:len(providerIDPrefix)]) != providerIDPrefix {
		return b, false
	}
	digits := id[len(providerIDPrefix):]
	for i := range b {
		hi, ok1 := lowerHex(digits[2*i])
		lo, ok2 := lowerHex(digits[2*i+1])
		if !ok1 || !ok2 {
			return b, false
		}
		b[i] = hi<<4 | lo
	}
	return b, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// reserve makes room for n keys in a recentKeys that holds none yet.
func (k *recentKeys) reserve(n int) {
	n = min(n, k.max)
	k.ids, k.order = make(map[uint64][16]byte, n), make([]uint64, 0, n)
}

func (k *recentKeys) len() int { return len(k.ids) + len(k.other) }

// outboxKey is what a restart reads back of an outbox line whose fields it
// cannot take as they stand.
type outboxKey struct {
	Key        string `json:"key"`
	ProviderID string `json:"providerId"`
}

// tailChunk is how much of the outbox is read at a time, from its end.
const tailChunk = 64 << 10

// readOutboxTail reads the keys of the last entries of the outbox in f, as
// many as k remembers, oldest first, as k holds them, without reading the rest
// of the file: start-up costs the same whatever the outbox's size. It reports
// how many unreadable lines it skipped and whether the file ends mid-line.
func readOutboxTail(f *os.File, k *recentKeys) (entries []keyEntry, skipped int, midLine bool, err error) {
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
	// The start of a line whose beginning is in the next chunk back, kept
	// apart from buf, which each chunk reuses.
	var carry, buf []byte
	for pos > 0 && len(entries) < k.max {
		n := min(int64(tailChunk), pos)
		pos -= n
		buf = slices.Grow(buf[:0], int(n)+len(carry))[:n]
		if _, err := f.ReadAt(buf, pos); err != nil && err != io.EOF {
			return nil, 0, false, err
		}
		data := append(buf, carry...)
		carry = carry[:0]
		if pos > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				i = len(data)
			}
			carry = append(carry, data[:i]...)
			data = data[min(i+1, len(data)):]
		}
		for len(data) > 0 && len(entries) < k.max {
			var line []byte
			if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
				line, data = data[i+1:], data[:i]
			} else {
				line, data = data, nil
			}
			line = bytes.TrimSpace(line)
			if len(line) == 0 {
				continue
			}
			e, keyed, ok := readOutboxLine(k, line)
			if !ok {
				skipped++
				continue
			}
			if keyed {
				entries = append(entries, e)
			}
		}
		if len(carry) > 1<<20 {
			return nil, 0, false, fmt.Errorf("an outbox line over 1 MiB near byte %d", pos)
		}
	}
	slices.Reverse(entries)
	return entries, skipped, midLine, nil
}

// readOutboxLine reads the key and provider ID of one outbox line: keyed is
// false for a line without a key, ok false for a line that is not whole JSON
// or has no provider ID (torn by a crash). The two fields are taken as they
// stand when they hold no escapes, as json.Marshal writes a key and an ID;
// otherwise the line is decoded.
func readOutboxLine(k *recentKeys, line []byte) (e keyEntry, keyed, ok bool) {
	if !json.Valid(line) {
		return e, false, false
	}
	key, ok1 := plainField(line, `"key":"`)
	id, ok2 := plainField(line, `"providerId":"`)
	if ok1 && ok2 {
		if len(id) == 0 {
			return e, false, false
		}
		return newKeyEntry(maphash.Bytes(k.seed, key), id), len(key) > 0, true
	}
	var o outboxKey
	if json.Unmarshal(line, &o) != nil || o.ProviderID == "" {
		return e, false, false
	}
	return newKeyEntry(maphash.String(k.seed, o.Key), o.ProviderID), o.Key != "", true
}

// plainField is the value of the string member that starts with name (its
// quoted name, the colon and the opening quote) in a line of valid JSON, if
// the line has one and the value holds no escape. In valid JSON a quote inside
// a string is escaped, so the name found is a member's name. ok is false when
// it is not there or escaped.
func plainField(line []byte, name string) (v []byte, ok bool) {
	i := bytes.Index(line, []byte(name))
	if i < 0 {
		return nil, false
	}
	rest := line[i+len(name):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || bytes.IndexByte(rest[:j], '\\') >= 0 {
		return nil, false
	}
	return rest[:j], true
}
