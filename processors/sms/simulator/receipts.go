package simulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// Callbacks says where and how the simulator reports the delivery of the
// messages it accepts, as Twilio does: one signed status callback a message,
// with its final status, some time after it was accepted.
type Callbacks struct {
	// Delay is the mean time from accepting a message to its callback; each one
	// waits a uniform draw from half to one and a half times it. 0, the
	// default, sends none.
	Delay time.Duration
	// PublicURL is the base URL of the instance that an in-process Send reports
	// to (its status route, twilio.StatusCallbackURL). Messages without a batch
	// ID get no callback. The HTTP server reports where each request's
	// StatusCallback says instead.
	PublicURL string
	// AuthToken signs an in-process Send's callbacks (X-Twilio-Signature):
	// required with Delay and PublicURL. The HTTP server signs with its own
	// token, the account's, as Twilio does.
	AuthToken string
	// AccountSID is the AccountSid an in-process Send's callbacks carry.
	AccountSID string
	// HTTPClient posts the callbacks. Optional; the default gives up after
	// 10 s and follows no redirect.
	HTTPClient *http.Client
	// Deliver, when set, takes an in-process Send's receipts in place of
	// status callbacks over HTTP: those come due are handed over together,
	// every DeliverEvery, so that a provider in the same process costs the
	// service one write a batch every so often, not a request and a write a
	// message. Receipts it fails are counted and logged, not tried again, as
	// a failed callback. The HTTP server reports with callbacks still.
	Deliver func(ctx context.Context, receipts []Receipt) error
}

// Receipt is one message's delivery as Callbacks.Deliver gets it.
type Receipt struct {
	BatchID    string
	Index      int
	ProviderID string
	// SentAt is when the message reached the provider.
	SentAt    time.Time
	Delivered bool
	// Code is Twilio's error code of a message not delivered.
	Code string
}

// DeliverEvery is how often receipts come due are handed to Callbacks.Deliver.
const DeliverEvery = 100 * time.Millisecond

// undeliverable are the test numbers whose messages are accepted and then not
// delivered, with Twilio's status and delivery error code. Any other accepted
// message is reported delivered.
var undeliverable = map[string]struct{ status, code string }{
	"+15005550006": {twilio.StatusUndelivered, "30003"}, // unreachable destination handset
	"+15005550007": {twilio.StatusUndelivered, "30005"}, // unknown destination handset
	"+15005550008": {twilio.StatusFailed, "30008"},      // unknown error
}

// callback is one status callback to send, or with receipt set, one receipt
// to hand to Callbacks.Deliver.
type callback struct {
	url, token string
	form       url.Values
	receipt    *Receipt
}

// reporter sends status callbacks after their delay. Sends run on their own
// goroutines, at most maxReports at once; Close drops the ones not sent yet.
type reporter struct {
	delay   time.Duration
	client  *http.Client
	deliver func(context.Context, []Receipt) error
	log     *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	sent    int
	failed  int
	pending []Receipt // due, for deliver
}

// maxReports bounds the callbacks posted at once.
const maxReports = 32

func newReporter(cfg Callbacks, log *slog.Logger) *reporter {
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &reporter{delay: cfg.Delay, client: client, deliver: cfg.Deliver, log: log, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, maxReports)}
	if r.deliver != nil {
		r.wg.Add(1)
		go r.deliverDue()
	}
	return r
}

// report schedules c after the delay.
func (r *reporter) report(c callback) {
	if r == nil || r.delay <= 0 || c.url == "" && c.receipt == nil {
		return
	}
	wait := r.delay/2 + time.Duration(mathrand.Int64N(int64(r.delay)+1))
	if c.receipt != nil {
		time.AfterFunc(wait, func() {
			r.mu.Lock()
			if !r.closed {
				r.pending = append(r.pending, *c.receipt)
			}
			r.mu.Unlock()
		})
		return
	}
	time.AfterFunc(wait, func() {
		// Counted once it runs, so that close waits for the callbacks being
		// sent, not for the timers of those it drops.
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		r.wg.Add(1)
		r.mu.Unlock()
		defer r.wg.Done()
		select {
		case r.slots <- struct{}{}:
		case <-r.ctx.Done():
			return
		}
		defer func() { <-r.slots }()
		err := r.post(c)
		r.mu.Lock()
		if err != nil {
			r.failed++
		} else {
			r.sent++
		}
		r.mu.Unlock()
		if err != nil && r.ctx.Err() == nil {
			r.log.Warn("simulator: status callback failed", slog.String("to", redactQuery(c.url)), slog.Any("error", err))
		}
	})
}

func (r *reporter) post(c callback) error {
	req, err := http.NewRequestWithContext(r.ctx, http.MethodPost, c.url, strings.NewReader(c.form.Encode()))
	if err != nil {
		return fmt.Errorf("status callback: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "TwilioProxy/1.1 (smsbatch simulator)")
	req.Header.Set(twilio.SignatureHeader, twilio.Signature(c.token, c.url, c.form))
	resp, err := r.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is logged apart, without its query
		}
		return fmt.Errorf("status callback: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status callback: answered %s", resp.Status)
	}
	return nil
}

// deliverDue hands the receipts come due to deliver every DeliverEvery until
// the reporter closes.
func (r *reporter) deliverDue() {
	defer r.wg.Done()
	tick := time.NewTicker(DeliverEvery)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		r.mu.Lock()
		due := r.pending
		r.pending = nil
		r.mu.Unlock()
		if len(due) == 0 {
			continue
		}
		err := r.deliver(r.ctx, due)
		r.mu.Lock()
		if err != nil {
			r.failed += len(due)
		} else {
			r.sent += len(due)
		}
		r.mu.Unlock()
		if err != nil && r.ctx.Err() == nil {
			r.log.Warn("simulator: delivering receipts failed", slog.Int("receipts", len(due)), slog.Any("error", err))
		}
	}
}

// counts returns the callbacks answered with a 2xx and those that were not.
func (r *reporter) counts() (sent, failed int) {
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent, r.failed
}

// close drops the callbacks not sent yet and waits for those being sent.
func (r *reporter) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// fate is the final status of a message to to, and its error code when it
// was not delivered.
func fate(to string) (status, code string) {
	if u, ok := undeliverable[to]; ok {
		return u.status, u.code
	}
	return twilio.StatusDelivered, ""
}

// statusForm is the form Twilio posts to a status callback for message sid.
func statusForm(sid, accountSID, from, to string) url.Values {
	status, code := fate(to)
	form := url.Values{
		"MessageSid": {sid}, "SmsSid": {sid}, "AccountSid": {accountSID},
		"MessageStatus": {status}, "SmsStatus": {status}, "To": {to}, "ApiVersion": {"2010-04-01"},
	}
	if from != "" {
		form.Set("From", from)
	}
	if code != "" {
		form.Set("ErrorCode", code)
	}
	return form
}

// redactQuery drops a URL's query for logs: it names a batch and a message.
func redactQuery(raw string) string {
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		return raw[:i]
	}
	return raw
}
