package simulator_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// receiver is a webhook that records the status callbacks it gets, with
// whether their signature holds for token.
type receiver struct {
	t     *testing.T
	url   string
	token string

	mu   sync.Mutex
	got  []received
	more chan struct{}
}

type received struct {
	at     time.Time
	query  url.Values
	form   url.Values
	signed bool
}

func newReceiver(t *testing.T, token string) *receiver {
	rc := &receiver{t: t, token: token, more: make(chan struct{}, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost || r.URL.Path != twilio.StatusCallbackPath {
			http.Error(w, "bad callback", http.StatusBadRequest)
			return
		}
		full := rc.url + r.RequestURI
		rc.mu.Lock()
		rc.got = append(rc.got, received{at: time.Now(), query: r.URL.Query(), form: r.PostForm,
			signed: twilio.ValidSignature(rc.token, full, r.PostForm, r.Header.Get(twilio.SignatureHeader))})
		rc.mu.Unlock()
		rc.more <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	rc.url = srv.URL
	return rc
}

// wait returns the callbacks once n have come, failing after timeout.
func (rc *receiver) wait(n int, timeout time.Duration) []received {
	rc.t.Helper()
	deadline := time.After(timeout)
	for {
		rc.mu.Lock()
		if len(rc.got) >= n {
			out := append([]received(nil), rc.got...)
			rc.mu.Unlock()
			return out
		}
		rc.mu.Unlock()
		select {
		case <-rc.more:
		case <-deadline:
			rc.t.Fatalf("%d status callbacks after %s, want %d", len(rc.got), timeout, n)
		}
	}
}

func TestInProcessSendsReportDeliveryWithSignedCallbacks(t *testing.T) {
	const token = "instance-webhook-token"
	rc := newReceiver(t, token)
	const delay = 200 * time.Millisecond
	sim := newSim(t, simulator.Config{Callbacks: simulator.Callbacks{
		Delay: delay, PublicURL: rc.url, AuthToken: token, AccountSID: "ACsim",
	}})
	start := time.Now()
	sends := []sms.Message{
		{IdempotencyKey: "b1:0", To: okNumber, Body: "hi", BatchID: "b1", Index: 0},
		{IdempotencyKey: "b1:1", To: "+15005550006", Body: "hi", BatchID: "b1", Index: 1},
		{IdempotencyKey: "b1:2", To: "+15005550008", Body: "hi", BatchID: "b1", Index: 2},
		{IdempotencyKey: "b1:0", To: okNumber, Body: "hi", BatchID: "b1", Index: 0}, // a duplicate: nothing sent again
		{IdempotencyKey: "k", To: okNumber, Body: "no batch, no callback"},
		{IdempotencyKey: "b1:3", To: "+15005550001", Body: "refused: never accepted", BatchID: "b1", Index: 3},
	}
	for _, m := range sends {
		_, _ = sim.Send(t.Context(), m)
	}
	rc.wait(3, 5*time.Second)
	time.Sleep(2 * delay) // anything more would have come by now
	got := rc.wait(3, time.Second)
	if len(got) != 3 {
		t.Fatalf("%d callbacks, want 3 (one per message accepted with a batch)", len(got))
	}
	want := map[string]struct{ status, code string }{
		"0": {"delivered", ""}, "1": {"undelivered", "30003"}, "2": {"failed", "30008"},
	}
	for _, r := range got {
		if !r.signed {
			t.Errorf("callback %v: the signature does not hold for the instance's token", r.query)
		}
		if r.at.Sub(start) < delay/2 {
			t.Errorf("callback after %s, want at least %s", r.at.Sub(start), delay/2)
		}
		m, err := twilio.ParseStatusCallback(r.query)
		if err != nil || m.BatchID != "b1" || m.SentAt.Before(start.Truncate(time.Millisecond)) {
			t.Errorf("callback URL names %+v (%v)", m, err)
		}
		w, ok := want[r.query.Get("i")]
		if !ok {
			t.Errorf("callback for index %s", r.query.Get("i"))
			continue
		}
		delete(want, r.query.Get("i"))
		if r.form.Get("MessageStatus") != w.status || r.form.Get("ErrorCode") != w.code {
			t.Errorf("index %s: status %q code %q, want %q %q", r.query.Get("i"), r.form.Get("MessageStatus"), r.form.Get("ErrorCode"), w.status, w.code)
		}
		if r.form.Get("AccountSid") != "ACsim" || r.form.Get("MessageSid") == "" || r.form.Get("To") == "" {
			t.Errorf("callback form %v lacks Twilio's fields", r.form)
		}
	}
	if st := sim.Stats(); st.Callbacks != 3 || st.CallbacksFailed != 0 {
		t.Errorf("stats: %d callbacks, %d failed; want 3, 0", st.Callbacks, st.CallbacksFailed)
	}
}

func TestServerReportsToTheRequestsStatusCallback(t *testing.T) {
	rc := newReceiver(t, testToken) // the server signs with the account's token
	h, _ := serve(t, simulator.Config{Callbacks: simulator.Callbacks{Delay: 50 * time.Millisecond}}, simulator.ServerConfig{})
	cb := twilio.StatusCallbackURL(rc.url, "b2", 7, time.Now())
	f := form("+15005550007", "hello")
	f.Set("StatusCallback", cb)
	if w, body := do(t, h, post{key: "b2:7", form: f}); w.Code != http.StatusCreated {
		t.Fatalf("create: %d %v", w.Code, body)
	}
	r := rc.wait(1, 5*time.Second)[0]
	if !r.signed {
		t.Error("the callback's signature does not hold for the account's token")
	}
	if r.query.Get("b") != "b2" || r.query.Get("i") != "7" {
		t.Errorf("callback went to %v, want the StatusCallback asked for", r.query)
	}
	if r.form.Get("MessageStatus") != "undelivered" || r.form.Get("ErrorCode") != "30005" || r.form.Get("AccountSid") != testSID {
		t.Errorf("callback form %v, want undelivered 30005 for %s", r.form, testSID)
	}

	f.Set("StatusCallback", "not a url")
	w, body := do(t, h, post{key: "b2:8", form: f})
	wantError(t, w, body, http.StatusBadRequest, 21609)
}

func TestInProcessReceiptsAreHandedOverTogether(t *testing.T) {
	rc := newReceiver(t, "tok") // must hear nothing: Deliver takes the receipts
	var mu sync.Mutex
	var calls [][]simulator.Receipt
	fail := true
	const delay = 100 * time.Millisecond
	sim := newSim(t, simulator.Config{Callbacks: simulator.Callbacks{
		Delay: delay, PublicURL: rc.url, AuthToken: "tok",
		Deliver: func(ctx context.Context, rs []simulator.Receipt) error {
			mu.Lock()
			defer mu.Unlock()
			if fail { // the first hand-over fails: counted, not tried again
				fail = false
				return errors.New("store unavailable")
			}
			calls = append(calls, rs)
			return nil
		},
	}})
	if _, err := sim.Send(t.Context(), sms.Message{IdempotencyKey: "w:0", To: okNumber, Body: "lost", BatchID: "w", Index: 0}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*delay + 2*simulator.DeliverEvery)
	start := time.Now()
	const n = 50
	for i := range n {
		to := okNumber
		if i == 7 {
			to = "+15005550006"
		}
		_, _ = sim.Send(t.Context(), sms.Message{IdempotencyKey: "b1:" + string(rune('A'+i)), To: to, Body: "hi", BatchID: "b1", Index: i})
	}
	_, _ = sim.Send(t.Context(), sms.Message{IdempotencyKey: "k", To: okNumber, Body: "no batch, no receipt"})
	time.Sleep(3*delay/2 + 3*simulator.DeliverEvery)
	mu.Lock()
	got := map[int]simulator.Receipt{}
	for _, rs := range calls {
		for _, r := range rs {
			if _, dup := got[r.Index]; dup || r.BatchID != "b1" {
				t.Errorf("receipt %+v handed over twice or not of b1", r)
			}
			got[r.Index] = r
		}
	}
	handovers := len(calls)
	mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d receipts handed over, want %d", len(got), n)
	}
	// The receipts come due over one delay (from half to one and a half
	// times it); handed over every DeliverEvery, they take a few calls, not
	// one each.
	if max := int(delay/simulator.DeliverEvery) + 3; handovers > max {
		t.Errorf("%d receipts in %d hand-overs, want at most %d", n, handovers, max)
	}
	for i, r := range got {
		if r.ProviderID == "" || r.SentAt.Before(start.Add(-time.Millisecond)) {
			t.Errorf("receipt %d: %+v", i, r)
		}
		if want := i != 7; r.Delivered != want || (r.Code == "30003") == want {
			t.Errorf("receipt %d: delivered %v code %q", i, r.Delivered, r.Code)
		}
	}
	if len(rc.got) != 0 {
		t.Errorf("%d status callbacks posted besides", len(rc.got))
	}
	if st := sim.Stats(); st.Callbacks != n || st.CallbacksFailed != 1 {
		t.Errorf("stats: %d receipts handed over, %d failed; want %d, 1", st.Callbacks, st.CallbacksFailed, n)
	}
}

func TestCloseDropsCallbacksNotSentYet(t *testing.T) {
	rc := newReceiver(t, "tok")
	sim, err := simulator.New(simulator.Config{OutboxPath: outboxPath(t), Callbacks: simulator.Callbacks{
		Delay: time.Hour, PublicURL: rc.url, AuthToken: "tok",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Send(t.Context(), sms.Message{IdempotencyKey: "b:0", To: okNumber, Body: "x", BatchID: "b"}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- sim.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a callback due in an hour")
	}
}

func TestCallbacksNeedATokenToSignWith(t *testing.T) {
	_, err := simulator.New(simulator.Config{OutboxPath: outboxPath(t), Callbacks: simulator.Callbacks{
		Delay: time.Second, PublicURL: "http://127.0.0.1:1",
	}})
	if err == nil {
		t.Fatal("callbacks without a token accepted")
	}
	if _, err := simulator.New(simulator.Config{OutboxPath: outboxPath(t), Callbacks: simulator.Callbacks{Delay: -1}}); err == nil {
		t.Fatal("a negative delay accepted")
	}
}
