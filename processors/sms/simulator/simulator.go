// Package simulator is the built-in SMS provider of the embedded default and of the
// tests. It owns the outbox file (usually <data-dir>/sim-outbox.jsonl): every message
// it accepts is appended there as one JSON object a line, so a person or a test can
// see exactly what was sent and how often.
//
// It behaves like a provider that honours idempotency keys, across restarts too: the
// keys of the most recently accepted messages (Config.RememberKeys) are read back
// from the end of the outbox at start, and a key found there is answered as a
// duplicate without writing again. Start-up reads only that tail, so it does not
// grow with the outbox. It answers Twilio's documented test numbers as Twilio does,
// can add latency and deterministic transient failures, and reports delivery
// with status callbacks signed as Twilio signs them (receipts.go).
//
// One Simulator owns one outbox file; two processes sharing a file would not see each
// other's keys.
package simulator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("simulator: closed")

// Config configures a Simulator.
type Config struct {
	// OutboxPath is the JSON-lines file accepted messages are appended to. Required.
	// It is created if missing; its directory must exist.
	OutboxPath string

	// Latency is the mean time one Send takes. Default 0.
	Latency time.Duration
	// LatencyJitter spreads the latency uniformly over Latency +/- LatencyJitter
	// (never below 0). Default 0.
	LatencyJitter time.Duration

	// TransientFailureRate is the probability, from 0 to 1, that an attempt to a
	// number that would otherwise succeed fails with provider_unavailable. Default 0.
	TransientFailureRate float64
	// Seed makes the transient failures reproducible: whether an attempt fails
	// depends only on Seed, the idempotency key and how often this Simulator has
	// been asked to send that key since it last accepted it.
	Seed int64

	// RecordEveryCall makes the simulator behave like a provider that ignores
	// idempotency keys (Twilio's Messages API takes none): every call that
	// succeeds is a new message with its own outbox line, however often its key
	// was seen. Every call, whatever its answer, is also written to CallsPath with
	// when it started and ended, so that a test sees real duplicates and how many
	// calls of a batch overlapped; over HTTP, every call with the account's
	// credentials, a 429 or a refused form too.
	RecordEveryCall bool
	// CallsPath is the JSON-lines file calls are written to; required with
	// RecordEveryCall.
	CallsPath string

	// RememberKeys is how many of the most recently accepted messages' keys are
	// honoured (also across a restart: New reads them back from the end of the
	// outbox, however long it is). Default 200,000.
	RememberKeys int

	// Sync fsyncs the outbox after every line. Off by default: the simulator stands
	// in for a remote provider, and losing the last lines to a power cut only makes
	// it forget keys, which a re-send then records again.
	Sync bool

	// Callbacks report each accepted message's delivery with a status callback,
	// as Twilio does; by default none are sent.
	Callbacks Callbacks

	// Clock stamps outbox lines. Default time.Now.
	Clock func() time.Time
	// Logger reports what New found in the outbox. Default: discard.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RememberKeys <= 0 {
		c.RememberKeys = 200_000
	}
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.OutboxPath == "" {
		errs = append(errs, errors.New("OutboxPath is required"))
	}
	if c.Latency < 0 {
		errs = append(errs, fmt.Errorf("negative Latency %s", c.Latency))
	}
	if c.LatencyJitter < 0 {
		errs = append(errs, fmt.Errorf("negative LatencyJitter %s", c.LatencyJitter))
	}
	// The negated comparison also rejects NaN.
	if c.RecordEveryCall && c.CallsPath == "" {
		errs = append(errs, errors.New("CallsPath is required with RecordEveryCall"))
	}
	if !(c.TransientFailureRate >= 0 && c.TransientFailureRate <= 1) {
		errs = append(errs, fmt.Errorf("TransientFailureRate %v is outside 0..1", c.TransientFailureRate))
	}
	if c.Callbacks.Delay < 0 {
		errs = append(errs, fmt.Errorf("negative Callbacks.Delay %s", c.Callbacks.Delay))
	}
	if c.Callbacks.Delay > 0 && c.Callbacks.PublicURL != "" && c.Callbacks.Deliver == nil && c.Callbacks.AuthToken == "" {
		errs = append(errs, errors.New("Callbacks.AuthToken is required to sign callbacks to Callbacks.PublicURL"))
	}
	return errors.Join(errs...)
}

