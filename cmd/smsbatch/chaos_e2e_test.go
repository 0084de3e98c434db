package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// The chaos scenario: several instances on PostgreSQL and NATS send batches of
// every kind (priorities, failing numbers, a validity, quiet hours, a
// schedule) to a provider that records every call and deduplicates nothing,
// fails some calls (429, 503, unknown errors, answers slower than the send
// timeout) and some numbers for good. Meanwhile instances are SIGKILLed,
// SIGTERMed and restarted, one joins late, and batches are paused, resumed,
// cancelled and retried through the API with Idempotency-Keys, each request
// sometimes repeated on another instance. At the end every guarantee is
// checked against the provider's calls, the stored events, the status and the
// recipients listing.

// chaosCall is one call the provider saw.
type chaosCall struct {
	Key, To  string
	Instance string // the host of the instance that called (from its StatusCallback)
	Start    time.Time
	End      time.Time
	Outcome  string // accepted, rate_limited, unavailable, unknown, permanent, abandoned
	SID      string
}

// chaosProvider speaks the Twilio Messages API and records every call.
type chaosProvider struct {
	mu        sync.Mutex
	rng       *mathrand.Rand
	calls     []chaosCall
	permanent map[string]int            // numbers refused for good, with their Twilio code
	unknown   map[string]bool           // numbers refused with a code nobody knows, every time (retryable)
	slow      time.Duration             // how long a slow answer takes (past the send timeout)
	latency   map[string]time.Duration  // batch -> latency of its calls, instead of a random one
	inflight  map[string]map[string]int // instance host -> batch -> calls being answered
	quiet     bool                      // no random failures (for the reductions)
	down      bool                      // an outage: every call answered 503 at once
}

func (p *chaosProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now().UTC()
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	c := chaosCall{Key: r.Header.Get("I-Twilio-Idempotency-Token"), To: r.PostForm.Get("To"), Start: start}
	if cb, err := url.Parse(r.PostForm.Get("StatusCallback")); err == nil {
		c.Instance = cb.Host
	}
	p.mu.Lock()
	roll := p.rng.Float64()
	latency := time.Duration(20+p.rng.IntN(280)) * time.Millisecond
	code, permanent := p.permanent[c.To]
	unknown := p.unknown[c.To]
	if p.quiet {
		roll = 1
	}
	down := p.down
	batch, _, _ := strings.Cut(c.Key, ":")
	if d, ok := p.latency[batch]; ok {
		latency = d
	}
	if p.inflight[c.Instance] == nil {
		p.inflight[c.Instance] = map[string]int{}
	}
	p.inflight[c.Instance][batch]++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inflight[c.Instance][batch]--
		p.mu.Unlock()
	}()
	record := func(outcome string) {
		c.End, c.Outcome = time.Now().UTC(), outcome
		p.mu.Lock()
		p.calls = append(p.calls, c)
		p.mu.Unlock()
	}
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-r.Context().Done():
			return false
		}
	}
	answer := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch {
	case down:
		record("unavailable")
		answer(http.StatusServiceUnavailable, map[string]any{"code": 20500, "message": "Internal Server Error", "status": 503})
		return
	case roll < 0.03:
		record("rate_limited")
		w.Header().Set("Retry-After", "1")
		answer(http.StatusTooManyRequests, map[string]any{"code": 20429, "message": "Too Many Requests", "status": 429})
		return
	case roll < 0.07:
		// Slower than the send timeout: the caller gives up first, and the
		// message is never taken.
		if !sleep(p.slow) {
			record("abandoned")
			return
		}
		record("unavailable")
		answer(http.StatusServiceUnavailable, map[string]any{"code": 20500, "message": "Internal Server Error", "status": 503})
		return
	}
	if !sleep(latency) {
		record("abandoned")
		return
	}
	switch {
	case permanent:
		record("permanent")
		answer(http.StatusBadRequest, map[string]any{"code": code, "message": "refused for good", "status": 400})
	case unknown || roll < 0.12:
		record("unknown")
		answer(http.StatusBadRequest, map[string]any{"code": 30099, "message": "something nobody documented", "status": 400})
	case roll < 0.17:
		record("unavailable")
		answer(http.StatusServiceUnavailable, map[string]any{"code": 20500, "message": "Internal Server Error", "status": 503})
	default:
		var b [16]byte
		rand.Read(b[:])
		c.SID = "SM" + hex.EncodeToString(b[:])
		record("accepted")
		answer(http.StatusCreated, map[string]any{"sid": c.SID, "status": "queued", "to": c.To})
	}
}

// busyWith returns the instances with calls of batch being answered.
func (p *chaosProvider) busyWith(batch string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var hosts []string
	for host, m := range p.inflight {
		if m[batch] > 0 {
			hosts = append(hosts, host)
		}
	}
	sort.Strings(hosts)
	return hosts
}

func (p *chaosProvider) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

func (p *chaosProvider) setLatency(batch string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency[batch] = d
}

