package bolt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// recordVersion is the first byte of every record, so that the encoding can change
// without guessing what an old record is. Version 1 (layout "1") had no checksum;
// Open rewrites such records once (see migrate.go).
const (
	recordVersion   = 2
	recordVersionV1 = 1
)

// castagnoli is CRC-32C, computed by a CPU instruction on amd64 and arm64, so
// checking every record on every read costs next to nothing.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordHeader is the version byte and the checksum.
const recordHeader = 1 + 4

// A record is an event as kept in the "all" bucket; its key is the global sequence,
// which is not repeated inside. Binary rather than JSON because it is built on every
// append and read on every replay:
//
//	byte    recordVersion
//	4 bytes CRC-32C, big-endian, of everything below, started from the key (recordSum)
//	uvarint revision
//	8 bytes time, Unix nanoseconds, big-endian
//	uvarint len, stream
//	uvarint len, ID
//	uvarint len, type
//	uvarint len, metadata
//	rest    data
//
// The key is part of the checksum so that a record found under another sequence
// (a damaged branch page, a copied value) fails it too.
func encodeRecord(seq uint64, stream string, revision uint64, unixNano int64, e eventstore.EventData) []byte {
	n := recordHeader + binary.MaxVarintLen64 + 8 + 4*binary.MaxVarintLen64 +
		len(stream) + len(e.ID) + len(e.Type) + len(e.Metadata) + len(e.Data)
	b := make([]byte, recordHeader, n)
	b[0] = recordVersion
	b = appendBody(b, stream, revision, unixNano, e)
	binary.BigEndian.PutUint32(b[1:recordHeader], recordSum(seq, b[recordHeader:]))
	return b
}

// appendBody appends what follows a record's header; layout "1" had the same
// body after its version byte.
func appendBody(b []byte, stream string, revision uint64, unixNano int64, e eventstore.EventData) []byte {
	b = binary.AppendUvarint(b, revision)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano))
	b = appendField(b, stream)
	b = appendField(b, e.ID)
	b = appendField(b, e.Type)
	b = binary.AppendUvarint(b, uint64(len(e.Metadata)))
	b = append(b, e.Metadata...)
	return append(b, e.Data...)
}

// recordSum is the CRC-32C of a record's body, started from its key folded to 32
// bits. Starting from the key binds the record to it (the CRC of one body from two
// different starting values differs) at no cost, where hashing the key's bytes
// too doubled the time of checking a record.
func recordSum(seq uint64, body []byte) uint32 {
	return crc32.Update(uint32(seq)^uint32(seq>>32), castagnoli, body)
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeRecord rebuilds the event stored at global sequence seq, after checking
// its checksum. It copies everything out of rec, which bbolt only lends for the
// transaction's life. A record that fails a check is an error wrapping
// eventstore.ErrCorrupt.
func decodeRecord(seq uint64, rec []byte) (eventstore.Event, error) {
	if len(rec) < recordHeader || rec[0] != recordVersion {
		v := -1
		if len(rec) > 0 {
			v = int(rec[0])
		}
		return eventstore.Event{}, fmt.Errorf("event %d: %w: record version %d, want %d", seq, eventstore.ErrCorrupt, v, recordVersion)
	}
	if sum := recordSum(seq, rec[recordHeader:]); sum != binary.BigEndian.Uint32(rec[1:recordHeader]) {
		return eventstore.Event{}, fmt.Errorf("event %d: %w: checksum mismatch", seq, eventstore.ErrCorrupt)
	}
	return decodeBody(seq, rec[recordHeader:])
}

// decodeRecordV1 reads a record of layout "1", which has no checksum.
func decodeRecordV1(seq uint64, rec []byte) (eventstore.Event, error) {
	if len(rec) < 1 || rec[0] != recordVersionV1 {
		return eventstore.Event{}, fmt.Errorf("event %d: %w: not a version 1 record", seq, eventstore.ErrCorrupt)
	}
	return decodeBody(seq, rec[1:])
}

// decodeBody decodes what follows a record's header.
func decodeBody(seq uint64, body []byte) (eventstore.Event, error) {
	d := decoder{b: body}
	e := eventstore.Event{Position: eventstore.Position{Commit: seq}}
	e.Revision = d.uvarint()
	e.Time = time.Unix(0, int64(d.fixed64())).UTC()
	e.Stream = string(d.field())
	e.ID = string(d.field())
	e.Type = string(d.field())
	e.Metadata = bytes.Clone(d.field())
	if d.err {
		return eventstore.Event{}, fmt.Errorf("event %d: %w: truncated record", seq, eventstore.ErrCorrupt)
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
		return eventstore.Event{}, fmt.Errorf("event %d: %w: indexed but missing", seq, eventstore.ErrCorrupt)
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
