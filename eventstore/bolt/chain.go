package bolt

import (
	"encoding/binary"
	"fmt"
	"slices"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// A stream is a chain through the log (layout "3"): its head says how many events
// it holds and where the last one is, every event links back to the one before
// it, and every markEvery-th revision is marked, so that a read far from the head
// walks at most markEvery-1 links before it reaches what it reads.
//
// An append writes its events' links at the tail of "prev", as it writes the
// records at the tail of "all", so the appends of one commit, whatever their
// streams, share the same few pages. A bucket of its own for each stream made
// every append rewrite a page of its stream and the stream's entry in the
// parent, a page each for as many streams as the commit held: with many batches
// sending at once, the largest share of the memory an append took.

// markEvery is how far apart marked revisions are: 0, 32, 64, ...
const markEvery = 32

// head is a stream's entry in "heads".
type head struct {
	n    uint64 // events in the stream; the next revision
	last uint64 // global sequence of revision n-1; 0 when n is 0
}

func (h head) encode() []byte {
	return binary.BigEndian.AppendUint64(u64(h.n), h.last)
}

// streamHead reads stream's head: the zero head when the stream has no events.
func streamHead(heads *bbolt.Bucket, stream string) (head, error) {
	return decodeHead(stream, heads.Get([]byte(stream)))
}

// decodeHead decodes stream's entry v in "heads" (nil: no events).
func decodeHead(stream string, v []byte) (head, error) {
	switch {
	case v == nil:
		return head{}, nil
	case len(v) != 16:
		return head{}, fmt.Errorf("stream %s: %w: head of %d bytes", stream, eventstore.ErrCorrupt, len(v))
	}
	h := head{binary.BigEndian.Uint64(v[:8]), binary.BigEndian.Uint64(v[8:])}
	if h.n == 0 || h.last == 0 {
		return head{}, fmt.Errorf("stream %s: %w: head of %d events at event %d", stream, eventstore.ErrCorrupt, h.n, h.last)
	}
	return h, nil
}

// markKey is the key in "marks" of a stream's revision: the stream's name, its
// length first so that no name is a prefix of another's key, then the revision.
func markKey(stream string, rev uint64) []byte {
	k := make([]byte, 0, binary.MaxVarintLen64+len(stream)+8)
	k = binary.AppendUvarint(k, uint64(len(stream)))
	k = append(k, stream...)
	return binary.BigEndian.AppendUint64(k, rev)
}

// link writes the chain entries of the event at global sequence seq, revision rev
// of stream, whose previous event is at prevSeq (0 for revision 0).
func link(prev, marks *bbolt.Bucket, stream string, rev, seq, prevSeq uint64) error {
	if err := prev.Put(u64(seq), u64(prevSeq)); err != nil {
		return fmt.Errorf("link event %d to the stream's previous: %w", seq, err)
	}
	if rev%markEvery == 0 {
		if err := marks.Put(markKey(stream, rev), u64(seq)); err != nil {
			return fmt.Errorf("mark revision %d: %w", rev, err)
		}
	}
	return nil
}

// chainSeqs returns the global sequences of revisions lo to hi-1 of stream, whose
// head is h (lo < hi <= h.n), in revision order. It starts from the nearest mark
// at or above hi-1, or from the head, and follows the links back.
func chainSeqs(tx *bbolt.Tx, stream string, h head, lo, hi uint64) ([]uint64, error) {
	rev, seq := h.n-1, h.last
	if m := (hi - 1 + markEvery - 1) / markEvery * markEvery; m < rev {
		v := tx.Bucket(bucketMarks).Get(markKey(stream, m))
		if len(v) != 8 {
			return nil, fmt.Errorf("stream %s revision %d: %w: mark of %d bytes", stream, m, eventstore.ErrCorrupt, len(v))
		}
		rev, seq = m, binary.BigEndian.Uint64(v)
	}
	prev := tx.Bucket(bucketPrev)
	seqs := make([]uint64, hi-lo)
	for {
		if rev < hi {
			seqs[rev-lo] = seq
		}
		if rev == lo {
			return seqs, nil
		}
		v := prev.Get(u64(seq))
		if len(v) != 8 {
			return nil, fmt.Errorf("stream %s revision %d: %w: link of event %d is %d bytes", stream, rev, eventstore.ErrCorrupt, seq, len(v))
		}
		if seq = binary.BigEndian.Uint64(v); seq == 0 {
			return nil, fmt.Errorf("stream %s revision %d: %w: the chain ends early", stream, rev, eventstore.ErrCorrupt)
		}
		rev--
	}
}

// readChain reads up to max events of stream from revision from on, towards its
// end or, backward, towards its start, checking that every record read is the
// revision of the stream the chain says it is.
func readChain(tx *bbolt.Tx, stream string, from uint64, max int, backward bool) ([]eventstore.Event, error) {
	h, err := streamHead(tx.Bucket(bucketHeads), stream)
	if err != nil || h.n == 0 || !backward && from >= h.n {
		return nil, err
	}
	lo, hi := from, from+min(uint64(max), h.n-from) // revisions [lo, hi)
	if backward {
		hi = min(from, h.n-1) + 1
		lo = hi - min(hi, uint64(max))
	}
	seqs, err := chainSeqs(tx, stream, h, lo, hi)
	if err != nil {
		return nil, err
	}
	if backward {
		slices.Reverse(seqs)
	}
	all := tx.Bucket(bucketAll)
	events := make([]eventstore.Event, 0, len(seqs))
	for i, seq := range seqs {
		rev := lo + uint64(i)
		if backward {
			rev = hi - 1 - uint64(i)
		}
		e, err := readEvent(all, seq)
		if err != nil {
			return nil, err
		}
		if e.Stream != stream || e.Revision != rev {
			return nil, fmt.Errorf("revision %d: %w: the chain leads to event %d, which is revision %d of %s",
				rev, eventstore.ErrCorrupt, seq, e.Revision, e.Stream)
		}
		events = append(events, e)
	}
	return events, nil
}
