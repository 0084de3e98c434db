package processors

import (
	"context"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// caughtUpAtStart runs once the forwarder has read the log up to where it stood
// at start. Over a transport that loses work messages on restart (RecoverAtStart)
// every processing batch gets a work message; over a durable broker the work
// messages survived and a batch that really lost its chain is found by stall
// recovery, so a joining instance does not take over batches others are working.
// Either way fencing and dispatch deadlines keep a needless work message from
// sending anything twice.
func (f *Forwarder) caughtUpAtStart(ctx context.Context) {
	f.mu.Lock()
	f.caughtUp = true
	var work []Work
	now := f.cfg.Now()
	if f.cfg.RecoverAtStart {
		for id, b := range f.batches {
			if b.status == domain.StatusProcessing {
				work = append(work, Work{BatchID: id, PrevSlice: b.lastSlice})
				b.lastEvent = now
			}
		}
	}
	f.mu.Unlock()
	if len(work) > 0 {
		f.log.Info("recovering processing batches", "count", len(work))
	}
	f.publishWork(work)
	f.startDue(ctx)
	f.readyOnce.Do(func() { close(f.ready) })
}

// tick hands stalled batches a work message and starts scheduled ones.
func (f *Forwarder) tick(ctx context.Context) {
	f.mu.Lock()
	if !f.caughtUp {
		f.mu.Unlock()
		return
	}
	var work []Work
	now := f.cfg.Now()
	for id, b := range f.batches {
		if b.status == domain.StatusProcessing && now.Sub(b.lastEvent) > f.cfg.StallTimeout {
			f.log.Warn("batch stalled, handing it a new work message", "batch", id, "idle", now.Sub(b.lastEvent).Round(time.Second))
			work = append(work, Work{BatchID: id, PrevSlice: b.lastSlice})
			b.lastEvent = now
		}
	}
	f.mu.Unlock()
	f.publishWork(work)
	f.startDue(ctx)
}

func (f *Forwarder) publishWork(work []Work) {
	for _, w := range work {
		msg, err := workMessage(w)
		if err == nil {
			err = f.pub.Publish(TopicWork, msg)
		}
		if err != nil {
			f.log.Error("publishing work failed", "batch", w.BatchID, "err", err)
		}
	}
}