func (p *chaosProvider) snapshot() []chaosCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// startChaosProvider serves a chaosProvider on a free port of its own.
func startChaosProvider(t testing.TB, seed uint64, slow time.Duration) (*chaosProvider, string) {
	t.Helper()
	p := &chaosProvider{rng: mathrand.New(mathrand.NewPCG(seed, 7)), permanent: map[string]int{}, unknown: map[string]bool{}, slow: slow,
		latency: map[string]time.Duration{}, inflight: map[string]map[string]int{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/2010-04-01/Accounts/ACtest/Messages.json", p)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p, l.Addr().String()
}

// chaosInstance is one `smsbatch serve` process (one life of it).
type chaosInstance struct {
	name string
	addr string
	proc *process
	up   bool
}

// signalled is an instance stopped by a signal, and when.
type signalled struct {
	host string
	sig  syscall.Signal
	at   time.Time
}

// chaosBatch is a batch the scenario follows.
type chaosBatch struct {
	id, kind   string
	n          int
	rate       float64
	phones     []string
	validUntil time.Time
	schedule   time.Time
	quietUntil time.Time       // the quiet window's end, for the numbers in quietFor
	quietFor   map[string]bool // numbers in their quiet hours at the start
	cancel     bool            // the scenario cancels it
	retryOf    string
}

// chaosAPI sends requests to the instances; it never ends the test on a
// network error (an instance may be dying).
type chaosAPI struct {
	t      *testing.T
	http   *http.Client
	mu     sync.Mutex
	errors []string // 5xx answers other than 503, and other surprises
}

func (a *chaosAPI) do(in *chaosInstance, method, path, key string, body any) (int, http.Header, []byte, error) {
	var sent []byte
	if body != nil {
		var err error
		if sent, err = json.Marshal(body); err != nil {
			a.t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, "http://"+in.addr+path, bytes.NewReader(sent))
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	checkOpenAPI(a.t, req, sent, resp, data)
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		a.mu.Lock()
		a.errors = append(a.errors, fmt.Sprintf("%s %s on %s: %d %s", method, path, in.name, resp.StatusCode, clip(data, 300)))
		a.mu.Unlock()
	}
	return resp.StatusCode, resp.Header, data, nil
}

func newKey() string {
	var b [12]byte
	rand.Read(b[:])
	return "chaos-" + hex.EncodeToString(b[:])
}

// TestChaosGuaranteesUnderFaults runs the chaos scenario once; its seed is
// logged, SMSBATCH_CHAOS_SEED replays its schedule (the machine's timing still
// differs). It runs only with SMSBATCH_CHAOS=1: about two minutes, 75 s of
// faults (SMSBATCH_CHAOS_SECONDS changes that), then the batches finish (the
// quiet-hours batch waits for its window, up to two minutes after the start).
func TestChaosGuaranteesUnderFaults(t *testing.T) {
	skipShort(t)
	if os.Getenv("SMSBATCH_CHAOS") == "" {
		t.Skip("set SMSBATCH_CHAOS=1 to run the chaos scenario (about three minutes)")
	}
	seed := chaosSeed(t)
	rng := mathrand.New(mathrand.NewPCG(seed, seed>>3))
	t.Logf("chaos seed %d (SMSBATCH_CHAOS_SEED replays it)", seed)
	began := time.Now()

	pgURL := pgtest.Database(t)
	nurl := natsURL(t)
	ns := natsNamespace(t, nurl)
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	const sendTimeout = 1500 * time.Millisecond
	prov, provAddr := startChaosProvider(t, seed, 2*sendTimeout)

	shared := []string{
		"--event-store", "postgres", "--event-store-url", pgURL, "--read-store", "postgres",
		"--nats-url", nurl, "--nats-namespace", ns,
		"--sms-provider", "http", "--sms-url", "http://" + provAddr, "--sms-account-sid", "ACtest",
		"--stall-timeout", "3s", "--send-timeout", sendTimeout.String(), "--max-attempts", "4",
		"--backoff-initial", "200ms", "--backoff-max", "2s", "--http-rate-limit", "0",
		"--breaker-probe-after", "2s", "--shutdown-timeout", "20s",
	}
	api := &chaosAPI{t: t, http: &http.Client{Timeout: 30 * time.Second}}
	var (
		instances []*chaosInstance
		stops     []signalled
		seq       int
	)
	start := func() *chaosInstance {
		seq++
		addr := freeAddr(t)
		in := &chaosInstance{name: fmt.Sprintf("i%d@%s", seq, addr), addr: addr}
		in.proc, _ = startBinary(t, t.TempDir(), addr, append(slices.Clone(shared), "--public-url", "http://"+addr)...)
		in.up = true
		instances = append(instances, in)
		t.Logf("%s started", in.name)
		return in
	}
	upList := func() []*chaosInstance {
		var out []*chaosInstance
		for _, in := range instances {
			if in.up {
				out = append(out, in)
			}
		}
		return out
	}
	pick := func() *chaosInstance { up := upList(); return up[rng.IntN(len(up))] }
	other := func(not *chaosInstance) *chaosInstance {
		up := upList()
		for range 10 {
			if in := up[rng.IntN(len(up))]; in != not {
				return in
			}
		}
		return up[0]
	}
	stop := func(in *chaosInstance, sig syscall.Signal) {
		at := time.Now().UTC()
		in.proc.cmd.Process.Signal(sig)
		if sig == syscall.SIGKILL {
			in.proc.wait(t, 10*time.Second)
		} else if err := in.proc.wait(t, 40*time.Second); err != nil {
			t.Errorf("%s after SIGTERM: %v", in.name, err)
		}
		in.up = false
		stops = append(stops, signalled{host: in.addr, sig: sig, at: at})
		t.Logf("%s %s at %s", sig, in.name, at.Format("15:04:05.000"))
	}
	for range 3 {
		start()
	}

	// The batches.
	var batches []*chaosBatch
	byID := map[string]*chaosBatch{}
	create := func(b *chaosBatch, options map[string]any) {
		rcps := make([]recipient, len(b.phones))
		for i, ph := range b.phones {
			rcps[i] = recipient{PhoneNumber: ph, Variables: map[string]string{"name": fmt.Sprint("Ada ", i)}}
		}
		body := map[string]any{"text": "Hello {{name}}, your code is ready", "recipients": rcps, "options": options}
		key := newKey()
		first := pick()
		code, _, data, err := api.do(first, "POST", "/api/batch", key, body)
		if err != nil || code != http.StatusCreated {
			t.Fatalf("create %s on %s: %d %s %v", b.kind, first.name, code, clip(data, 400), err)
		}
		var st status
		json.Unmarshal(data, &st)
		b.id, b.n = st.ID, len(b.phones)
		// The client did not hear the answer and sends the same request
		// again, to another instance.
		if rng.IntN(2) == 0 {
			again := other(first)
			code, hdr, data, err := api.do(again, "POST", "/api/batch", key, body)
			var st2 status
			json.Unmarshal(data, &st2)
			switch {
			case err != nil:
				t.Errorf("repeated create on %s: %v", again.name, err)
			case code == http.StatusConflict:
			case code != http.StatusCreated || st2.ID != b.id || hdr.Get("Idempotent-Replayed") != "true":
				t.Errorf("create of %s repeated with its key on %s: %d replayed=%q id %s, want 201 replayed %s", b.kind, again.name, code, hdr.Get("Idempotent-Replayed"), st2.ID, b.id)
			}
		}
		batches = append(batches, b)
		byID[b.id] = b
		t.Logf("batch %s: %s, %d recipients", b.id, b.kind, b.n)
	}
	us := func(from, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("+1415%03d%04d", 300+(from+i)/10000, (from+i)%10000)
		}
		return out
	}

	plain := &chaosBatch{kind: "high plain", rate: 8, phones: us(0, 240)}
	create(plain, map[string]any{"priority": "high"})

	failing := &chaosBatch{kind: "high with failing numbers", rate: 8, phones: us(1000, 160)}
	prov.mu.Lock()
	for i, ph := range failing.phones {
		switch i % 10 {
		case 3:
			prov.permanent[ph] = 21211
		case 7:
			prov.permanent[ph] = 21610
		case 5:
			prov.unknown[ph] = true
		}
	}
	prov.mu.Unlock()
	create(failing, map[string]any{"priority": "high"})

	create(&chaosBatch{kind: "normal plain", rate: 5, phones: us(2000, 200)}, map[string]any{"priority": "normal"})

	valid := &chaosBatch{kind: "normal with validity", rate: 5, phones: us(3000, 120), validUntil: time.Now().Add(15 * time.Second).UTC().Truncate(time.Second)}
	create(valid, map[string]any{"priority": "normal", "validUntil": valid.validUntil.Format(time.RFC3339)})

	// The quiet hours run on the recipients' clocks from 3 minutes ago to 2
	// minutes ahead, in a zone whose clocks do not change meanwhile: where they
	// fall back, the window would end at a clock time before its start, a
	// window of nearly a day that holds the London numbers too. Los Angeles
	// and New York change their clocks three hours apart.
	la, err := time.LoadLocation("America/Los_Angeles")
	if err != nil {
		t.Fatal(err)
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	quietZone, quietArea := la, "+1415"
	_, before := time.Now().Add(-5 * time.Minute).In(la).Zone()
	if _, after := time.Now().Add(5 * time.Minute).In(la).Zone(); before != after {
		quietZone, quietArea = ny, "+1212"
	}
	// quietUS is us in the quiet hours' zone.
	quietUS := func(from, n int) []string {
		out := us(from, n)
		for i := range out {
			out[i] = quietArea + strings.TrimPrefix(out[i], "+1415")
		}
		return out
	}
	nowThere := time.Now().In(quietZone)
	quietEnd := nowThere.Truncate(time.Minute).Add(2 * time.Minute)
	quiet := &chaosBatch{kind: "low with quiet hours", rate: 2, quietUntil: quietEnd.UTC(), quietFor: map[string]bool{}}
	for i, ph := range quietUS(4000, 20) {
		quiet.phones = append(quiet.phones, ph, fmt.Sprintf("+4420718388%02d", i))
		quiet.quietFor[ph] = true
	}
	create(quiet, map[string]any{"priority": "low", "quietHours": map[string]any{
		"start": nowThere.Add(-3 * time.Minute).Format("15:04"), "end": quietEnd.Format("15:04")}})

	sched := &chaosBatch{kind: "normal scheduled", rate: 5, phones: us(5000, 80), schedule: time.Now().Add(20 * time.Second).UTC().Truncate(time.Second)}
	create(sched, map[string]any{"priority": "normal", "scheduleTime": sched.schedule.Format(time.RFC3339)})

	cancelled := &chaosBatch{kind: "normal, cancelled", rate: 5, phones: us(6000, 150), cancel: true}
	create(cancelled, map[string]any{"priority": "normal"})

	pausedCancelled := &chaosBatch{kind: "low, paused then cancelled", rate: 2, phones: us(7000, 60), cancel: true}
	create(pausedCancelled, map[string]any{"priority": "low"})
	// Its calls take long, so that some are in flight when it is paused.
	prov.setLatency(pausedCancelled.id, sendTimeout*3/4)

	create(&chaosBatch{kind: "low plain", rate: 2, phones: us(8000, 80)}, map[string]any{"priority": "low"})

	// Every recipient waits for its quiet hours, which outlast the validity:
	// none is sent, every one ends skipped.
	expiring := &chaosBatch{kind: "normal, quiet past its validity", rate: 5, phones: quietUS(9000, 12),
		validUntil: time.Now().Add(25 * time.Second).UTC().Truncate(time.Second), quietUntil: quietEnd.UTC(), quietFor: map[string]bool{}}
	for _, ph := range expiring.phones {
		expiring.quietFor[ph] = true
	}
	create(expiring, map[string]any{"priority": "normal", "validUntil": expiring.validUntil.Format(time.RFC3339),
		"quietHours": map[string]any{"start": nowThere.Add(-3 * time.Minute).Format("15:04"), "end": quietEnd.Format("15:04")}})

	// Scheduled for later, then brought forward during the chaos.
	later := &chaosBatch{kind: "high, rescheduled sooner", rate: 8, phones: us(9500, 64), schedule: time.Now().Add(20 * time.Minute).UTC().Truncate(time.Second)}
	create(later, map[string]any{"priority": "high", "autoStart": false, "scheduleTime": later.schedule.Format(time.RFC3339)})

	// lifecycle sends a command with a key, sometimes twice (the client lost
	// the first answer), and returns the first answer's code.
	lifecycle := func(b *chaosBatch, action string) int {
		key := newKey()
		in := pick()
		path := "/api/v2/batch/" + b.id + "/" + action
		if rng.IntN(3) == 0 {
			// The same request on two instances at once: one runs it.
			code, ok := concurrently(t, api, in, other(in), path, key)
			t.Logf("%s %s on %s and at once on another: %d", action, b.id, in.name, code)
			if !ok {
				return 0
			}
			return code
		}
		code, _, data, err := api.do(in, "POST", path, key, nil)
		if err != nil {
			t.Logf("%s %s on %s: %v", action, b.id, in.name, err)
			return 0
		}
		t.Logf("%s %s on %s: %d", action, b.id, in.name, code)
		if rng.IntN(2) == 0 {
			again := other(in)
			code2, hdr, data2, err := api.do(again, "POST", path, key, nil)
			switch {
			case err != nil:
			case code2 == http.StatusConflict && code != http.StatusConflict:
				// still running elsewhere: a 409 with Retry-After
			case code2 != code || hdr.Get("Idempotent-Replayed") != "true" || !bytes.Equal(bytes.TrimSpace(data), bytes.TrimSpace(data2)):
				t.Errorf("%s of %s repeated with its key on %s: %d replayed=%q, first answer %d; bodies equal %v",
					action, b.id, again.name, code2, hdr.Get("Idempotent-Replayed"), code, bytes.Equal(bytes.TrimSpace(data), bytes.TrimSpace(data2)))
			}
		}
		return code
	}
	statusOf := func(b *chaosBatch) (status, bool) {
		for range 5 {
			in := pick()
			code, _, data, err := api.do(in, "GET", "/api/batch/"+b.id, "", nil)
			if err == nil && code == 200 {
				var st status
				json.Unmarshal(data, &st)
				return st, true
			}
			time.Sleep(200 * time.Millisecond)
		}
		return status{}, false
	}
	var retryKeys []string
	retryFailed := func(b *chaosBatch) {
		key := newKey()
		in := pick()
		path := "/api/v2/batch/" + b.id + "/retry-failed"
		code, _, data, err := api.do(in, "POST", path, key, nil)
		if err != nil || code != http.StatusCreated {
			t.Logf("retry-failed of %s on %s: %d %s %v", b.id, in.name, code, clip(data, 300), err)
			return
		}
		retryKeys = append(retryKeys, key)
		var st status
		json.Unmarshal(data, &st)
		again := other(in)
		code2, _, data2, err := api.do(again, "POST", path, key, nil)
		var st2 status
		json.Unmarshal(data2, &st2)
		if err == nil && code2 != http.StatusConflict && (code2 != http.StatusCreated || st2.ID != st.ID) {
			t.Errorf("retry-failed of %s repeated with its key on %s: %d %s, first made %s", b.id, again.name, code2, st2.ID, st.ID)
		}
		// The failed recipients' numbers, as the retry was made from them.
		var rs []string
		for _, r := range listRecipients(t, api, in, st.ID) {
			rs = append(rs, r.PhoneNumber)
		}
		nb := &chaosBatch{id: st.ID, kind: "retry of " + b.id, n: st.Progress.Total, rate: 8, phones: rs, retryOf: b.id}
		batches = append(batches, nb)
		byID[nb.id] = nb
		t.Logf("retry-failed of %s on %s made %s with %d recipients", b.id, in.name, nb.id, nb.n)
	}

	// The schedule of faults and commands.
	type planned struct {
		at   time.Time
		name string
		do   func()
	}
	var plan []planned
	after := func(d time.Duration, name string, do func()) {
		plan = append(plan, planned{time.Now().Add(d), name, do})
	}
	chaosFor := 75 * time.Second
	if v := os.Getenv("SMSBATCH_CHAOS_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		chaosFor = time.Duration(n) * time.Second
	}
	chaosEnd := time.Now().Add(chaosFor)
	after(time.Duration(6+rng.IntN(30))*time.Second, "cancel", func() { lifecycle(cancelled, "cancel") })
	after(time.Duration(6+rng.IntN(20))*time.Second, "pause, kill, cancel", func() {
		// The pause is taken by one instance while another has calls of the
		// batch at the provider; that one dies before they are answered.
		var victim *chaosInstance
		for range 50 {
			if busy := prov.busyWith(pausedCancelled.id); len(busy) > 0 {
				for _, in := range upList() {
					if in.addr == busy[0] {
						victim = in
					}
				}
			}
			if victim != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if victim == nil || len(upList()) < 2 {
			t.Logf("no calls of %s in flight", pausedCancelled.id)
			lifecycle(pausedCancelled, "pause")
			lifecycle(pausedCancelled, "cancel")
			return
		}
		pauser := other(victim)
		paused := make(chan int, 1)
		go func() {
			code, _, _, err := api.do(pauser, "POST", "/api/v2/batch/"+pausedCancelled.id+"/pause", newKey(), nil)
			if err != nil {
				code = 0
			}
			paused <- code
		}()
		time.Sleep(time.Duration(50+rng.IntN(150)) * time.Millisecond)
		t.Logf("calls of %s in flight on %v; pausing on %s", pausedCancelled.id, prov.busyWith(pausedCancelled.id), pauser.name)
		stop(victim, syscall.SIGKILL)
		after(time.Duration(500+rng.IntN(3000))*time.Millisecond, "restart", func() { start() })
		t.Logf("pause %s on %s: %d", pausedCancelled.id, pauser.name, <-paused)
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		lifecycle(pausedCancelled, "cancel")
	})
	after(time.Duration(20+rng.IntN(20))*time.Second, "late join", func() { start() })
	var reschedule func()
	reschedule = func() {
		at := time.Now().Add(time.Duration(3+rng.IntN(8)) * time.Second).UTC().Truncate(time.Second).Add(time.Second)
		key := newKey()
		body := map[string]any{"scheduleTime": at.Format(time.RFC3339)}
		in := pick()
		code, _, data, err := api.do(in, "POST", "/api/v2/batch/"+later.id+"/schedule", key, body)
		t.Logf("reschedule %s to %s on %s: %d %v", later.id, at.Format("15:04:05"), in.name, code, err)
		if err != nil {
			after(time.Second, "reschedule", reschedule) // the instance died under it
			return
		}
		if code != 200 {
			t.Errorf("reschedule of %s: %d %s", later.id, code, clip(data, 300))
			return
		}
		later.schedule = at
		if rng.IntN(2) == 0 {
			again := other(in)
			code2, hdr, _, err := api.do(again, "POST", "/api/v2/batch/"+later.id+"/schedule", key, body)
			if err == nil && code2 != 409 && (code2 != 200 || hdr.Get("Idempotent-Replayed") != "true") {
				t.Errorf("reschedule repeated with its key on %s: %d replayed=%q", again.name, code2, hdr.Get("Idempotent-Replayed"))
			}
		}
	}
	after(time.Duration(5+rng.IntN(30))*time.Second, "reschedule", reschedule)
	retried := false
	var paused []*chaosBatch
	// watch reads every batch's status and checks what must hold at any
	// moment: at most five pending, counts that only grow, a final status
	// that stays.
	seen := map[string]status{}
	watch := func() {
		for _, b := range batches {
			st, ok := statusOf(b)
			if !ok {
				continue
			}
			p, q := st.Progress, seen[b.id].Progress
			prev := seen[b.id].Status
			switch {
			case p.Total != b.n:
				t.Errorf("batch %s (%s): total %d, want %d", b.id, b.kind, p.Total, b.n)
			case p.Pending > 5:
				t.Errorf("batch %s (%s): %d pending, at most 5 may be", b.id, b.kind, p.Pending)
			case p.Pending+p.Completed+p.Failed+p.Skipped+p.Waiting > p.Total:
				t.Errorf("batch %s (%s): progress %+v adds up to more than the total", b.id, b.kind, p)
			case p.Completed < q.Completed || p.Failed < q.Failed || p.Skipped < q.Skipped:
				t.Errorf("batch %s (%s): progress went back from %+v to %+v", b.id, b.kind, q, p)
			case (prev == "completed" || prev == "cancelled" || prev == "failed") && st.Status != prev:
				t.Errorf("batch %s (%s): %s, then %s", b.id, b.kind, prev, st.Status)
			}
			seen[b.id] = st
		}
	}
	for time.Now().Before(chaosEnd) {
		time.Sleep(time.Duration(1000+rng.IntN(2500)) * time.Millisecond)
		now := time.Now()
		sort.Slice(plan, func(i, j int) bool { return plan[i].at.Before(plan[j].at) })
		for len(plan) > 0 && !plan[0].at.After(now) {
			p := plan[0]
			plan = plan[1:]
			p.do()
		}
		watch()
		if !retried {
			if st, ok := statusOf(failing); ok && st.Progress.Failed >= 4 {
				retryFailed(failing)
				retried = true
			}
		}
		switch r := rng.IntN(100); {
		case r < 25:
			if len(upList()) > 1 {
				// Mostly one with calls in flight.
				in := pick()
				if b := batches[rng.IntN(len(batches))]; rng.IntN(3) > 0 {
					for _, host := range prov.busyWith(b.id) {
						for _, up := range upList() {
							if up.addr == host {
								in = up
							}
						}
					}
				}
				stop(in, syscall.SIGKILL)
				after(time.Duration(500+rng.IntN(4000))*time.Millisecond, "restart", func() { start() })
			}
		case r < 40:
			if len(upList()) > 1 {
				stop(pick(), syscall.SIGTERM)
				start()
			}
		case r < 48:
			// PostgreSQL drops every connection of the instances.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := pgx.Connect(ctx, pgURL)
			if err == nil {
				var n int
				err = conn.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&n)
				conn.Close(ctx)
				t.Logf("terminated %d PostgreSQL connections", n)
			}
			cancel()
			if err != nil {
				t.Logf("terminating PostgreSQL connections: %v", err)
			}
		case r < 53:
			// The provider is down for a few seconds.
			prov.setDown(true)
			d := time.Duration(2000+rng.IntN(5000)) * time.Millisecond
			t.Logf("provider down for %s", d)
			after(d, "provider up", func() { prov.setDown(false); t.Logf("provider up") })
		case r < 80:
			var candidates []*chaosBatch
			for _, b := range batches {
				if !b.cancel && !slices.Contains(paused, b) {
					candidates = append(candidates, b)
				}
			}
			b := candidates[rng.IntN(len(candidates))]
			if lifecycle(b, "pause") == 200 {
				paused = append(paused, b)
				after(time.Duration(300+rng.IntN(4000))*time.Millisecond, "resume", func() {
					code := lifecycle(b, "resume")
					if code == 200 || code == 409 {
						paused = slices.DeleteFunc(paused, func(x *chaosBatch) bool { return x == b })
					}
				})
			}
		}
	}
	// Wind down: what is planned runs, every paused batch resumes, the
	// instances that are down come back.
	for len(plan) > 0 {
		sort.Slice(plan, func(i, j int) bool { return plan[i].at.Before(plan[j].at) })
		p := plan[0]
		plan = plan[1:]
		time.Sleep(time.Until(p.at))
		p.do()
	}
	for _, b := range slices.Clone(paused) {
		lifecycle(b, "resume")
	}
	prov.setDown(false)
	for len(upList()) < 3 {
		start()
	}
	if !retried {
		retryFailed(failing)
	}
	t.Logf("chaos over after %s; waiting for every batch to end", time.Since(began).Round(time.Second))

	// Every batch ends, and once the deadlines have passed none keeps a
	// message pending.
	final := map[string]status{}
	deadline := time.Now().Add(150 * time.Second)
	for _, b := range batches {
		for {
			st, ok := statusOf(b)
			if ok && (st.Status == "completed" || st.Status == "cancelled" || st.Status == "failed") && st.Progress.Pending == 0 {
				final[b.id] = st
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("batch %s (%s) is %s with %+v at the end", b.id, b.kind, st.Status, st.Progress)
				final[b.id] = st
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	t.Logf("every batch ended %s after the start", time.Since(began).Round(time.Second))
	time.Sleep(2 * time.Second) // late calls land
	calls := prov.snapshot()
	events := pgEvents(t, pgURL)
	verifyChaos(t, api, upList()[0], batches, final, calls, events, stops, retryKeys)
	api.mu.Lock()
	for _, e := range api.errors {
		t.Errorf("server error: %s", e)
	}
	api.mu.Unlock()
	t.Logf("scenario took %s; %d provider calls; stops: %d", time.Since(began).Round(time.Second), len(calls), len(stops))
}

// concurrently sends one POST with one Idempotency-Key to two instances at
// once. One of them runs it; the other answers with the first's recorded
// answer (Idempotent-Replayed) or 409 while it still runs. It returns the code
// of the one that ran, and whether both were answered.
func concurrently(t *testing.T, api *chaosAPI, a, b *chaosInstance, path, key string) (int, bool) {
	type answer struct {
		code int
		hdr  http.Header
		data []byte
		err  error
	}
	var got [2]answer
	var wg sync.WaitGroup
	for i, in := range []*chaosInstance{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, hdr, data, err := api.do(in, "POST", path, key, nil)
			got[i] = answer{code, hdr, data, err}
		}()
	}
	wg.Wait()
	if got[0].err != nil || got[1].err != nil {
		return 0, false
	}
	running := func(x answer) bool {
		return x.code == http.StatusConflict && strings.Contains(string(x.data), "still running")
	}
	replayed := func(x answer) bool { return x.hdr.Get("Idempotent-Replayed") == "true" }
	ran := -1
	for i, x := range got {
		if !running(x) && !replayed(x) {
			if ran >= 0 {
				t.Errorf("POST %s with one Idempotency-Key on two instances at once ran twice: %d %s and %d %s",
					path, got[0].code, clip(got[0].data, 200), got[1].code, clip(got[1].data, 200))
				return got[0].code, true
			}
			ran = i
		}
	}
	if ran < 0 {
		t.Errorf("POST %s with one Idempotency-Key on two instances at once: neither ran it: %d %s and %d %s",
			path, got[0].code, clip(got[0].data, 200), got[1].code, clip(got[1].data, 200))
		return 0, true
	}
	o := got[1-ran]
	if replayed(o) && (o.code != got[ran].code || !bytes.Equal(bytes.TrimSpace(o.data), bytes.TrimSpace(got[ran].data))) {
		t.Errorf("POST %s: replayed %d %s, the answer was %d %s", path, o.code, clip(o.data, 200), got[ran].code, clip(got[ran].data, 200))
	}
	return got[ran].code, true
}

// listRecipients pages through a batch's recipients listing.
func listRecipients(t *testing.T, api *chaosAPI, in *chaosInstance, id string) []chaosRecipient {
	t.Helper()
	var out []chaosRecipient
	cursor := ""
	for {
		path := "/api/batch/" + id + "/recipients?limit=1000"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		code, _, data, err := api.do(in, "GET", path, "", nil)
		if err != nil || code != 200 {
			t.Fatalf("recipients of %s: %d %s %v", id, code, clip(data, 300), err)
		}
		var page struct {
			Recipients []chaosRecipient `json:"recipients"`
			NextCursor string           `json:"nextCursor"`
		}
		if err := json.Unmarshal(data, &page); err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Recipients...)
		if page.NextCursor == "" {
			return out
		}
		cursor = page.NextCursor
	}
}

type chaosRecipient struct {
	Index             int    `json:"index"`
	PhoneNumber       string `json:"phoneNumber"`
	Status            string `json:"status"`
	Category          string `json:"category"`
	ProviderMessageID string `json:"providerMessageId"`
}

// batchHistory is what a batch's stream says.
type batchHistory struct {
	outcomes   map[int][]string // index -> outcome events (sent, failed, skipped:category)
	sentID     map[int]string   // index -> provider id recorded
	dispatched map[int]bool
	status     string
	barrier    []string // dispatches between a pause and its resume
	retries    int      // MessageAttemptFailed events
}

func historyOf(t *testing.T, events []eventstore.Event, id string) batchHistory {
	t.Helper()
	h := batchHistory{outcomes: map[int][]string{}, sentID: map[int]string{}, dispatched: map[int]bool{}, status: "pending"}
	paused := false
	for _, se := range events {
		if se.Stream != domain.BatchStream(id) {
			continue
		}
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			continue // BatchCreateAbandoned and the like
		}
		switch e := e.(type) {
		case domain.BatchStarted:
			h.status = "processing"
		case domain.BatchResumed:
			h.status, paused = "processing", false
		case domain.BatchPaused:
			h.status, paused = "paused", true
		case domain.BatchCompleted:
			h.status = "completed"
		case domain.BatchCancelled:
			h.status = "cancelled"
		case domain.BatchFailed:
			h.status = "failed"
		case domain.MessagesDispatched:
			for _, d := range e.Messages {
				h.dispatched[d.Index] = true
			}
			if paused {
				h.barrier = append(h.barrier, fmt.Sprintf("revision %d: %v", se.Revision, e.Messages))
			}
		case domain.MessageAttemptFailed:
			h.retries++
		case domain.MessageSent:
			h.outcomes[e.Index] = append(h.outcomes[e.Index], "sent")
			h.sentID[e.Index] = e.ProviderID
		case domain.MessageFailed:
			h.outcomes[e.Index] = append(h.outcomes[e.Index], "failed")
		case domain.MessageSkipped:
			h.outcomes[e.Index] = append(h.outcomes[e.Index], "skipped")
		}
	}
	return h
}

func verifyChaos(t *testing.T, api *chaosAPI, in *chaosInstance, batches []*chaosBatch, final map[string]status,
	calls []chaosCall, events []eventstore.Event, stops []signalled, retryKeys []string) {
	t.Helper()
	byBatch := map[string][]chaosCall{}
	for _, c := range calls {
		id, _, _ := strings.Cut(c.Key, ":")
		byBatch[id] = append(byBatch[id], c)
	}
	killedAt := func(host string) (time.Time, bool) {
		for _, s := range stops {
			if s.host == host && s.sig == syscall.SIGKILL {
				return s.at, true
			}
		}
		return time.Time{}, false
	}
	// The one documented duplicate: the call was in flight on an instance at
	// its SIGKILL (or answered just before it, and the answer died with it).
	inFlightAtKill := func(c chaosCall) bool {
		k, ok := killedAt(c.Instance)
		return ok && !c.Start.After(k.Add(time.Second)) && !c.End.Before(k.Add(-answerRecordedWithin))
	}
	retries := map[string]int{}
	for _, b := range batches {
		if b.retryOf != "" {
			retries[b.retryOf]++
		}
	}
	for _, b := range batches {
		h := historyOf(t, events, b.id)
		st := final[b.id]
		cs := byBatch[b.id]
		sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
		tag := fmt.Sprintf("batch %s (%s, %s)", b.id, b.kind, h.status)

		// The provider: no message taken twice but in flight at a SIGKILL,
		// no two calls of one message at once, at most five calls at once,
		// the rate in every second.
		accepted := map[string][]chaosCall{}
		byKey := map[string][]chaosCall{}
		for _, c := range cs {
			byKey[c.Key] = append(byKey[c.Key], c)
			if c.Outcome == "accepted" {
				accepted[c.Key] = append(accepted[c.Key], c)
			}
		}
		recordedIDs := map[string]bool{}
		for _, id := range h.sentID {
			recordedIDs[id] = true
		}
		for key, as := range accepted {
			if len(as) < 2 {
				continue
			}
			for _, c := range as[:len(as)-1] {
				if recordedIDs[c.SID] || !inFlightAtKill(c) {
					t.Errorf("%s: %s accepted %d times by the provider; call %s..%s from %s (recorded %v) was not in flight at a SIGKILL of its instance; all: %s",
						tag, key, len(as), c.Start.Format("15:04:05.000"), c.End.Format("15:04:05.000"), c.Instance, recordedIDs[c.SID], describeCalls(byKey[key]))
				}
			}
		}
		for key, kc := range byKey {
			for i := 1; i < len(kc); i++ {
				if kc[i].Start.Before(kc[i-1].End) {
					t.Errorf("%s: two calls of %s at once: %s", tag, key, describeCalls(kc))
					break
				}
			}
		}
		peak, n := 0, 0
		type edge struct {
			at time.Time
			d  int
		}
		var edges []edge
		var starts []time.Time
		for _, c := range cs {
			edges = append(edges, edge{c.Start, 1}, edge{c.End, -1})
			starts = append(starts, c.Start)
		}
		sort.Slice(edges, func(i, j int) bool {
			if edges[i].at.Equal(edges[j].at) {
				return edges[i].d < edges[j].d
			}
			return edges[i].at.Before(edges[j].at)
		})
		for _, e := range edges {
			n += e.d
			peak = max(peak, n)
		}
		if peak > 5 {
			t.Errorf("%s: %d calls at the provider at once, want at most 5", tag, peak)
		}
		if busiest := maxInWindow(starts, time.Second-60*time.Millisecond); busiest > int(b.rate) {
			t.Errorf("%s: %d calls within one second at %v/s; %s", tag, busiest, b.rate, busiestWindow(cs, time.Second-60*time.Millisecond))
		}
		// What the batch's options promise at the provider.
		for _, c := range cs {
			if !b.validUntil.IsZero() && c.Start.After(b.validUntil.Add(50*time.Millisecond)) {
				t.Errorf("%s: call of %s at %s, after the validity %s", tag, c.Key, c.Start.Format("15:04:05.000"), b.validUntil.Format("15:04:05"))
			}
			if !b.schedule.IsZero() && c.Start.Before(b.schedule) {
				t.Errorf("%s: call of %s at %s, before the schedule %s", tag, c.Key, c.Start.Format("15:04:05.000"), b.schedule.Format("15:04:05"))
			}
			if b.quietFor[c.To] && c.Start.Before(b.quietUntil) {
				t.Errorf("%s: call to %s at %s, in its quiet hours (until %s)", tag, c.To, c.Start.Format("15:04:05.000"), b.quietUntil.Format("15:04:05"))
			}
		}

		// The events: one outcome at most per recipient, exactly one for a
		// completed batch's and for every message a stopped batch dispatched;
		// no dispatch while paused; every recorded send was taken.
		for _, d := range h.barrier {
			t.Errorf("%s: dispatched while paused: %s", tag, d)
		}
		counts := map[string]int{}
		for i, got := range h.outcomes {
			if len(got) != 1 {
				t.Errorf("%s: recipient %d has outcomes %v", tag, i, got)
			}
			counts[got[0]]++
		}
		switch h.status {
		case "completed":
			if len(h.outcomes) != b.n {
				t.Errorf("%s: %d of %d recipients have an outcome", tag, len(h.outcomes), b.n)
			}
		case "cancelled", "failed":
			for i := range h.dispatched {
				if len(h.outcomes[i]) == 0 {
					t.Errorf("%s: recipient %d was dispatched and has no outcome", tag, i)
				}
			}
		default:
			t.Errorf("%s: not finished", tag)
		}
		if b.cancel != (h.status == "cancelled") {
			t.Errorf("%s: cancelled by the scenario %v", tag, b.cancel)
		}
		for i, id := range h.sentID {
			found := false
			for _, c := range accepted[b.id+":"+strconv.Itoa(i)] {
				found = found || c.SID == id
			}
			if !found {
				t.Errorf("%s: recipient %d recorded sent as %q, which the provider never gave", tag, i, id)
			}
		}
		for key, as := range accepted {
			i, _ := strconv.Atoi(key[strings.IndexByte(key, ':')+1:])
			if got := h.outcomes[i]; len(got) == 1 && got[0] != "sent" {
				explained := false
				for _, c := range as {
					explained = explained || inFlightAtKill(c)
				}
				if !explained {
					t.Errorf("%s: %s taken by the provider but recorded %s: %s", tag, key, got[0], describeCalls(byKey[key]))
				}
			}
		}

		// What users read: the status and the recipients listing agree with
		// the events.
		p := st.Progress
		if p.Total != b.n || p.Completed != counts["sent"] || p.Failed != counts["failed"] || p.Skipped != counts["skipped"] || p.Pending != 0 || p.Waiting != 0 || st.Status != h.status {
			t.Errorf("%s: status %s %+v; the events say %s, %d sent, %d failed, %d skipped of %d, none pending",
				tag, st.Status, p, h.status, counts["sent"], counts["failed"], counts["skipped"], b.n)
		}
		var an struct {
			Totals struct {
				Sent, Failed, Retries int
			} `json:"totals"`
			ErrorCategories map[string]int `json:"errorCategories"`
			Throughput      []struct {
				Sent, Failed int
			} `json:"throughput"`
		}
		if code, _, data, err := api.do(in, "GET", "/api/batch/"+b.id+"/analytics", "", nil); err != nil || code != 200 {
			t.Errorf("%s: analytics: %d %v", tag, code, err)
		} else if err := json.Unmarshal(data, &an); err != nil {
			t.Errorf("%s: analytics: %v", tag, err)
		} else {
			byCategory, tpSent, tpFailed := 0, 0, 0
			for _, n := range an.ErrorCategories {
				byCategory += n
			}
			for _, p := range an.Throughput {
				tpSent += p.Sent
				tpFailed += p.Failed
			}
			if an.Totals.Sent != counts["sent"] || an.Totals.Failed != counts["failed"] || an.Totals.Retries != h.retries ||
				byCategory != counts["failed"]+counts["skipped"] || tpSent != counts["sent"] || tpFailed != counts["failed"] {
				t.Errorf("%s: analytics totals %+v, %d failed or skipped by category, throughput %d sent %d failed; the events: %d sent, %d failed, %d skipped, %d retried attempts",
					tag, an.Totals, byCategory, tpSent, tpFailed, counts["sent"], counts["failed"], counts["skipped"], h.retries)
			}
		}
		rs := listRecipients(t, api, in, b.id)
		listed := map[string]int{}
		for _, r := range rs {
			listed[r.Status]++
			want := "unsent"
			if got := h.outcomes[r.Index]; len(got) > 0 {
				want = got[0]
			} else if h.dispatched[r.Index] {
				want = "pending"
			}
			if r.Status != want {
				t.Errorf("%s: recipient %d listed %s, the events say %s", tag, r.Index, r.Status, want)
			}
			if r.Status == "sent" && r.ProviderMessageID != h.sentID[r.Index] {
				t.Errorf("%s: recipient %d listed with provider id %q, recorded %q", tag, r.Index, r.ProviderMessageID, h.sentID[r.Index])
			}
			if len(b.phones) == b.n && r.Index < len(b.phones) && r.PhoneNumber != b.phones[r.Index] {
				t.Errorf("%s: recipient %d listed as %s, created as %s", tag, r.Index, r.PhoneNumber, b.phones[r.Index])
			}
		}
		if len(rs) != b.n {
			t.Errorf("%s: %d recipients listed, want %d", tag, len(rs), b.n)
		}
		t.Logf("%s: %d calls (%d accepted keys), peak %d, busiest second %d; events %v; status %+v; listed %v",
			tag, len(cs), len(accepted), peak, maxInWindow(starts, time.Second-60*time.Millisecond), counts, p, listed)
	}
	// One retry batch per Idempotency-Key, none other.
	for orig, n := range retries {
		made := 0
		for _, se := range events {
			if se.Type != domain.TypeBatchCreated {
				continue
			}
			var c domain.BatchCreated
			if json.Unmarshal(se.Data, &c) == nil && c.RetryOf == orig {
				made++
			}
		}
		if made != n {
			t.Errorf("batch %s: %d retry batches stored, %d made through the API (keys %v)", orig, made, n, retryKeys)
		}
	}
}

func describeCalls(cs []chaosCall) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("[%s..%s %s from %s %s]", c.Start.Format("15:04:05.000"), c.End.Format("15:04:05.000"), c.Outcome, c.Instance, c.SID))
	}
	return strings.Join(parts, " ")
}

func busiestWindow(cs []chaosCall, w time.Duration) string {
	best, at := 0, 0
	for i := range cs {
		n := 0
		for j := i; j < len(cs) && cs[j].Start.Sub(cs[i].Start) < w; j++ {
			n++
		}
		if n > best {
			best, at = n, i
		}
	}
	var parts []string
	for j := at; j < len(cs) && j < at+best; j++ {
		parts = append(parts, fmt.Sprintf("%s %s %s from %s", cs[j].Start.Format("15:04:05.000"), cs[j].Key[strings.IndexByte(cs[j].Key, ':'):], cs[j].Outcome, cs[j].Instance))
	}
	return "the window: " + strings.Join(parts, "; ")
}
