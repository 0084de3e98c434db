package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/smsbatch/smsbatch/processors"
)

// natsConfig is a NATS transport configuration with slots work slots, in a
// namespace of the test's own on the test's NATS server.
func natsConfig(t *testing.T, slots int) Config {
	url := natsURL(t)
	return Config{
		NATSURL: url, NATSNamespace: natsNamespace(t, url),
		Slice: 2 * time.Second, SendTimeout: time.Second, NATSConcurrency: slots,
	}
}

// subscribeWork opens a transport on cfg, as an instance does, and subscribes
// it to the work topic until the test ends.
func subscribeWork(t *testing.T, cfg Config) (transport, <-chan *message.Message) {
	t.Helper()
	tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	return tr, msgs
}

// publishWork publishes a work message through tr and returns it.
func publishWork(t *testing.T, tr transport) *message.Message {
	t.Helper()
	m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	if err := tr.pub.Publish(processors.TopicWork, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// receiveAll acknowledges the work messages that come on msgs until every one
// in sent (by UUID) has come, and fails the test if some have not within d.
func receiveAll(t *testing.T, msgs <-chan *message.Message, sent map[string]bool, d time.Duration, what string) {
	t.Helper()
	total := len(sent)
	timeout := time.After(d)
	for len(sent) > 0 {
		select {
		case m := <-msgs:
			m.Ack()
			delete(sent, m.UUID)
		case <-timeout:
			t.Fatalf("%d of %d work messages %s within %s", len(sent), total, what, d)
		}
	}
}

// jetStream is a JetStream context on url, to look at the streams and
// consumers from outside.
func jetStream(t *testing.T, url string) nats.JetStreamContext {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// Work messages reach the instances that stay when the first instance to start
// stops: its subscription must not take the shared consumer away with it (it
// did, and the others, still listening, got no work message again).
func TestWorkReachesTheOthersAfterTheFirstInstanceStops(t *testing.T) {
	cfg := natsConfig(t, 4)
	first, _ := subscribeWork(t, cfg)
	second, msgs := subscribeWork(t, cfg)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	sent := map[string]bool{}
	for range 3 {
		sent[publishWork(t, second).UUID] = true
	}
	receiveAll(t, msgs, sent, 15*time.Second, "did not reach the instance that stayed")
}

// A work message goes to a free slot at once while the others hold messages
// whose slices run: it never waits behind one of them. (Push queue
// subscriptions handed each message to a subscription whether it was busy or
// not, and a batch's next slice waited seconds for another batch's to end.)
func TestWorkIsNotHeldBehindBusySlices(t *testing.T) {
	tr, msgs := subscribeWork(t, natsConfig(t, 8))
	receive := func(n, free int) []*message.Message {
		var got []*message.Message
		timeout := time.After(3 * time.Second)
		for len(got) < n {
			select {
			case m := <-msgs:
				got = append(got, m)
			case <-timeout:
				t.Fatalf("%d of %d work messages reached the instance within 3 s while %d of its 8 slots were free", len(got), n, free)
			}
		}
		return got
	}
	for range 6 {
		publishWork(t, tr)
	}
	busy := receive(6, 8) // six slices running, not acknowledged yet
	for range 2 {
		publishWork(t, tr)
	}
	for _, m := range receive(2, 2) {
		m.Ack()
	}
	for _, m := range busy {
		m.Ack()
	}
}

// A deployment whose work consumer an older version made (a push consumer,
// under the same name) keeps its waiting work messages when an instance of
// this version starts: the consumer is replaced by a pull consumer, and the
// messages wait in the stream for it.
func TestAnOlderPushConsumerIsReplacedWithoutLosingWork(t *testing.T) {
	cfg := natsConfig(t, 4)
	topic := cfg.NATSNamespace + processors.TopicWork
	js := jetStream(t, cfg.NATSURL)
	if _, err := js.AddStream(&nats.StreamConfig{Name: topic, Subjects: []string{topic}, Retention: nats.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddConsumer(topic, &nats.ConsumerConfig{
		Durable: durableName(topic), DeliverSubject: nats.NewInbox(), DeliverGroup: cfg.NATSNamespace + "smsbatch",
		AckPolicy: nats.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	waiting := watermill.NewUUID()
	msg := nats.NewMsg(topic)
	msg.Header.Set(wmnats.WatermillUUIDHdr, waiting)
	if _, err := js.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}

	_, msgs := subscribeWork(t, cfg)
	info, err := js.ConsumerInfo(topic, durableName(topic))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.DeliverSubject != "" {
		t.Fatalf("the work consumer still pushes to %s", info.Config.DeliverSubject)
	}
	select {
	case m := <-msgs:
		m.Ack()
		if m.UUID != waiting {
			t.Fatalf("got work message %s, want the one waiting, %s", m.UUID, waiting)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the work message waiting for the old consumer never reached the new one")
	}
}

// A work message whose handler finishes while the instance stops is
// acknowledged, not left to come back after the ack wait: stopping cancels the
// message's context, and the subscriber waits for the handler's answer.
func TestWorkHeldAtStopIsAcknowledged(t *testing.T) {
	cfg := natsConfig(t, 4)
	tr, msgs := subscribeWork(t, cfg)
	publishWork(t, tr)
	var m *message.Message
	select {
	case m = <-msgs:
	case <-time.After(10 * time.Second):
		t.Fatal("no work message")
	}
	go func() {
		<-m.Context().Done() // the slice sees the stop, hands on, returns
		time.Sleep(100 * time.Millisecond)
		m.Ack()
	}()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}

	topic := cfg.NATSNamespace + processors.TopicWork
	info, err := jetStream(t, cfg.NATSURL).ConsumerInfo(topic, durableName(topic))
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 {
		t.Fatalf("%d work messages unacknowledged after the stop: they would come back after the ack wait", info.NumAckPending)
	}
}

// Work messages an instance pulled but had not handed to its router when it
// stops go back to the stream for another instance within a second: left
// unacknowledged, each came back only after the ack wait (13 s here, 17 s by
// default), and its batch stood still that long at every rolling restart.
// (Refused at once, 4 runs in 20 saw one go to the stopped instance's last
// pull, which the server had not dropped yet: back after the ack wait too.)
func TestWorkNotHandedOutAtStopGoesBackAtOnce(t *testing.T) {
	cfg := natsConfig(t, 4)
	first, _ := subscribeWork(t, cfg) // its router never takes a message
	sent := map[string]bool{}
	for range 2 {
		sent[publishWork(t, first).UUID] = true
	}
	topic := cfg.NATSNamespace + processors.TopicWork
	js := jetStream(t, cfg.NATSURL)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		info, err := js.ConsumerInfo(topic, durableName(topic))
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 2 {
			break // both pulled, waiting for the router
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first instance holds %d of the 2 work messages, want both", info.NumAckPending)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	_, msgs := subscribeWork(t, cfg)
	// Well within the ack wait.
	receiveAll(t, msgs, sent, 5*time.Second, "the stopped instance held did not reach the next")
}

// Over NATS the copies of a chain's first work message are one message in the
// stream: the API publishes it, and so does the lifecycle handler of whichever
// instance takes the lifecycle message (which the forwarders of every instance
// publish, also as one). Each copy queued started a chain of its own that
// loaded the batch only to find the chain taken: with three instances, four a
// start.
func TestAChainStartIsQueuedOnceOverNATS(t *testing.T) {
	cfg := natsConfig(t, 4)
	tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	for range 3 {
		if err := processors.PublishWork(tr.pub, "b1", 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := processors.PublishWork(tr.pub, "b1", 7); err != nil { // a resume: a chain of its own
		t.Fatal(err)
	}
	js := jetStream(t, cfg.NATSURL)
	queued := func() uint64 {
		t.Helper()
		info, err := js.StreamInfo(cfg.NATSNamespace + processors.TopicWork)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	if n := queued(); n != 2 {
		t.Fatalf("the work stream holds %d messages, want 2: one a chain start", n)
	}

	// A copy that comes after the first was handled is dropped too (a
	// forwarder behind the others).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case m := <-msgs:
			m.Ack()
		case <-time.After(10 * time.Second):
			t.Fatal("the chain starts did not come")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for queued() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the acknowledged work messages stayed in the stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := processors.PublishWork(tr.pub, "b1", 3); err != nil {
		t.Fatal(err)
	}
	if n := queued(); n != 0 {
		t.Fatalf("a late copy of a chain start handled already was queued again (%d messages)", n)
	}
}

// TestAChainStartIsQueuedOnceInProcess: over the in-process transport, as over
// NATS, the copies of a chain start (the API's and the lifecycle handler's) are
// one work message, a resume's is another, and hand-ons all go through.
func TestAChainStartIsQueuedOnceInProcess(t *testing.T) {
	tr, err := openTransport(Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if tr.name != "gochannel" {
		t.Fatalf("transport %s without a NATS URL", tr.name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	go func() {
		for m := range msgs {
			got <- m.UUID
			m.Ack()
		}
	}()
	for range 3 {
		if err := processors.PublishWork(tr.pub, "b1", 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := processors.PublishWork(tr.pub, "b1", 7); err != nil { // a resume: a chain of its own
		t.Fatal(err)
	}
	for range 2 {
		if err := tr.pub.Publish(processors.TopicWork, message.NewMessage(watermill.NewUUID(), []byte(`{"batchId":"b1"}`))); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	for len(seen) < 4 {
		select {
		case id := <-got:
			seen[id]++
		case <-time.After(10 * time.Second):
			t.Fatalf("%d distinct work messages came, want 4", len(seen))
		}
	}
	select {
	case id := <-got:
		t.Fatalf("a fifth work message came (%s): a chain start was queued twice", id)
	case <-time.After(200 * time.Millisecond):
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("work message %s came %d times", id, n)
		}
	}
}

// Work messages that reach an instance as it stops (its last pull brings them
// in) reach the next instance within seconds, like the rest it had not handed
// out. Its pull was cancelled at the stop, and the client dropped unanswered
// what the server had sent to it by then: those came back only after the ack
// wait (13 s here, 17 s by default), and their batches stood still that long
// at a rolling restart (18 of 13,032 messages over 40 stops with a steady
// stream of work; here, where a pull's worth, 32, is sent to each of 8
// instances in turn as it stops, 6 to 32 at the first or second stop, 8 runs
// of 8).
func TestWorkArrivingAsAnInstanceStopsReachesTheNextWithinSeconds(t *testing.T) {
	cfg := natsConfig(t, 2*maxFetch) // every pull asks for maxFetch messages
	topic := cfg.NATSNamespace + processors.TopicWork
	js := jetStream(t, cfg.NATSURL)
	var mu sync.Mutex
	arrived := map[string]bool{}
	var sent []string // as the last instance stopped
	missing := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, id := range sent {
			if !arrived[id] {
				n++
			}
		}
		return n
	}
	var stopped time.Time
	const instances, limit = 8, 3 * time.Second
	for i := range instances + 1 {
		tr, msgs := subscribeWork(t, cfg)
		router := make(chan struct{})
		go func() { // takes every message and acknowledges it
			defer close(router)
			for m := range msgs {
				m.Ack()
				mu.Lock()
				arrived[m.UUID] = true
				mu.Unlock()
			}
		}()
		for n := missing(); n > 0; n = missing() {
			if time.Since(stopped) > limit {
				t.Fatalf("%d of the %d work messages sent as instance %d stopped had not reached the next %s after the stop (the ack wait is 13 s)", n, len(sent), i, limit)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if i == instances {
			break
		}

		// Stop the instance while the server sends a pull's worth to it.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			info, err := js.ConsumerInfo(topic, durableName(topic))
			if err != nil {
				t.Fatal(err)
			}
			if info.NumWaiting > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d never pulled", i+1)
			}
		}
		var acks []nats.PubAckFuture
		sent = sent[:0]
		for range maxFetch {
			id := watermill.NewUUID()
			msg := nats.NewMsg(topic)
			msg.Header.Set(wmnats.WatermillUUIDHdr, id)
			msg.Data = []byte(`{}`)
			ack, err := js.PublishMsgAsync(msg)
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, ack)
			sent = append(sent, id)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		stopped = time.Now()
		<-router
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(10 * time.Second):
			t.Fatal("the work messages were not stored")
		}
		for _, ack := range acks {
			select {
			case err := <-ack.Err():
				t.Fatal(err)
			default:
			}
		}
	}
}

// The consumers' ack wait follows the configuration of the instance that
// started last: a consumer made with a shorter slice kept its ack wait, and a
// deployment that lengthened --work-slice or --send-timeout had the messages
// of slices still running delivered again to another instance.
func TestTheConsumerAckWaitFollowsTheSlice(t *testing.T) {
	cfg := natsConfig(t, 4)
	js := jetStream(t, cfg.NATSURL)
	for _, slice := range []time.Duration{2 * time.Second, time.Minute, 2 * time.Second} {
		cfg.Slice = slice
		tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		for _, topic := range []string{processors.TopicWork, processors.TopicBatchEvents} {
			topic = cfg.NATSNamespace + topic
			info, err := js.ConsumerInfo(topic, durableName(topic))
			if err != nil {
				t.Fatal(err)
			}
			if want := slice + cfg.SendTimeout + 10*time.Second; info.Config.AckWait != want {
				t.Fatalf("the consumer of %s acknowledges within %s with a %s slice, want %s", topic, info.Config.AckWait, slice, want)
			}
		}
	}
}
