package processors

import (
	"context"

	"github.com/smsbatch/smsbatch/domain"
)

// startDue starts the pending, auto-starting batches whose schedule has come and
// hands each its first work message.
func (f *Forwarder) startDue(ctx context.Context) {
	f.mu.Lock()
	var due []string
	now := f.cfg.Now()
	for id, b := range f.batches {
		if b.status == domain.StatusPending && b.autoStart && !b.schedule.After(now) {
			due = append(due, id)
		}
	}
	f.mu.Unlock()
	for _, id := range due {
		b, err := f.commands.StartIfDue(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("starting scheduled batch failed", "batch", id, "err", err)
			}
			continue
		}
		if b.Status() == domain.StatusProcessing {
			if err := PublishWork(f.pub, id, b.Version()-1); err != nil {
				f.log.Error("publishing work failed", "batch", id, "err", err)
			}
		}
	}
}
