package domain

import (
	"strings"
	"testing"
	"time"
)

func TestIdempotencyDecisions(t *testing.T) {
	p := IdempotencyPolicy{TTL: 24 * time.Hour, Lease: 2 * time.Minute}
	started := IdempotentRequestStarted{Fingerprint: "fp", At: t0}
	done := &IdempotentRequestCompleted{Status: 201, At: t0.Add(time.Second)}
	tests := []struct {
		name string
		rec  *IdempotencyRecord
		fp   string
		now  time.Time
		want IdempotencyDecision
	}{
		{"new key", nil, "fp", t0, IdempotencyProceed},
		{"answered, same request", &IdempotencyRecord{Started: started, Completed: done}, "fp", t0.Add(time.Hour), IdempotencyReplay},
		{"answered, other request", &IdempotencyRecord{Started: started, Completed: done}, "other", t0.Add(time.Hour), IdempotencyMismatch},
		{"answered a day ago", &IdempotencyRecord{Started: started, Completed: done}, "other", t0.Add(25 * time.Hour), IdempotencyProceed},
		{"answered just under a day ago", &IdempotencyRecord{Started: started, Completed: done}, "fp", t0.Add(24 * time.Hour), IdempotencyReplay},
		{"running", &IdempotencyRecord{Started: started}, "fp", t0.Add(time.Second), IdempotencyInProgress},
		{"running, other request", &IdempotencyRecord{Started: started}, "other", t0.Add(time.Second), IdempotencyMismatch},
		{"released by a failure", &IdempotencyRecord{Started: started, Released: true}, "fp", t0.Add(time.Second), IdempotencyResume},
		{"claim past its lease", &IdempotencyRecord{Started: started}, "fp", t0.Add(3 * time.Minute), IdempotencyResume},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Decide(tt.rec, tt.fp, tt.now); got != tt.want {
				t.Fatalf("decision %d, want %d", got, tt.want)
			}
		})
	}
}

func TestIdempotencyKeysAreChecked(t *testing.T) {
	for _, bad := range []string{"", strings.Repeat("k", 256), "has space", "tab\there", "é"} {
		if ErrorCode(CheckIdempotencyKey(bad)) != EINVALID {
			t.Errorf("key %q accepted", bad)
		}
	}
	for _, good := range []string{"k", strings.Repeat("k", 255), "550e8400-e29b-41d4-a716-446655440000", "order:42/retry"} {
		if err := CheckIdempotencyKey(good); err != nil {
			t.Errorf("key %q refused: %v", good, err)
		}
	}
	if IdempotencyStream("acme", "k") == IdempotencyStream("globex", "k") {
		t.Fatal("two tenants' keys share a stream")
	}
}
