package api

import (
	"runtime"
	"sync"

	"github.com/smsbatch/smsbatch/domain"
)

// numberChecker normalises an upload's phone numbers on every core while the
// upload is still being decoded, and hands the recipients back in their order
// with their numbers. NormalizePhone (the phonenumbers library's regular
// expressions) is most of a large create's time, and no number depends on
// another; what does (duplicates, problems in order, the spool) stays on the
// decoding goroutine.
type numberChecker struct {
	region  string
	work    chan *numberChunk
	workers sync.WaitGroup
	pending []*numberChunk // submitted, in upload order
	cur     *numberChunk
	next    int // index of the next recipient added
	stopped bool
}

// numberChunk is a run of consecutive recipients normalised together.
type numberChunk struct {
	first  int
	ins    []recipientIn
	phones []checkedPhone
	done   chan struct{}
}

// checkedPhone is a recipient's number as normalised, or what is wrong with it.
type checkedPhone struct {
	phone, problem string
}

const (
	numberChunkSize = 256
	// numberChunksAhead bounds the chunks submitted and not yet handed back,
	// per worker: the memory an upload holds beyond the spool.
	numberChunksAhead = 2
)

func newNumberChecker(region string) *numberChecker {
	n := runtime.GOMAXPROCS(0)
	c := &numberChecker{region: region, work: make(chan *numberChunk, n*numberChunksAhead)}
	for range n {
		c.workers.Go(func() {
			for ch := range c.work {
				for i, in := range ch.ins {
					ch.phones[i] = checkPhone(in, region)
				}
				close(ch.done)
			}
		})
	}
	return c
}

// checkPhone normalises in's number.
func checkPhone(in recipientIn, region string) checkedPhone {
	raw, problem, ok := decodeString(in.PhoneNumber)
	switch {
	case !ok:
		return checkedPhone{problem: "must be a string"}
	case problem != "":
		return checkedPhone{problem: problem}
	}
	phone, err := domain.NormalizePhone(raw, region)
	if err != nil {
		return checkedPhone{problem: err.Error()}
	}
	return checkedPhone{phone: phone}
}

// add queues the next recipient. It hands recipients whose numbers are done to
// emit, in order, once enough are queued; emit's error is returned.
func (c *numberChecker) add(in recipientIn, emit func(i int, in recipientIn, p checkedPhone) error) error {
	if c.cur == nil {
		c.cur = &numberChunk{first: c.next, ins: make([]recipientIn, 0, numberChunkSize)}
	}
	c.cur.ins = append(c.cur.ins, in)
	c.next++
	if len(c.cur.ins) < numberChunkSize {
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
func (c *numberChecker) flush(emit func(i int, in recipientIn, p checkedPhone) error) error {
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

func (c *numberChecker) submit() {
	ch := c.cur
	c.cur = nil
	ch.phones = make([]checkedPhone, len(ch.ins))
	ch.done = make(chan struct{})
	c.pending = append(c.pending, ch)
	c.work <- ch
}

func (c *numberChecker) emitOldest(emit func(i int, in recipientIn, p checkedPhone) error) error {
	ch := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	<-ch.done
	for i, in := range ch.ins {
		if err := emit(ch.first+i, in, ch.phones[i]); err != nil {
			return err
		}
	}
	return nil
}

// stop ends the workers once they have finished what was submitted. Safe to
// call more than once.
func (c *numberChecker) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	close(c.work)
	c.workers.Wait()
}
