package main

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// liveProgress is what a WebSocket status message says of a batch.
type liveProgress struct {
	Status                 string
	Total, Completed       int
	Delivered, Undelivered int
	// Held is the reason of the batch's hold; "" while it sends.
	Held string
}

// dialAll opens the WebSocket that follows every batch of c's tenant, closed
// when the test ends.
func dialAll(t *testing.T, c *client) *websocket.Conn {
	t.Helper()
	header := http.Header{"Authorization": {"Bearer " + c.key}}
	conn, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(c.base, "http")+"/api/ws", header)
	if err != nil {
		t.Fatalf("websocket: %v (%v)", err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// followProgress follows every batch of c's tenant over the WebSocket and
// returns a function giving the status messages of one batch so far.
func followProgress(t *testing.T, c *client) func(id string) []liveProgress {
	t.Helper()
	conn := dialAll(t, c)
	var mu sync.Mutex
	seen := map[string][]liveProgress{}
	go func() {
		for {
			var msg struct {
				Type  string `json:"type"`
				Batch struct {
					ID       string `json:"id"`
					Status   string `json:"status"`
					Progress struct {
						Total, Completed, Delivered, Undelivered int
					} `json:"progress"`
					Hold *struct {
						Reason string `json:"reason"`
					} `json:"hold"`
				} `json:"batch"`
			}
			if err := conn.ReadJSON(&msg); err != nil {
				return
			}
			if msg.Type != "batch.status" {
				continue
			}
			p := msg.Batch.Progress
			lp := liveProgress{Status: msg.Batch.Status, Total: p.Total, Completed: p.Completed, Delivered: p.Delivered, Undelivered: p.Undelivered}
			if msg.Batch.Hold != nil {
				lp.Held = msg.Batch.Hold.Reason
			}
			mu.Lock()
			seen[msg.Batch.ID] = append(seen[msg.Batch.ID], lp)
			mu.Unlock()
		}
	}()
	return func(id string) []liveProgress {
		mu.Lock()
		defer mu.Unlock()
		return append([]liveProgress(nil), seen[id]...)
	}
}

// waitLive waits until a status message of the batch satisfies ok.
func waitLive(t *testing.T, seen func(string) []liveProgress, id string, timeout time.Duration, ok func(liveProgress) bool) []liveProgress {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := seen(id)
		for _, m := range msgs {
			if ok(m) {
				return msgs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no WebSocket status of %s as wanted within %s; saw %+v", id, timeout, msgs)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitReceipts waits until every sent message of the batch has its delivery
// receipt.
func (c *client) waitReceipts(id string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var st struct {
			Progress struct{ Completed, Delivered, Undelivered int }
		}
		c.do("GET", "/api/batch/"+id, nil, &st)
		if p := st.Progress; p.Completed > 0 && p.Delivered+p.Undelivered == p.Completed {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("batch %s: receipts %+v after %s, want one per sent message", id, st.Progress, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// receiptBatch is a batch of n recipients of which the last two are the
// simulator's undelivered numbers (given).
func receiptBatch(n int, undelivered ...string) map[string]any {
	rcps := recipients(n - len(undelivered))
	for _, u := range undelivered {
		rcps = append(rcps, recipient{PhoneNumber: u, Variables: map[string]string{"name": "Unlucky"}})
	}
	return batchBody(rcps, "high")
}

type analytics struct {
	Totals struct {
		Sent, Delivered, Undelivered int
	} `json:"totals"`
	DeliveryRate      float64 `json:"deliveryRate"`
	DeliveryLatencyMs struct {
		P50, P99 float64
	} `json:"deliveryLatencyMs"`
}

// The embedded default: the built-in simulator reports delivery to the
// instance's own webhook, and the receipts reach the status and the WebSocket
// after the batch completed.
func TestDeliveryReceiptsReachStatusAndWebSocketAfterCompletion(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	// Receipts from 1.5 s to 4.5 s after each send: a batch of 8 at 8/s is done
	// before the first.
	cfg.SimReceiptDelay = 3 * time.Second
	c := startMain(t, cfg)
	seen := followProgress(t, c)

	st := c.create(receiptBatch(8, "+15005550006", "+15005550008"))
	done := c.waitStatus(st.ID, 30*time.Second, "completed")
	if done.Progress.Completed != 8 {
		t.Fatalf("completed with %+v, want 8 sent", done.Progress)
	}
	msgs := waitLive(t, seen, st.ID, 20*time.Second, func(p liveProgress) bool {
		return p.Status == "completed" && p.Delivered == 6 && p.Undelivered == 2
	})
	var firstCompleted *liveProgress
	for i := range msgs {
		if msgs[i].Status == "completed" {
			firstCompleted = &msgs[i]
			break
		}
	}
	if firstCompleted == nil || firstCompleted.Delivered+firstCompleted.Undelivered >= 8 {
		t.Fatalf("the receipts did not come after the completion: %+v", msgs)
	}

	var got struct {
		Status   string
		Progress struct{ Completed, Delivered, Undelivered int }
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID, nil, &got); code != 200 || got.Status != "completed" ||
		got.Progress.Delivered != 6 || got.Progress.Undelivered != 2 || got.Progress.Completed != 8 {
		t.Fatalf("status after the receipts: %d %+v", code, got)
	}
	var a analytics
	c.do("GET", "/api/batch/"+st.ID+"/analytics", nil, &a)
	if a.Totals.Delivered != 6 || a.Totals.Undelivered != 2 || a.DeliveryRate != 0.75 ||
		a.DeliveryLatencyMs.P50 < 1400 || a.DeliveryLatencyMs.P99 > 6000 {
		t.Fatalf("analytics %+v, want 6 of 8 delivered 1.5 to 4.5 s after their send", a)
	}
}

// The standalone simulator sends signed callbacks to the StatusCallback the
// http provider asked for; the instance checks them against its public URL.
// Inbound keywords signed the same way change the tenant's opt-out list; a
// forged callback is refused.
func TestStandaloneSimulatorReceiptsAndInboundKeywords(t *testing.T) {
	skipShort(t)
	const token = "sim-secret-token-0123456789"
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", token)
	simDir, simAddr := t.TempDir(), freeAddr(t)
	startProcess(t, "simulator", "simulator", "--addr", simAddr, "--data-dir", simDir,
		"--sms-account-sid", "ACtest", "--sim-latency", "20ms", "--sim-receipt-delay", "300ms", "--log-level", "warn")
	waitListening(t, simAddr)

	cfg := testConfig(t)
	cfg.Addr = freeAddr(t)
	cfg.PublicURL = "http://" + cfg.Addr
	cfg.SMSProvider, cfg.SMSURL, cfg.SMSAccountSID, cfg.SMSAuthToken = "http", "http://"+simAddr, "ACtest", token
	cfg.InboundNumbers = "+15551230000=acme"
	c := startMain(t, cfg)

	st := c.create(receiptBatch(4, "+15005550007"))
	c.waitStatus(st.ID, 30*time.Second, "completed")
	deadline := time.Now().Add(20 * time.Second)
	var got struct {
		Progress struct{ Delivered, Undelivered int }
	}
	for {
		c.do("GET", "/api/batch/"+st.ID, nil, &got)
		if got.Progress.Delivered == 3 && got.Progress.Undelivered == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("receipts from the standalone simulator: %+v, want 3 delivered, 1 undelivered", got.Progress)
		}
		time.Sleep(50 * time.Millisecond)
	}

	post := func(path string, form url.Values, sig string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set(twilio.SignatureHeader, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// A forged receipt for message 0 (signed with another token): refused.
	path := twilio.StatusCallbackURL("", st.ID, 0, time.Now())
	forged := url.Values{"MessageSid": {"SMx"}, "MessageStatus": {"undelivered"}, "ErrorCode": {"30003"}}
	if code := post(path, forged, twilio.Signature("not-the-token", cfg.PublicURL+path, forged)); code != http.StatusForbidden {
		t.Fatalf("forged receipt: %d, want 403", code)
	}
	var after struct {
		Progress struct{ Delivered, Undelivered int }
	}
	c.do("GET", "/api/batch/"+st.ID, nil, &after)
	if after.Progress != got.Progress {
		t.Fatalf("progress moved after a forged receipt: %+v -> %+v", got.Progress, after.Progress)
	}

	stop := url.Values{"From": {"+14155550123"}, "To": {"+15551230000"}, "Body": {"STOP"}, "MessageSid": {"SMin1"}}
	if code := post(twilio.InboundPath, stop, twilio.Signature(token, cfg.PublicURL+twilio.InboundPath, stop)); code != http.StatusOK {
		t.Fatalf("inbound STOP: %d", code)
	}
	var list struct {
		OptOuts []struct{ PhoneNumber, Source string }
		Total   int
	}
	if code, _ := c.do("GET", "/api/optouts", nil, &list); code != 200 || list.Total != 1 ||
		list.OptOuts[0].PhoneNumber != "+14155550123" || list.OptOuts[0].Source != "keyword" {
		t.Fatalf("opt-outs after STOP: %d %+v", code, list)
	}
	if code, _ := c.as(otherKey).do("GET", "/api/optouts", nil, &list); code != 200 || list.Total != 0 {
		t.Fatalf("the other tenant's list: %+v", list)
	}
}

func TestInboundNumberSettings(t *testing.T) {
	m, err := parseInboundNumbers(" +15551230000=acme, +15551230001 = globex ,")
	if err != nil || len(m) != 2 || m["+15551230000"] != "acme" || m["+15551230001"] != "globex" {
		t.Fatalf("parsed %v, %v", m, err)
	}
	for _, bad := range []string{"15551230000=acme", "+15551230000", "+15551230000=", "+1555abc=acme", "+0555=acme",
		"+15551230000=acme,+15551230000=globex"} {
		if _, err := parseInboundNumbers(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	env := map[string]string{"SMSBATCH_INBOUND_NUMBERS": "+15551230000=acme", "SMSBATCH_SMS_PROVIDER": "http",
		"SMSBATCH_SMS_URL": "https://api.twilio.com", "SMSBATCH_SMS_ACCOUNT_SID": "AC1", "SMSBATCH_SMS_AUTH_TOKEN": "t"}
	if _, err := ParseConfig(nil, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "--public-url") {
		t.Fatalf("inbound numbers without a public URL: %v", err)
	}
	env["SMSBATCH_PUBLIC_URL"] = "https://sms.example.com"
	if _, err := ParseConfig(nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	env["SMSBATCH_PUBLIC_URL"] = "sms.example.com"
	if _, err := ParseConfig(nil, func(k string) string { return env[k] }); err == nil {
		t.Fatal("a public URL without a scheme accepted")
	}
}

// STOP during a campaign: the number replies STOP while its batch is sending, and
// is never sent afterwards; its message ends skipped (opted_out), not failed. A
// number on the list before the create is skipped the same way.
func TestStopDuringACampaignStopsFurtherSends(t *testing.T) {
	skipShort(t)
	const token = "sim-secret-token-0123456789"
	cfg := testConfig(t)
	cfg.Addr = freeAddr(t)
	cfg.PublicURL = "http://" + cfg.Addr
	cfg.SMSAuthToken = token
	cfg.InboundNumbers = "+15551230000=acme"
	c := startMain(t, cfg)

	rcps := recipients(12)
	before, during := rcps[3].PhoneNumber, rcps[10].PhoneNumber
	if code, _ := c.do("POST", "/api/optouts", map[string]string{"phoneNumber": before}, nil); code != http.StatusCreated {
		t.Fatalf("add %s to the opt-out list: %d", before, code)
	}
	st := c.create(batchBody(rcps, "low")) // 2/s: 6 s for all
	deadline := time.Now().Add(10 * time.Second)
	for c.status(st.ID).Progress.Completed < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the batch did not start sending")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop := url.Values{"From": {during}, "To": {"+15551230000"}, "Body": {" stop "}, "MessageSid": {"SMstop1"}}
	req, _ := http.NewRequest("POST", c.base+twilio.InboundPath, strings.NewReader(stop.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(twilio.SignatureHeader, twilio.Signature(c.main.Config.SMSAuthToken, cfg.PublicURL+twilio.InboundPath, stop))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("inbound STOP: %d", resp.StatusCode)
	}

	done := c.waitStatus(st.ID, 30*time.Second, "completed")
	if done.Progress.Skipped != 2 || done.Progress.Completed != 10 || done.Progress.Failed != 0 {
		t.Fatalf("progress %+v, want 10 sent and the 2 opted-out numbers skipped", done.Progress)
	}
	for key, e := range outbox(t, cfg.DataDir, st.ID) {
		if e.To == before || e.To == during {
			t.Fatalf("%s (%s) was sent although it opted out", key, e.To)
		}
	}
	var errs struct {
		Errors []struct{ PhoneNumber, Category string }
	}
	c.do("GET", "/api/batch/"+st.ID+"/errors?category=opted_out", nil, &errs)
	if len(errs.Errors) != 2 {
		t.Fatalf("errors?category=opted_out: %+v, want both numbers", errs.Errors)
	}
}
