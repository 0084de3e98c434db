package bolt

import (
	"encoding/binary"
	"slices"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// streamCheck checks that a layout's stream index agrees with the records: told
// of every readable record in order, then of the ones that were not readable
// (damaged, by global sequence), which it reports with the stream that leads to
// them and removes from damaged.
type streamCheck interface {
	record(seq uint64, e eventstore.Event, damaged map[uint64]error)
	finish(damaged map[uint64]error) error
}

// chainCheck checks layout 3's chains (chain.go): every record linked to the
// previous record of its stream, every 32nd revision marked, every head at the
// stream's last record, and nothing in the three buckets beyond that.
type chainCheck struct {
	r                  *Report
	heads, prev, marks *bbolt.Bucket
	walked             map[string]head // each stream as its records so far make it
	links, marked      uint64
}

func newChainCheck(r *Report, tx *bbolt.Tx) streamCheck {
	c := &chainCheck{r: r, heads: tx.Bucket(bucketHeads), prev: tx.Bucket(bucketPrev), marks: tx.Bucket(bucketMarks),
		walked: map[string]head{}}
	if c.heads == nil || c.prev == nil || c.marks == nil {
		return nil
	}
	return c
}

// skipDamaged counts the damaged record at seq, which stream's chain leads to
// from a later record or its head, as the stream's next revision.
func (c *chainCheck) skipDamaged(stream string, seq uint64, damaged map[uint64]error) bool {
	err, ok := damaged[seq]
	if !ok {
		return false
	}
	h := c.walked[stream]
	c.r.damagedStream(stream)
	c.r.problem("%s: stream %s revision %d: %v", c.r.Path, stream, h.n, err)
	delete(damaged, seq)
	if at := c.marks.Get(markKey(stream, h.n)); h.n%markEvery == 0 && len(at) == 8 && binary.BigEndian.Uint64(at) == seq {
		c.marked++
	}
	c.walked[stream] = head{h.n + 1, seq}
	return true
}

func (c *chainCheck) record(seq uint64, e eventstore.Event, damaged map[uint64]error) {
	r := c.r
	v := c.prev.Get(u64(seq))
	switch {
	case len(v) != 8:
		r.damagedStream(e.Stream)
		r.problem("%s: event %d (%s revision %d): its link to the stream's previous event %s", r.Path, seq, e.Stream, e.Revision, pointsTo(v))
	case binary.BigEndian.Uint64(v) != c.walked[e.Stream].last && !c.skipDamaged(e.Stream, binary.BigEndian.Uint64(v), damaged):
		r.damagedStream(e.Stream)
		r.problem("%s: event %d (%s revision %d): links to event %d, but the stream's previous is %d",
			r.Path, seq, e.Stream, e.Revision, binary.BigEndian.Uint64(v), c.walked[e.Stream].last)
	}
	if len(v) == 8 {
		c.links++
	}
	h := c.walked[e.Stream]
	if e.Revision != h.n {
		r.damagedStream(e.Stream)
		r.problem("%s: event %d is revision %d of %s, whose records before it number %d", r.Path, seq, e.Revision, e.Stream, h.n)
	}
	if e.Revision%markEvery == 0 {
		if at := c.marks.Get(markKey(e.Stream, e.Revision)); len(at) != 8 || binary.BigEndian.Uint64(at) != seq {
			r.damagedStream(e.Stream)
			r.problem("%s: event %d (%s revision %d): the stream's mark %s", r.Path, seq, e.Stream, e.Revision, pointsTo(at))
		} else {
			c.marked++
		}
	}
	c.walked[e.Stream] = head{e.Revision + 1, seq}
}

func (c *chainCheck) finish(damaged map[uint64]error) error {
	r := c.r
	err := c.heads.ForEach(func(k, v []byte) error {
		stream := string(k)
		h, err := decodeHead(stream, v)
		if err != nil {
			r.damagedStream(stream)
			r.problem("%s: %v", r.Path, err)
			return nil
		}
		if w := c.walked[stream]; w.last != h.last {
			c.skipDamaged(stream, h.last, damaged)
		}
		if w := c.walked[stream]; w != h {
			r.damagedStream(stream)
			r.problem("%s: stream %s: its head says %d events, the last at event %d; its records %d, the last at event %d",
				r.Path, stream, h.n, h.last, w.n, w.last)
		}
		return nil
	})
	if err != nil {
		return err
	}
	streams := make([]string, 0, len(c.walked))
	for stream := range c.walked {
		if c.heads.Get([]byte(stream)) == nil {
			streams = append(streams, stream)
		}
	}
	slices.Sort(streams)
	for _, stream := range streams {
		r.damagedStream(stream)
		r.problem("%s: stream %s has records but no head", r.Path, stream)
	}
	links := c.links // and the damaged records' own
	for _, seq := range r.DamagedEvents {
		if c.prev.Get(u64(seq)) != nil {
			links++
		}
	}
	if n := uint64(c.prev.Stats().KeyN); n != links {
		r.problem("%s: the stream links number %d, the records that have one %d", r.Path, n, links)
	}
	if n := uint64(c.marks.Stats().KeyN); n != c.marked {
		r.problem("%s: the stream marks number %d, the marked revisions %d", r.Path, n, c.marked)
	}
	return nil
}

// nestedCheck checks the nested bucket of each stream of layouts 1 and 2:
// revisions 0..n-1, each pointing at a record of the stream.
type nestedCheck struct {
	r       *Report
	all     *bbolt.Bucket
	streams *bbolt.Bucket
	decode  func(uint64, []byte) (eventstore.Event, error)
}

func newNestedCheck(r *Report, tx *bbolt.Tx, decode func(uint64, []byte) (eventstore.Event, error)) streamCheck {
	c := &nestedCheck{r: r, all: tx.Bucket(bucketAll), streams: tx.Bucket(bucketStreams), decode: decode}
	if c.streams == nil {
		return nil
	}
	return c
}

func (c *nestedCheck) record(seq uint64, e eventstore.Event, _ map[uint64]error) {
	var at []byte
	if sb := c.streams.Bucket([]byte(e.Stream)); sb != nil {
		at = sb.Get(u64(e.Revision))
	}
	if len(at) != 8 || binary.BigEndian.Uint64(at) != seq {
		c.r.damagedStream(e.Stream)
		c.r.problem("%s: event %d (%s revision %d): the stream index %s", c.r.Path, seq, e.Stream, e.Revision, pointsTo(at))
	}
}

func (c *nestedCheck) finish(damaged map[uint64]error) error {
	r, all, streams, decode := c.r, c.all, c.streams, c.decode
	err := streams.ForEachBucket(func(name []byte) error {
		stream := string(name)
		sb := streams.Bucket(name)
		var n uint64 // entries seen, and the revision expected next
		damagedIn := map[string]uint64{}
		err := sb.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				r.damagedStream(stream)
				r.problem("%s: stream %s: an index key of %d bytes", r.Path, stream, len(k))
				return nil
			}
			if rev := binary.BigEndian.Uint64(k); rev != n {
				r.damagedStream(stream)
				r.problem("%s: stream %s: the index jumps from revision %d to %d", r.Path, stream, n, rev)
			}
			defer func() { n++ }()
			if len(v) != 8 {
				r.damagedStream(stream)
				r.problem("%s: stream %s revision %d: index entry of %d bytes", r.Path, stream, n, len(v))
				return nil
			}
			seq := binary.BigEndian.Uint64(v)
			if err, ok := damaged[seq]; ok {
				r.damagedStream(stream)
				r.problem("%s: stream %s revision %d: %v", r.Path, stream, n, err)
				damagedIn[stream]++
				delete(damaged, seq)
				return nil
			}
			rec := all.Get(v)
			if rec == nil {
				r.damagedStream(stream)
				r.problem("%s: stream %s revision %d: points to event %d, which is missing", r.Path, stream, n, seq)
				return nil
			}
			if e, err := decode(seq, rec); err == nil && (e.Stream != stream || e.Revision != n) {
				r.damagedStream(stream)
				r.problem("%s: stream %s revision %d: points to event %d, which is revision %d of %s", r.Path, stream, n, seq, e.Revision, e.Stream)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n != sb.Sequence() {
			r.damagedStream(stream)
			r.problem("%s: stream %s: its index holds %d events, its length says %d", r.Path, stream, n, sb.Sequence())
		}
		if got := r.Streams[stream]; got+damagedIn[stream] != n {
			r.damagedStream(stream)
			r.problem("%s: stream %s: its index holds %d events, its records %d", r.Path, stream, n, got)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for stream := range r.Streams {
		if streams.Bucket([]byte(stream)) == nil {
			r.damagedStream(stream)
			r.problem("%s: stream %s has records but no index", r.Path, stream)
		}
	}
	return nil
}
