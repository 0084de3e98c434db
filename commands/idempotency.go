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

// IdempotencyKeys keeps the Idempotency-Key of requests in the event store, one
// stream a key, so that every instance agrees which request holds a key: the
// first to append its claim at the stream's revision.
type IdempotencyKeys struct {
	store  eventstore.Store
	policy domain.IdempotencyPolicy
	now    func() time.Time
}

// DefaultIdempotencyPolicy keeps keys 24 hours and lets a claim without an
// answer be taken over after two minutes, longer than any create takes once its
// body is read.
var DefaultIdempotencyPolicy = domain.IdempotencyPolicy{TTL: 24 * time.Hour, Lease: 2 * time.Minute}

// NewIdempotencyKeys returns the key store; a zero policy is the default one.
func NewIdempotencyKeys(store eventstore.Store, policy domain.IdempotencyPolicy, now func() time.Time) (*IdempotencyKeys, error) {
	if store == nil {
		return nil, errors.New("idempotency keys: nil event store")
	}
	if policy == (domain.IdempotencyPolicy{}) {
		policy = DefaultIdempotencyPolicy
	}
	if now == nil {
		now = time.Now
	}
	return &IdempotencyKeys{store: store, policy: policy, now: func() time.Time { return now().UTC() }}, nil
}

// KeyState is a key as found by Look: what a request carrying it must do, the
// record behind that, and where to write next.
type KeyState struct {
	Decision domain.IdempotencyDecision
	// Record is the key's record; nil for a key never used.
	Record *domain.IdempotencyRecord
	stream string
	next   eventstore.ExpectedRevision
}

// Look reads a tenant's key and decides what a request with fingerprint does.
func (k *IdempotencyKeys) Look(ctx context.Context, tenant, key, fingerprint string) (KeyState, error) {
	stream := domain.IdempotencyStream(tenant, key)
	st := KeyState{stream: stream}
	var n uint64
	for {
		events, err := k.store.ReadStream(ctx, stream, n, readPage)
		if err != nil {
			return KeyState{}, fmt.Errorf("read idempotency key: %w", err)
		}
		for _, e := range events {
			if st.Record == nil {
				st.Record = &domain.IdempotencyRecord{}
			}
			if err := st.Record.Apply(e.Type, e.Data); err != nil {
				return KeyState{}, fmt.Errorf("idempotency key record %d: %w", e.Revision, err)
			}
			n = e.Revision + 1
		}
		if len(events) < readPage {
			break
		}
	}
	st.next = eventstore.After(n)
	st.Decision = k.policy.Decide(st.Record, fingerprint, k.now())
	return st, nil
}

// Claim makes the request the key's holder. It fails with an error wrapping
// eventstore.ErrConcurrency when another request claimed or answered it since
// Look: look again.
func (k *IdempotencyKeys) Claim(ctx context.Context, st *KeyState, tenant, fingerprint, batchID string) error {
	return k.append(ctx, st, domain.TypeIdempotentRequestStarted, domain.IdempotentRequestStarted{
		Tenant: tenant, Fingerprint: fingerprint, BatchID: batchID, At: k.now(),
	})
}

// Complete records the answer every later request with the key gets.
func (k *IdempotencyKeys) Complete(ctx context.Context, st *KeyState, status int, body []byte, location string) error {
	if !json.Valid(body) {
		return errors.New("idempotency key: the answer to record is not JSON")
	}
	return k.append(ctx, st, domain.TypeIdempotentRequestCompleted, domain.IdempotentRequestCompleted{
		Status: status, Body: body, Location: location, At: k.now(),
	})
}

// Release lets a retry run the request again: it failed without an answer
// worth repeating.
func (k *IdempotencyKeys) Release(ctx context.Context, st *KeyState) error {
	return k.append(ctx, st, domain.TypeIdempotentRequestReleased, domain.IdempotentRequestReleased{At: k.now()})
}

func (k *IdempotencyKeys) append(ctx context.Context, st *KeyState, typ string, payload any) error {
	data, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("encode %s: %w", typ, err)
	}
	res, err := k.store.Append(ctx, st.stream, st.next, []eventstore.EventData{{ID: uuid.NewString(), Type: typ, Data: data}})
	if err != nil {
		return fmt.Errorf("idempotency key: %w", err)
	}
	st.next = eventstore.Exact(res.NextExpected)
	return nil
}

// AbandonCreate fences off the create of batch id, which a request started
// and did not answer, unless the batch is already stored: it writes
// BatchCreateAbandoned where the batch's first event would be, so that the
// create, should it still be running, can no longer store it. It fails with an
// error wrapping eventstore.ErrConcurrency when the stream exists: the batch
// was created, or was fenced off before.
func (h *Handlers) AbandonCreate(ctx context.Context, id, tenant string) error {
	data, err := json.Marshal(domain.BatchCreateAbandoned{Tenant: tenant, At: h.now().UTC()})
	if err != nil {
		return err
	}
	_, err = h.store.Append(ctx, domain.BatchStream(id), eventstore.NoStream(),
		[]eventstore.EventData{{ID: uuid.NewString(), Type: domain.TypeBatchCreateAbandoned, Data: data}})
	if err != nil {
		return fmt.Errorf("abandon the create of batch %s: %w", id, err)
	}
	return nil
}

// TicketStreamPrefix starts the streams that record redeemed WebSocket tickets.
const TicketStreamPrefix = "wsticket-"

// RedeemOnce records that a single-use token (a WebSocket ticket's nonce) was
// used, once across every instance sharing the event store. It reports whether
// this call was the first.
func (h *Handlers) RedeemOnce(ctx context.Context, nonce string, at time.Time) (bool, error) {
	data, err := json.Marshal(struct {
		At time.Time `json:"at"`
	}{at.UTC()})
	if err != nil {
		return false, err
	}
	_, err = h.store.Append(ctx, TicketStreamPrefix+nonce, eventstore.NoStream(),
		[]eventstore.EventData{{ID: uuid.NewString(), Type: "TicketRedeemed", Data: data}})
	switch {
	case errors.Is(err, eventstore.ErrConcurrency):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("redeem ticket: %w", err)
	}
	return true, nil
}
