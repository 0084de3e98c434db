package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Idempotency keys make a retried request safe: a client that lost the answer to
// a create or a lifecycle command sends the same request with the same
// Idempotency-Key header and gets the first answer, instead of a second batch.
// Each key lives in a stream of its own, so that the event store's expected
// revision decides, across every instance, which request holds it.

// IdempotencyStreamPrefix starts the name of a key's stream.
const IdempotencyStreamPrefix = "idempotency-"

// IdempotencyStream is the stream of a tenant's key. The key is hashed: it is the
// client's text, of any shape, and the stream name must be a safe store key.
func IdempotencyStream(tenant, key string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + key))
	return IdempotencyStreamPrefix + hex.EncodeToString(sum[:])
}

// Idempotency-Key limits.
const MaxIdempotencyKeyLength = 255

// CheckIdempotencyKey refuses keys that are empty, too long or not printable ASCII.
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKeyLength {
		return &Error{Code: EINVALID, Message: "the Idempotency-Key header must be 1 to 255 characters",
			Details: []FieldProblem{{Field: "Idempotency-Key", Problem: "1 to 255 printable ASCII characters"}}}
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return &Error{Code: EINVALID, Message: "the Idempotency-Key header must be printable ASCII without spaces",
				Details: []FieldProblem{{Field: "Idempotency-Key", Problem: "1 to 255 printable ASCII characters"}}}
		}
	}
	return nil
}

// IdempotentRequestStarted claims a key for a request. For a create it names
// the batch the request creates, so that a retry finds it.
type IdempotentRequestStarted struct {
	Tenant      string    `json:"tenant"`
	Fingerprint string    `json:"fingerprint"`
	BatchID     string    `json:"batchId,omitempty"`
	At          time.Time `json:"at"`
}

// IdempotentRequestCompleted records the answer that every retry gets.
type IdempotentRequestCompleted struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
	// Location is the answer's Location header, for a create.
	Location string    `json:"location,omitempty"`
	At       time.Time `json:"at"`
}

// IdempotentRequestReleased records that the request holding the key failed
// without an answer worth repeating (a 5xx): a retry may run it again.
type IdempotentRequestReleased struct {
	At time.Time `json:"at"`
}

// BatchCreateAbandoned is the only event of a batch stream whose create was
// taken over by its retry, the create's claim on its key having run out of
// lease without an answer. Written where the batch's BatchCreated would be, and
// like it only to a stream that does not exist, it fences off the create in
// case it is still running: of the two, one is stored, so one key makes at
// most one batch. A stream that begins with it holds no batch.
type BatchCreateAbandoned struct {
	Tenant string    `json:"tenant"`
	At     time.Time `json:"at"`
}

// Stored type names of the idempotency events.
const (
	TypeIdempotentRequestStarted   = "IdempotentRequestStarted"
	TypeIdempotentRequestCompleted = "IdempotentRequestCompleted"
	TypeIdempotentRequestReleased  = "IdempotentRequestReleased"
	TypeBatchCreateAbandoned       = "BatchCreateAbandoned"
)

// IdempotencyRecord is what a key's stream says about it now.
type IdempotencyRecord struct {
	Started   IdempotentRequestStarted
	Completed *IdempotentRequestCompleted
	Released  bool
}

// Apply folds one event of the key's stream into the record.
func (r *IdempotencyRecord) Apply(eventType string, data []byte) error {
	switch eventType {
	case TypeIdempotentRequestStarted:
		var e IdempotentRequestStarted
		if err := json.Unmarshal(data, &e); err != nil {
			return err
		}
		*r = IdempotencyRecord{Started: e}
	case TypeIdempotentRequestCompleted:
		var e IdempotentRequestCompleted
		if err := json.Unmarshal(data, &e); err != nil {
			return err
		}
		r.Completed = &e
	case TypeIdempotentRequestReleased:
		r.Released = true
	}
	return nil
}

// IdempotencyDecision is what a request carrying a used key does.
type IdempotencyDecision int

const (
	// IdempotencyProceed: the key is free (new, expired, or released by a
	// failed request): run the request, claiming the key.
	IdempotencyProceed IdempotencyDecision = iota
	// IdempotencyReplay: the request ran; answer with its recorded answer.
	IdempotencyReplay
	// IdempotencyMismatch: the key was used for another request: refuse.
	IdempotencyMismatch
	// IdempotencyInProgress: the same request is running now: try again later.
	IdempotencyInProgress
	// IdempotencyResume: the same request claimed the key and stopped without an
	// answer (it failed, or its instance died): find out what it did, then run
	// it again if it did nothing.
	IdempotencyResume
)

// IdempotencyPolicy says how long keys are kept and how long a claim holds.
type IdempotencyPolicy struct {
	// TTL: a key whose answer is older is free again (at least 24h).
	TTL time.Duration
	// Lease: a claim older than this without an answer was abandoned.
	Lease time.Duration
}

// Decide says what a request with fingerprint does with a key in state r (nil:
// never used).
func (p IdempotencyPolicy) Decide(r *IdempotencyRecord, fingerprint string, now time.Time) IdempotencyDecision {
	switch {
	case r == nil:
		return IdempotencyProceed
	case r.Completed != nil && now.Sub(r.Completed.At) >= p.TTL:
		return IdempotencyProceed
	case r.Completed == nil && now.Sub(r.Started.At) >= p.TTL:
		return IdempotencyProceed
	case r.Started.Fingerprint != fingerprint:
		return IdempotencyMismatch
	case r.Completed != nil:
		return IdempotencyReplay
	case r.Released || now.Sub(r.Started.At) >= p.Lease:
		return IdempotencyResume
	default:
		return IdempotencyInProgress
	}
}
