package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// SuppressionState is the tenants' opt-out lists the commands decide on
// (optouts.List): a tenant's stream is too long to read for every change.
type SuppressionState interface {
	// Lookup reads whatever tenant's stream holds beyond the list and reports
	// whether phone is on it and how many events the stream holds.
	Lookup(ctx context.Context, tenant, phone string) (listed bool, events uint64, err error)
}

// OptOuts runs the commands on tenants' opt-out lists. Each change is an
// event appended to the tenant's stream at the revision it was decided on.
type OptOuts struct {
	store eventstore.Store
	state SuppressionState
	now   func() time.Time
}

// NewOptOuts returns the opt-out commands. now is the clock; nil means time.Now.
func NewOptOuts(store eventstore.Store, state SuppressionState, now func() time.Time) (*OptOuts, error) {
	if store == nil || state == nil {
		return nil, errors.New("commands: opt-outs: nil store or state")
	}
	if now == nil {
		now = time.Now
	}
	return &OptOuts{store: store, state: state, now: func() time.Time { return now().UTC() }}, nil
}

// ChangeOptOut puts a number on a tenant's list (OptOut) or takes it off.
type ChangeOptOut struct {
	Tenant string
	// Phone is in E.164.
	Phone  string
	OptOut bool
	Source domain.OptOutSource
	// Keyword is the word an inbound message sent; By who changed the list by
	// hand.
	Keyword, By string
	// EventID, when set, makes the change happen once whatever repeats it: an
	// inbound message's change uses domain.InboundChangeID, so that a replayed
	// STOP changes nothing. Optional; random otherwise.
	EventID string
}

// Change records cmd unless the list already says so, and reports whether it
// changed the list. A change whose EventID is stored already (a replay) changes
// nothing.
func (o *OptOuts) Change(ctx context.Context, cmd ChangeOptOut) (changed bool, err error) {
	id := cmd.EventID
	if id == "" {
		id = uuid.NewString()
	}
	for range maxConflictRetries {
		listed, events, err := o.state.Lookup(ctx, cmd.Tenant, cmd.Phone)
		if err != nil {
			return false, fmt.Errorf("change opt-out: %w", err)
		}
		if listed == cmd.OptOut {
			return false, nil
		}
		c := domain.OptOutChange{OptedOut: cmd.OptOut, Tenant: cmd.Tenant, Phone: cmd.Phone,
			Source: cmd.Source, Keyword: cmd.Keyword, By: cmd.By, At: o.now()}
		data, err := json.Marshal(c)
		if err != nil {
			return false, fmt.Errorf("encode %s: %w", c.EventType(), err)
		}
		_, err = o.store.Append(ctx, domain.OptOutStream(cmd.Tenant), eventstore.After(events),
			[]eventstore.EventData{{ID: id, Type: c.EventType(), Data: data}})
		if err == nil {
			// This instance's list takes the change at once, without waiting
			// for the log to bring it: a send here right after a STOP must not go.
			_, _, _ = o.state.Lookup(ctx, cmd.Tenant, cmd.Phone)
			return true, nil
		}
		if !errors.Is(err, eventstore.ErrConcurrency) {
			return false, fmt.Errorf("change opt-out: %w", err)
		}
		// Another change got there first, or the event ID is stored already:
		// a stream that did not move says the latter.
		if _, now, err := o.state.Lookup(ctx, cmd.Tenant, cmd.Phone); err == nil && now == events {
			return false, nil
		}
	}
	return false, fmt.Errorf("change opt-out: %w", eventstore.ErrConcurrency)
}
