package bolt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// recordVersion is the first byte of every record, so that the encoding can change
// without guessing what an old record is.
const recordVersion = 1

// A record is an event as kept in the "all" bucket; its key is the global sequence,
// which is not repeated inside. Binary rather than JSON because it is built on every
// append and read on every replay:
//
//	byte    recordVersion
//	uvarint revision
//	8 bytes time, Unix nanoseconds, big-endian
//	uvarint len, stream
//	uvarint len, ID
//	uvarint len, type
//	uvarint len, metadata
//	rest    data
func encodeRecord(stream string, revision uint64, unixNano int64, e eventstore.EventData) []byte {
	n := 1 + binary.MaxVarintLen64 + 8 + 4*binary.MaxVarintLen64 +
		len(stream) + len(e.ID) + len(e.Type) + len(e.Metadata) + len(e.Data)
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, revision)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano))
	b = appendField(b, stream)
	b = appendField(b, e.ID)
	b = appendField(b, e.Type)
	b = binary.AppendUvarint(b, uint64(len(e.Metadata)))
	b = append(b, e.Metadata...)
	return append(b, e.Data...)
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errCorrupt = errors.New("corrupt record")

// decodeRecord rebuilds the event stored at global sequence seq. It copies
// everything out of rec, which bbolt only lends for the transaction's life.
func decodeRecord(seq uint64, rec []byte) (eventstore.Event, error) {
	d := decoder{b: rec}
	if v := d.readByte(); v != recordVersion {
		return eventstore.Event{}, fmt.Errorf("event %d: %w: version %d", seq, errCorrupt, v)
	}
	e := eventstore.Event{Position: eventstore.Position{Commit: seq}}
	e.Revision = d.uvarint()
	e.Time = time.Unix(0, int64(d.fixed64())).UTC()
	e.Stream = string(d.field())
	e.ID = string(d.field())
	e.Type = string(d.field())
	e.Metadata = bytes.Clone(d.field())
	if d.err {
		return eventstore.Event{}, fmt.Errorf("event %d: %w: truncated", seq, errCorrupt)
	}
	if len(d.b) > 0 {
		e.Data = bytes.Clone(d.b)
	}
	if len(e.Metadata) == 0 {
		e.Metadata = nil
	}
	return e, nil
}

// readEvent reads the event at global sequence seq.
func readEvent(all *bbolt.Bucket, seq uint64) (eventstore.Event, error) {
	rec := all.Get(u64(seq))
	if rec == nil {
		return eventstore.Event{}, fmt.Errorf("event %d: missing", seq)
	}
	return decodeRecord(seq, rec)
}

func sameEvent(stored eventstore.Event, e eventstore.EventData) bool {
	return stored.ID == e.ID && stored.Type == e.Type &&
		bytes.Equal(stored.Data, e.Data) && bytes.Equal(stored.Metadata, e.Metadata)
}

// decoder reads a record front to back; err is set, and reads return zero
// values, once the record runs short.
type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) readByte() byte {
	if len(d.b) < 1 {
		d.err = true
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed64() uint64 {
	if len(d.b) < 8 {
		d.err = true
		d.b = nil
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) field() []byte {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b)) {
		d.err = true
		d.b = nil
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
