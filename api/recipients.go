package api

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/smsbatch/smsbatch/domain"
)

// recipientChecker checks an upload's recipients on every core while the
// upload is still being decoded, and hands them back in their order. What a
// recipient alone decides (its number normalised, its variables read, its
// spool record) is most of a large create's time and depends on no other
// recipient; what does depend on the others (duplicates, problems in order,
// the spool) stays on the decoding goroutine.
type recipientChecker struct {
	work    chan *recipientChunk
	workers sync.WaitGroup
	pending []*recipientChunk // submitted, in upload order
	free    []*recipientChunk // handed back, for reuse
	cur     *recipientChunk
	next    int // index of the next recipient added
	stopped bool
}

// recipientChunk is a run of consecutive recipients checked together.
type recipientChunk struct {
	first   int
	ins     []recipientIn
	checked []checkedRecipient
	// records are the chunk's spool records, one after another; each
	// checkedRecipient says where its own ends.
	records []byte
	done    chan struct{}
}

// checkedRecipient is what one recipient decides alone.
type checkedRecipient struct {
	// phone is the number normalised, or "" when phoneProblem says what is
	// wrong with it.
	phone, phoneProblem string
	// varProblems are what is wrong with the variables; each Field is
	// relative to the recipient ("variables", "variables.name").
	varProblems []domain.FieldProblem
	recordEnd   int
}

// emitFunc takes a recipient back, in upload order: its index, what it decided
// alone, and its spool record.
type emitFunc func(i int, c *checkedRecipient, record []byte) error

const (
	recipientChunkSize = 256
	// recipientChunksAhead bounds the chunks submitted and not yet handed
	// back, per worker: the memory an upload holds beyond the spool.
	recipientChunksAhead = 2
)

func newRecipientChecker(region string) *recipientChecker {
	n := runtime.GOMAXPROCS(0)
	c := &recipientChecker{work: make(chan *recipientChunk, n*recipientChunksAhead)}
	for range n {
		c.workers.Go(func() {
			for ch := range c.work {
				for i, in := range ch.ins {
					ch.checked[i], ch.records = checkAlone(in, region, ch.records)
				}
				close(ch.done)
			}
		})
	}
	return c
}

// checkAlone checks what in decides alone and appends its spool record to
// records: its number, and its variables, named in order, without the names
// that are not text.
func checkAlone(in recipientIn, region string, records []byte) (checkedRecipient, []byte) {
	var c checkedRecipient
	c.phone, c.phoneProblem = checkPhone(in, region)
	var namesBuf, valuesBuf [4]string // most uploads have a few variables
	names, values := namesBuf[:0], valuesBuf[:0]
	for _, name := range slices.Sorted(maps.Keys(in.Variables)) {
		// A name is never sent, but one that is not text is not what the client
		// meant either (encoding/json has turned its bad bytes into U+FFFD).
		if strings.ContainsRune(name, utf8.RuneError) || domain.CheckText(name) != nil {
			c.varProblems = append(c.varProblems, domain.FieldProblem{Field: "variables", Problem: fmt.Sprintf("variable name %q is not valid text", name)})
			continue
		}
		v, problem := scalarString(in.Variables[name])
		if problem != "" {
			// Kept, empty, so that it is not reported missing as well; the
			// problem refuses the batch.
			c.varProblems = append(c.varProblems, domain.FieldProblem{Field: "variables." + name, Problem: problem})
		}
		names, values = append(names, name), append(values, v)
	}
	records = appendSpoolRecord(records, c.phone, names, values)
	c.recordEnd = len(records)
	return c, records
}

// checkPhone normalises in's number, or says what is wrong with it.
func checkPhone(in recipientIn, region string) (phone, problem string) {
	raw, problem, ok := decodeString(in.PhoneNumber)
	switch {
	case !ok:
		return "", "must be a string"
	case problem != "":
		return "", problem
	}
	phone, err := domain.NormalizePhone(raw, region)
	if err != nil {
		return "", err.Error()
	}
	return phone, ""
}

// add queues the next recipient. It hands recipients that are done to emit, in
// order, once enough are queued; emit's error is returned.
func (c *recipientChecker) add(in recipientIn, emit emitFunc) error {
	if c.cur == nil {
		c.cur = c.newChunk()
	}
	c.cur.ins = append(c.cur.ins, in)
	c.next++
	if len(c.cur.ins) < recipientChunkSize {
		return nil
	}
	c.submit()
	for len(c.pending) > cap(c.work) {
		if err := c.emitOldest(emit); err != nil {
			return err
		}
	}
	return nil
}

// flush hands every recipient added to emit, in order.
func (c *recipientChecker) flush(emit emitFunc) error {
	if c.cur != nil && len(c.cur.ins) > 0 {
		c.submit()
	}
	for len(c.pending) > 0 {
		if err := c.emitOldest(emit); err != nil {
			return err
		}
	}
	return nil
}

func (c *recipientChecker) newChunk() *recipientChunk {
	if n := len(c.free); n > 0 {
		ch := c.free[n-1]
		c.free = c.free[:n-1]
		ch.first = c.next
		return ch
	}
	return &recipientChunk{first: c.next, ins: make([]recipientIn, 0, recipientChunkSize),
		checked: make([]checkedRecipient, recipientChunkSize)}
}

func (c *recipientChecker) submit() {
	ch := c.cur
	c.cur = nil
	ch.done = make(chan struct{})
	c.pending = append(c.pending, ch)
	c.work <- ch
}

func (c *recipientChecker) emitOldest(emit emitFunc) error {
	ch := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	<-ch.done
	start := 0
	for i := range ch.ins {
		cr := &ch.checked[i]
		if err := emit(ch.first+i, cr, ch.records[start:cr.recordEnd]); err != nil {
			return err
		}
		start = cr.recordEnd
	}
	clear(ch.ins) // the variables' maps
	clear(ch.checked)
	ch.ins, ch.records = ch.ins[:0], ch.records[:0]
	c.free = append(c.free, ch)
	return nil
}

// stop ends the workers once they have finished what was submitted. Safe to
// call more than once.
func (c *recipientChecker) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	close(c.work)
	c.workers.Wait()
}
