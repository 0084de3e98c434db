package api

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
)

// An upload's spool holds its recipients between validation and storage,
// one record each, in order. It is read twice (the variables' check once the
// template is known, then the pages stored), so its format is what costs
// least to write and read: a record is the number, the count of variables,
// then each variable's name and value, every string preceded by its length in
// bytes (unsigned varints). The file never outlives the request, so the
// format may change freely.

// spooled is one recipient as spooled.
type spooled struct {
	Phone string
	Vars  map[string]string
}

// appendSpoolRecord appends the record of a recipient with number phone and
// the variables names[i] = values[i] to buf.
func appendSpoolRecord(buf []byte, phone string, names, values []string) []byte {
	buf = appendSpoolString(buf, phone)
	buf = binary.AppendUvarint(buf, uint64(len(names)))
	for i, name := range names {
		buf = appendSpoolString(buf, name)
		buf = appendSpoolString(buf, values[i])
	}
	return buf
}

func appendSpoolString(buf []byte, s string) []byte {
	return append(binary.AppendUvarint(buf, uint64(len(s))), s...)
}

// maxSpoolString bounds a string read back: nothing spooled is longer than a
// request body may be, and a damaged file must not make the reader allocate
// without bound.
const maxSpoolString = 256 << 20

// spoolReaders and spoolWriters hold the spool's buffers between uploads:
// large enough that a million recipients cost few system calls, and at 256 KiB
// each, allocated anew for every upload (three a create) they were most of
// what a thousand small creates allocated, and the collector's work.
var (
	spoolReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256<<10) }}
	spoolWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 256<<10) }}
)

type spoolItem struct {
	spooled
	err error
}

// readSpool reads the spool from its start.
func readSpool(s *spool) iter.Seq2[int, spoolItem] {
	return func(yield func(int, spoolItem) bool) {
		f, err := s.contents()
		if err != nil {
			yield(0, spoolItem{err: err})
			return
		}
		buf := spoolReaders.Get().(*bufio.Reader)
		buf.Reset(f)
		defer func() { buf.Reset(nil); spoolReaders.Put(buf) }()
		r := spoolReader{r: buf, names: map[string]string{}}
		for i := 0; ; i++ {
			var item spoolItem
			if err := r.read(&item.spooled); errors.Is(err, io.EOF) {
				return
			} else if err != nil {
				item.err = fmt.Errorf("read spool: record %d: %w", i, err)
			}
			if !yield(i, item) || item.err != nil {
				return
			}
		}
	}
}

// spoolReader reads records one after another.
type spoolReader struct {
	r       *bufio.Reader
	scratch []byte
	// names holds each variable name once: a million recipients share a few.
	names map[string]string
}

// read reads the next record into sp; io.EOF means there is none, and a
// record cut short is io.ErrUnexpectedEOF.
func (r *spoolReader) read(sp *spooled) error {
	phone, err := r.bytes()
	if err != nil {
		return err // io.EOF only here, before a record starts
	}
	sp.Phone = string(phone)
	n, err := r.uvarint()
	if err != nil {
		return err
	}
	if n > maxSpoolString {
		return fmt.Errorf("%d variables", n)
	}
	sp.Vars = make(map[string]string, n)
	for range n {
		b, err := r.bytes()
		if err != nil {
			return unexpectedEOF(err)
		}
		name, ok := r.names[string(b)]
		if !ok {
			name = string(b)
			r.names[name] = name
		}
		if b, err = r.bytes(); err != nil {
			return unexpectedEOF(err)
		}
		sp.Vars[name] = string(b)
	}
	return nil
}

// bytes reads one string; the bytes are valid until the next call. io.EOF
// means the file ended before the string began.
func (r *spoolReader) bytes() ([]byte, error) {
	n, err := binary.ReadUvarint(r.r)
	if err != nil {
		return nil, err
	}
	if n > maxSpoolString {
		return nil, fmt.Errorf("a string of %d bytes", n)
	}
	if uint64(cap(r.scratch)) < n {
		r.scratch = make([]byte, n)
	}
	r.scratch = r.scratch[:n]
	if _, err := io.ReadFull(r.r, r.scratch); err != nil {
		return nil, unexpectedEOF(err)
	}
	return r.scratch, nil
}

func (r *spoolReader) uvarint() (uint64, error) {
	n, err := binary.ReadUvarint(r.r)
	return n, unexpectedEOF(err)
}

// unexpectedEOF turns io.EOF into io.ErrUnexpectedEOF: inside a record, the
// end of the file means the record was cut short.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