// OutboxEntry is one line of the outbox: one accepted message.
type OutboxEntry struct {
	Key        string    `json:"key"`
	To         string    `json:"to"`
	Body       string    `json:"body"`
	ProviderID string    `json:"providerId"`
	Time       time.Time `json:"time"` // encoded as RFC 3339 with nanoseconds
}

// Call is one line of the calls file: one call to the provider, whatever its answer.
type Call struct {
	Key   string    `json:"key"`
	To    string    `json:"to"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Outcome is "accepted", the failure's category, "abandoned" when the
	// caller gave up before the answer, or OutcomeRefused.
	Outcome string `json:"outcome"`
	// ProviderID is the id an accepted call was answered with.
	ProviderID string `json:"providerId,omitempty"`
}

// OutcomeRefused is the outcome of a call the HTTP server refused for its
// form (Twilio's 400s: no To, no Body, a body too long, a bad StatusCallback)
// before anything was sent.
const OutcomeRefused = "refused"

// Stats counts what a Simulator did since New.
type Stats struct {
	// Restored is how many keys New read back from the outbox.
	Restored int
	// Accepted is how many messages were accepted and written to the outbox.
	Accepted int
	// Duplicates is how many sends were answered from an earlier acceptance.
	Duplicates int
	// Failed counts failed sends by category.
	Failed map[domain.ErrorCategory]int
	// Callbacks counts the status callbacks answered with a 2xx, and
	// CallbacksFailed those that were not (refused, or not answered).
	Callbacks       int
	CallbacksFailed int
}

// Simulator is an sms.Provider that writes what it accepts to a local file. It is
// safe for concurrent use; sends of different keys proceed in parallel.
type Simulator struct {
	cfg Config

	mu       sync.Mutex
	accepted *recentKeys              // idempotency key -> provider ID, the most recent
	inflight map[string]chan struct{} // closed when the key's current send ends
	attempts map[string]int           // sends of a not yet accepted key, for the failure roll
	stats    Stats

	// writeMu serialises appends so that lines never interleave.
	writeMu sync.Mutex
	f       *os.File
	// midLine is true when the file does not end with a newline (a torn line from a
	// crash or a failed write); the next append starts with one.
	midLine bool
	closed  bool
	// calls is the calls file, with RecordEveryCall.
	calls *os.File
	// reports sends status callbacks; nil when Callbacks.Delay is 0.
	reports *reporter
}

var _ sms.Provider = (*Simulator)(nil)

// New opens (creating if needed) the outbox at cfg.OutboxPath and reads back the keys
// it already holds.
func New(cfg Config) (*Simulator, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: invalid config: %w", err)
	}
	f, err := os.OpenFile(cfg.OutboxPath, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("simulator: open outbox: %w", err)
	}
	accepted := newRecentKeys(cfg.RememberKeys)
	entries, skipped, midLine, err := readOutboxTail(f, accepted)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("simulator: read outbox %s: %w", cfg.OutboxPath, err)
	}
	s := &Simulator{
		cfg:      cfg,
		accepted: accepted,
		inflight: make(map[string]chan struct{}),
		attempts: make(map[string]int),
		stats:    Stats{Failed: make(map[domain.ErrorCategory]int)},
		f:        f,
		midLine:  midLine,
	}
	if !cfg.RecordEveryCall { // otherwise keys are not honoured: nothing read back answers a send
		s.accepted.reserve(len(entries))
		for _, e := range entries {
			s.accepted.remember(e)
		}
	}
	if cfg.RecordEveryCall {
		if s.calls, err = os.OpenFile(cfg.CallsPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("simulator: open calls file: %w", err)
		}
	}
	if cfg.Callbacks.Delay > 0 {
		s.reports = newReporter(cfg.Callbacks, cfg.Logger)
	}
	s.stats.Restored = s.accepted.len()
	if skipped > 0 {
		cfg.Logger.Warn("simulator: skipped unreadable outbox lines, most likely torn by a crash; their keys count as never sent",
			slog.String("path", cfg.OutboxPath), slog.Int("lines", skipped))
	}
	cfg.Logger.Info("simulator: outbox opened", slog.String("path", cfg.OutboxPath), slog.Int("keys", s.stats.Restored))
	return s, nil
}

// Send waits the configured latency, then accepts msg and appends it to the outbox,
// or fails it as Twilio would. A key accepted before (also before a restart) is
// answered with the first receipt, marked Duplicate, and not written again. An empty
// key is not deduplicated. The outbox line is written before Send returns. With
// Callbacks, an accepted message's delivery is reported to Callbacks.PublicURL.
func (s *Simulator) Send(ctx context.Context, msg sms.Message) (receipt sms.Receipt, err error) {
	received := s.cfg.Clock().UTC()
	sms.Departed(ctx)
	cb := callbackTo{token: s.cfg.Callbacks.AuthToken, accountSID: s.cfg.Callbacks.AccountSID}
	switch {
	case msg.BatchID == "":
	case s.cfg.Callbacks.Deliver != nil:
		cb.direct = true
	case s.cfg.Callbacks.PublicURL != "":
		cb.url = twilio.StatusCallbackURL(s.cfg.Callbacks.PublicURL, msg.BatchID, msg.Index, received)
	}
	return s.send(ctx, msg, received, cb)
}

// callbackTo is where a message's status callback goes ("" for nowhere), the
// token it is signed with and the account it names; direct, its receipt goes
// to Callbacks.Deliver instead.
type callbackTo struct {
	url, token, accountSID, from string
	direct                       bool
}

// send is Send with the message's status callback; the HTTP server passes the
// one its request names.
func (s *Simulator) send(ctx context.Context, msg sms.Message, received time.Time, cb callbackTo) (receipt sms.Receipt, err error) {
	// The outbox records when the message reached the provider, not when the
	// simulated latency ended: that is the moment a sender's rate is judged by.
	if s.cfg.RecordEveryCall {
		defer func() { s.recordCall(msg, received, receipt, err) }()
	}
	if err := s.wait(ctx); err != nil {
		return sms.Receipt{}, err
	}

	key := msg.IdempotencyKey
	if key != "" && !s.cfg.RecordEveryCall {
		receipt, done, err := s.claim(ctx, key)
		if err != nil || receipt.Duplicate {
			return receipt, err
		}
		defer done()
	}

	if serr := s.decide(msg); serr != nil {
		s.mu.Lock()
		s.stats.Failed[serr.Category]++
		s.mu.Unlock()
		return sms.Receipt{}, serr
	}

	entry := OutboxEntry{
		Key:        key,
		To:         msg.To,
		Body:       msg.Body,
		ProviderID: newProviderID(),
		Time:       received,
	}
	if err := s.append(entry); errors.Is(err, ErrClosed) {
		return sms.Receipt{}, err
	} else if err != nil {
		// The simulator stands in for a provider: its outbox failing is the
		// provider failing, an outage, not something about the recipient.
		s.cfg.Logger.Error("simulator: outbox write failed", slog.Any("error", err))
		return sms.Receipt{}, &sms.Error{Category: domain.CategoryProviderUnavailable, Code: "outbox",
			Message: "the provider could not take the message"}
	}

	s.mu.Lock()
	if key != "" && !s.cfg.RecordEveryCall {
		s.accepted.add(key, entry.ProviderID)
	}
	// Kept, the attempts of every key ever accepted would hold memory for
	// each message sent (RecordEveryCall sends a key again as a new message).
	// Sends without a key share one count, kept so that their rolls go on.
	if key != "" {
		delete(s.attempts, key)
	}
	s.stats.Accepted++
	s.mu.Unlock()
	if cb.direct {
		status, code := fate(msg.To)
		s.reports.report(callback{receipt: &Receipt{BatchID: msg.BatchID, Index: msg.Index, ProviderID: entry.ProviderID,
			SentAt: received, Delivered: status == twilio.StatusDelivered, Code: code}})
	} else if cb.url != "" {
		s.reports.report(callback{url: cb.url, token: cb.token, form: statusForm(entry.ProviderID, cb.accountSID, cb.from, msg.To)})
	}
	return sms.Receipt{ProviderID: entry.ProviderID}, nil
}

// recordCall writes one call to the calls file. A failure to write is logged:
// the calls file is a witness, and the send itself went as answered.
func (s *Simulator) recordCall(msg sms.Message, start time.Time, receipt sms.Receipt, err error) {
	c := Call{Key: msg.IdempotencyKey, To: msg.To, Start: start, End: s.cfg.Clock().UTC(), Outcome: "accepted", ProviderID: receipt.ProviderID}
	var se *sms.Error
	switch {
	case errors.As(err, &se):
		c.Outcome = string(se.Category)
	case err != nil:
		c.Outcome = "abandoned"
	}
	s.RecordCall(c)
}

// RecordCall writes c to the calls file when RecordEveryCall is set: the HTTP
// server uses it for calls it answers itself (429).
func (s *Simulator) RecordCall(c Call) {
	if !s.cfg.RecordEveryCall {
		return
	}
	line, err := json.Marshal(c)
	if err != nil {
		return
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return
	}
	if _, err := s.calls.Write(append(line, '\n')); err != nil {
		s.cfg.Logger.Error("simulator: write calls file", slog.Any("error", err))
	}
}

// ReadCalls returns the calls recorded at path, in the order they ended.
func ReadCalls(path string) ([]Call, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulator: read calls: %w", err)
	}
	var calls []Call
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		var c Call
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &c) != nil {
			continue
		}
		calls = append(calls, c)
	}
	return calls, nil
}

// wait sleeps the latency, or until ctx ends.
func (s *Simulator) wait(ctx context.Context) error {
	d := s.cfg.Latency
	if j := s.cfg.LatencyJitter; j > 0 {
		d += time.Duration(mathrand.Int64N(2*int64(j)+1)) - j
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// claim makes the caller the only send of key in progress. It returns a Duplicate
// receipt if key was accepted already; otherwise done must be called when the send
// has ended, successfully or not. Concurrent sends of one key queue here, so that
// exactly one of them can write the outbox line.
func (s *Simulator) claim(ctx context.Context, key string) (receipt sms.Receipt, done func(), err error) {
	for {
		s.mu.Lock()
		if id, ok := s.accepted.get(key); ok {
			s.stats.Duplicates++
			s.mu.Unlock()
			return sms.Receipt{ProviderID: id, Duplicate: true}, nil, nil
		}
		busy, ok := s.inflight[key]
		if !ok {
			ch := make(chan struct{})
			s.inflight[key] = ch
			s.mu.Unlock()
			return sms.Receipt{}, func() {
				s.mu.Lock()
				delete(s.inflight, key)
				s.mu.Unlock()
				close(ch)
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return sms.Receipt{}, nil, ctx.Err()
		}
	}
}

// testNumbers are Twilio's magic "To" numbers for test credentials, with Twilio's
// codes. The messages leave the number out so that the error analytics group them.
var testNumbers = map[string]sms.Error{
	"+15005550001": {Category: domain.CategoryInvalidNumber, Code: "21211", Message: "The 'To' number is not a valid phone number."},
	"+15005550002": {Category: domain.CategoryUnroutable, Code: "21612", Message: "The 'To' number cannot be reached: there is no route to it."},
	// Twilio means the account may not send to that country. For us the route is
	// closed just as with 21612, and retrying will not open it: unroutable.
	"+15005550003": {Category: domain.CategoryUnroutable, Code: "21408", Message: "Permission to send an SMS has not been enabled for the region of the 'To' number."},
	"+15005550004": {Category: domain.CategoryBlocked, Code: "21610", Message: "The 'To' number has opted out of messages from this sender (replied STOP)."},
	"+15005550009": {Category: domain.CategoryNotSMSCapable, Code: "21614", Message: "The 'To' number is not a mobile number and cannot receive SMS."},
}

// decide returns the failure this attempt to send msg meets, or nil if it succeeds.
func (s *Simulator) decide(msg sms.Message) *sms.Error {
	if tn, ok := testNumbers[msg.To]; ok {
		return &tn
	}
	if !plausibleE164(msg.To) {
		tn := testNumbers["+15005550001"]
		return &tn
	}
	if s.cfg.TransientFailureRate <= 0 {
		return nil
	}
	s.mu.Lock()
	s.attempts[msg.IdempotencyKey]++
	attempt := s.attempts[msg.IdempotencyKey]
	s.mu.Unlock()
	if roll(s.cfg.Seed, msg.IdempotencyKey, attempt) < s.cfg.TransientFailureRate {
		return &sms.Error{Category: domain.CategoryProviderUnavailable, Code: "503", Message: "simulated transient failure"}
	}
	return nil
}

// plausibleE164 checks the shape only: "+", then up to 15 digits not starting with 0.
// Numbers reach the provider already normalised; this catches a caller that forgot.
func plausibleE164(n string) bool {
	if len(n) < 3 || len(n) > 16 || n[0] != '+' || n[1] == '0' {
		return false
	}
	for _, c := range []byte(n[1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// roll maps (seed, key, attempt) to a number in [0, 1), the same on every run.
func roll(seed int64, key string, attempt int) float64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	h.Write([]byte(key))
	binary.LittleEndian.PutUint64(b[:], uint64(attempt))
	h.Write(b[:])
	// FNV's low bits mix poorly for short inputs; the splitmix64 finaliser spreads
	// every input bit over the 53 bits kept.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// newProviderID returns an ID shaped like a Twilio message SID.
func newProviderID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails, per its documentation
	return providerIDPrefix + hex.EncodeToString(b[:])
}

// providerIDPrefix starts every message id the simulator gives, as Twilio's.
const providerIDPrefix = "SM"

// append writes e as one line with one write call, so that a crash leaves at most
// the last line torn.
func (s *Simulator) append(e OutboxEntry) error {
	line, err := e.appendLine(make([]byte, 0, 256))
	if err != nil {
		return fmt.Errorf("simulator: encode outbox line: %w", err)
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.midLine {
		line = append([]byte{'\n'}, line...)
	}
	n, err := s.f.Write(line)
	if n > 0 {
		// A short write (disk full) leaves a torn line; the next append closes it.
		s.midLine = line[n-1] != '\n'
	}
	if err != nil {
		return fmt.Errorf("simulator: append outbox: %w", err)
	}
	if s.cfg.Sync {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("simulator: sync outbox: %w", err)
		}
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Simulator) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Callbacks, st.CallbacksFailed = s.reports.counts()
	st.Failed = make(map[domain.ErrorCategory]int, len(s.stats.Failed))
	for c, n := range s.stats.Failed {
		st.Failed[c] = n
	}
	return st
}

// Close closes the outbox. Sends that have not written yet fail with ErrClosed;
// status callbacks not sent yet are dropped. Closing twice is harmless.
func (s *Simulator) Close() error {
	s.reports.close()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if err := s.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("simulator: close outbox: %w", err))
	}
	if s.calls != nil {
		if err := s.calls.Close(); err != nil {
			errs = append(errs, fmt.Errorf("simulator: close calls file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ReadOutbox returns the entries of the outbox at path, in the order they were
// written. Lines that are not a complete entry are skipped: they can only be lines a
// crash tore, whose message was never acknowledged and so was sent again, or will be.
func ReadOutbox(path string) ([]OutboxEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("simulator: read outbox: %w", err)
	}
	defer f.Close()
	entries, _, _, err := readOutbox(f)
	if err != nil {
		return nil, fmt.Errorf("simulator: read outbox %s: %w", path, err)
	}
	return entries, nil
}

// readOutbox parses r line by line. It reports how many lines it skipped and whether
// the input ends in the middle of a line.
func readOutbox(r io.Reader) (entries []OutboxEntry, skipped int, midLine bool, err error) {
	br := bufio.NewReader(r)
	for {
		// ReadBytes, not a Scanner: a line has no length limit.
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			midLine = line[len(line)-1] != '\n'
			if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
				var e OutboxEntry
				if json.Unmarshal(trimmed, &e) == nil && e.ProviderID != "" {
					entries = append(entries, e)
				} else {
					skipped++
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return entries, skipped, midLine, nil
		}
		if err != nil {
			return nil, 0, false, err
		}
	}
}

// appendLine appends e's outbox line to b: what a json.Encoder that does not
// escape HTML writes for it (the outbox is read by people: <, > and & stay as
// they are). Written out, as it is once a message, it took half of what an
// encoder's reflection and buffers did; a string with anything to escape
// still goes through the encoder, so every line is the encoder's.
func (e OutboxEntry) appendLine(b []byte) ([]byte, error) {
	b = append(b, `{"key":`...)
	b = appendJSONString(b, e.Key)
	b = append(b, `,"to":`...)
	b = appendJSONString(b, e.To)
	b = append(b, `,"body":`...)
	b = appendJSONString(b, e.Body)
	b = append(b, `,"providerId":`...)
	b = appendJSONString(b, e.ProviderID)
	b = append(b, `,"time":"`...)
	// As the time's MarshalJSON writes it, without its buffer.
	b, err := e.Time.AppendText(b)
	if err != nil {
		return nil, err
	}
	return append(b, '"', '}', '\n'), nil
}

// appendJSONString appends s as a JSON string, as a json.Encoder that does not
// escape HTML would: as it is between quotes when it holds only printable
// ASCII other than " and \, and through the encoder otherwise.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(s) // a string always encodes
			return append(b, bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
