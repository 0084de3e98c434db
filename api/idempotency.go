package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"net/http"
	"strconv"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// IdempotencyHeader carries a client's key for a create or a lifecycle command.
// A request retried with the same key and body gets the first answer; with the
// same key and another body, a 422. Keys are kept 24 hours.
const IdempotencyHeader = "Idempotency-Key"

// ReplayedHeader marks an answer that repeats the first answer to a key.
const ReplayedHeader = "Idempotent-Replayed"

// fingerprint hashes what makes two requests the same: method, path with query,
// and the body, hashed as it is read.
type fingerprint struct {
	h hash.Hash
}

func newFingerprint(r *http.Request) fingerprint {
	h := sha256.New()
	h.Write([]byte(r.Method + " " + r.URL.RequestURI() + "\n"))
	return fingerprint{h}
}

func (f fingerprint) Write(p []byte) (int, error) { return f.h.Write(p) }
func (f fingerprint) sum() string                 { return hex.EncodeToString(f.h.Sum(nil)) }

// idempotencyKey returns the request's key, "" without one, or a 422 for a key
// that cannot be one.
func idempotencyKey(r *http.Request) (string, error) {
	key, sent := r.Header[IdempotencyHeader]
	if !sent {
		return "", nil
	}
	if len(key) != 1 {
		return "", domain.CheckIdempotencyKey("")
	}
	return key[0], domain.CheckIdempotencyKey(key[0])
}

// underKey answers a request through its idempotency key: the recorded answer of
// an earlier request with the same key and fingerprint, a 422 for the key used
// with another request, a 409 while that request still runs, or run's answer,
// which is recorded for the retries to come (a 5xx is not: the key is released
// and a retry runs the request again). resume, when set, is asked first when an
// earlier request with the key stopped without an answer: it may find what that
// request did and answer in its place, returning true; its error is the
// answer, with the key left as it was.
func (s *server) underKey(w http.ResponseWriter, r *http.Request, tenant, key, fp, batchID string,
	resume func(old *domain.IdempotencyRecord, w http.ResponseWriter) (bool, error), run func(w http.ResponseWriter)) {
	keys := s.cfg.Commands.IdempotencyKeys()
	ctx := r.Context()
	for range 5 {
		st, err := keys.Look(ctx, tenant, key, fp)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		switch st.Decision {
		case domain.IdempotencyReplay:
			done := st.Record.Completed
			w.Header().Set(ReplayedHeader, "true")
			if done.Location != "" {
				w.Header().Set("Location", done.Location)
			}
			writeRaw(w, done.Status, done.Body)
			return
		case domain.IdempotencyMismatch:
			writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID,
				Message: "this Idempotency-Key was used for a different request; use a new key for a new request",
				Details: []domain.FieldProblem{{Field: IdempotencyHeader, Problem: "already used with another method, path or body"}}})
			return
		case domain.IdempotencyInProgress:
			w.Header().Set("Retry-After", "1")
			writeError(w, r, s.log, domain.Errorf(domain.ECONFLICT, "a request with this Idempotency-Key is still running; retry shortly"))
			return
		case domain.IdempotencyResume:
			if resume != nil {
				c := newCapture()
				answered, err := resume(st.Record, c)
				if err != nil {
					writeError(w, r, s.log, err)
					return
				}
				if answered {
					s.record(r, keys, &st, c)
					c.flush(w)
					return
				}
			}
		}
		err = keys.Claim(ctx, &st, tenant, fp, batchID)
		if errors.Is(err, eventstore.ErrConcurrency) {
			continue // another request with the key got there first: look again
		}
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		c := newCapture()
		run(c)
		s.record(r, keys, &st, c)
		c.flush(w)
		return
	}
	writeError(w, r, s.log, domain.Errorf(domain.ECONFLICT, "requests with this Idempotency-Key keep racing; retry shortly"))
}

// record keeps the answer for retries, or releases the key after a 5xx. A
// failure only logs: the client gets its answer, and a retry finds the claim
// and, once its lease ends, what the request did.
//
// It is recorded whether or not the client is still there: a client that
// dropped its connection is the one that retries, and a record refused with the
// request's cancelled context would hold the key, answering "still running",
// until its lease ends, then run a lifecycle command again.
func (s *server) record(r *http.Request, keys *commands.IdempotencyKeys, st *commands.KeyState, c *capture) {
	if c.abandoned {
		return // the key is the retry's that fenced this create off
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), recordTimeout)
	defer cancel()
	var err error
	if c.status >= 500 {
		err = keys.Release(ctx, st)
	} else {
		err = keys.Complete(ctx, st, c.status, c.body.Bytes(), c.header.Get("Location"))
	}
	if err != nil {
		s.log.WarnContext(r.Context(), "recording the answer to an idempotency key failed", "path", r.URL.Path, "err", err)
	}
}

// recordTimeout bounds recording an answer once the request is done.
const recordTimeout = 10 * time.Second

// capture keeps an answer so it can be recorded before it is sent.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
	// abandoned: the request was a create fenced off by its retry.
	abandoned bool
}

func newCapture() *capture { return &capture{header: http.Header{}, status: http.StatusOK} }

func (c *capture) Header() http.Header         { return c.header }
func (c *capture) Write(p []byte) (int, error) { return c.body.Write(p) }
func (c *capture) WriteHeader(status int)      { c.status = status }

// markAbandoned notes, on a capture, a create fenced off by its retry.
func markAbandoned(w http.ResponseWriter, err error) {
	if c, ok := w.(*capture); ok && errors.Is(err, commands.ErrCreateAbandoned) {
		c.abandoned = true
	}
}

func (c *capture) flush(w http.ResponseWriter) {
	for k, v := range c.header {
		w.Header()[k] = v
	}
	w.WriteHeader(c.status)
	_, _ = w.Write(c.body.Bytes())
}

// writeRaw answers with a JSON body recorded earlier, ending in a newline as
// writeJSON's answers do (the store keeps it compact).
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	body = append(bytes.TrimSpace(body), '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
