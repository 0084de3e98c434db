package processors

import (
	"context"

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
	var ids, stopped []string
	now := f.cfg.Now()
	if f.cfg.RecoverAtStart {
		for id, b := range f.batches {
			if b.status == domain.StatusProcessing {
				ids = append(ids, id)
				b.lastEvent = now
			}
		}
		stopped = f.stopped
	}
	f.stopped = nil
	f.mu.Unlock()
	if len(ids) > 0 {
		f.log.Info("recovering processing batches", "count", len(ids))
	}
	f.publishWork(ctx, ids, false)
	f.settleStopped(ctx, stopped)
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
	var ids []string
	now := f.cfg.Now()
	for id, b := range f.batches {
		if b.status == domain.StatusProcessing && now.Sub(b.lastEvent) > f.cfg.StallTimeout {
			ids = append(ids, id)
			b.lastEvent = now
		}
	}
	f.mu.Unlock()
	f.publishWork(ctx, ids, true)
	f.startDue(ctx)
}

// publishWork hands each batch a work message continuing from its last slice,
// as the batch stands now (loading it is cheap: cached, or from a snapshot).
// When onlyDue, a batch with nothing to dispatch until later (its recipients
// waiting for their quiet hours, a retry's backoff, a provider's hold) gets
// none: its chain appends nothing while it waits, and a work message each
// stall timeout would add a chain each time, every one of them waiting in a
// handler for the batch's turn. It is looked at again a stall timeout after
// something comes due.
func (f *Forwarder) publishWork(ctx context.Context, ids []string, onlyDue bool) {
	for _, id := range ids {
		b, err := f.commands.Repository().Load(ctx, id)
		if err != nil {
			f.log.Error("loading a batch to recover failed", "batch", id, "err", err)
			continue
		}
		if b.Status() != domain.StatusProcessing {
			continue
		}
		if onlyDue {
			now := f.cfg.Now()
			if next := b.NextDispatchAt(now, f.cfg.MaxInFlight, nil); next.IsZero() || next.After(now) {
				f.mu.Lock()
				if e := f.batches[id]; e != nil && e.lastEvent.Before(next) {
					e.lastEvent = next
				}
				f.mu.Unlock()
				continue
			}
			f.log.Warn("batch stalled, handing it a new work message", "batch", id)
		}
		msg, err := workMessage(Work{BatchID: id, PrevSlice: b.LastSlice()})
		if err == nil {
			err = f.pub.Publish(TopicWork, msg)
		}
		if err != nil {
			f.log.Error("publishing work failed", "batch", id, "err", err)
		}
	}
}

// settleStopped hands a work message to each batch stopped with messages in
// flight when the process that sent them died (see Processor.settleStopped).
func (f *Forwarder) settleStopped(ctx context.Context, ids []string) {
	for _, id := range ids {
		b, err := f.commands.Repository().Load(ctx, id)
		if err != nil {
			f.log.Error("loading a stopped batch to settle failed", "batch", id, "err", err)
			continue
		}
		if inFlight, _ := b.Unanswered(nil); !inFlight || !b.Status().Final() {
			continue
		}
		f.log.Info("ending the messages a stopped batch left in flight", "batch", id)
		msg, err := workMessage(Work{BatchID: id, PrevSlice: b.LastSlice()})
		if err == nil {
			err = f.pub.Publish(TopicWork, msg)
		}
		if err != nil {
			f.log.Error("publishing work failed", "batch", id, "err", err)
		}
	}
}
