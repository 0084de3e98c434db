package domain

import "time"

// RetriesStreamPrefix starts the names of the streams that record the retries
// of a batch (retry-failed). It does not start with BatchStreamPrefix: whatever
// follows the log takes the streams starting with that prefix for the
// aggregate's events.
const RetriesStreamPrefix = "batchretries-"

// RetriesStream is the name of the stream recording the retries of batch id,
// one RetryClaimed event each, oldest first.
func RetriesStream(id string) string { return RetriesStreamPrefix + id }

// TypeRetryClaimed is the stored type of a RetryClaimed event.
const TypeRetryClaimed = "RetryClaimed"

// RetryClaimed records that batch RetryID is being created to retry failed
// recipients of the batch whose retries stream holds it. A retry claims its ID
// before it stores its recipients, appending at the revision of the retries
// stream it read the earlier claims at: of two retries computed from the same
// claims, one is stored, and the other reads the claims again. So every retry
// knows every earlier one and leaves out the recipients they took, whatever
// the read models have applied.
//
// A claim is settled by the retry batch's stream: BatchCreated (the retry
// exists, its recipients all stored) or BatchCreateAbandoned (it never will);
// until then it is pending.
type RetryClaimed struct {
	RetryID string    `json:"retryId"`
	Tenant  string    `json:"tenant"`
	At      time.Time `json:"at"`
}
