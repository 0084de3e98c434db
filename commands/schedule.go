package commands

import (
	"context"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// RescheduleBatch sets when a pending batch starts by itself.
type RescheduleBatch struct {
	Act
	ScheduleTime time.Time
}

// RescheduleBatch moves a pending batch's start to cmd.ScheduleTime; the
// scheduler starts it then. The window a time must lie in is the API's rule.
func (h *Handlers) RescheduleBatch(ctx context.Context, cmd RescheduleBatch) (Result, error) {
	return h.act(ctx, cmd.Act, func(b *domain.Batch) error { return b.Reschedule(h.now(), cmd.ScheduleTime, cmd.By) })
}
