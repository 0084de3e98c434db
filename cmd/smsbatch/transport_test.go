package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/smsbatch/smsbatch/processors"
)

// Work messages reach the instances that stay when the first instance to start
// stops: its subscription must not take the shared consumer away with it (it
// did, and the others, still listening, got no work message again).
func TestWorkReachesTheOthersAfterTheFirstInstanceStops(t *testing.T) {
	url := natsURL(t)
	cfg := Config{
		NATSURL: url, NATSNamespace: natsNamespace(t, url),
		Slice: 2 * time.Second, SendTimeout: time.Second, NATSConcurrency: 4,
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() (transport, <-chan *message.Message) {
		tr, err := openTransport(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
		if err != nil {
			t.Fatal(err)
		}
		return tr, msgs
	}
	first, _ := open()
	second, msgs := open()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	sent := map[string]bool{}
	for range 3 {
		m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
		if err := second.pub.Publish(processors.TopicWork, m); err != nil {
			t.Fatal(err)
		}
		sent[m.UUID] = true
	}
	timeout := time.After(15 * time.Second)
	for len(sent) > 0 {
		select {
		case m := <-msgs:
			m.Ack()
			delete(sent, m.UUID)
		case <-timeout:
			t.Fatalf("%d of 3 work messages never reached the instance that stayed", len(sent))
		}
	}
}

// A work message goes to a free slot at once while the others hold messages
// whose slices run: it never waits behind one of them. (Push queue
// subscriptions handed each message to a subscription whether it was busy or
// not, and a batch's next slice waited seconds for another batch's to end.)
func TestWorkIsNotHeldBehindBusySlices(t *testing.T) {
	url := natsURL(t)
	cfg := Config{
		NATSURL: url, NATSNamespace: natsNamespace(t, url),
		Slice: 2 * time.Second, SendTimeout: time.Second, NATSConcurrency: 8,
	}
	tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		for range n {
			if err := tr.pub.Publish(processors.TopicWork, message.NewMessage(watermill.NewUUID(), []byte(`{}`))); err != nil {
				t.Fatal(err)
			}
		}
	}
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
	publish(6)
	busy := receive(6, 8) // six slices running, not acknowledged yet
	publish(2)
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
	url := natsURL(t)
	cfg := Config{
		NATSURL: url, NATSNamespace: natsNamespace(t, url),
		Slice: 2 * time.Second, SendTimeout: time.Second, NATSConcurrency: 4,
	}
	topic := cfg.NATSNamespace + processors.TopicWork
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: topic, Subjects: []string{topic}, Retention: nats.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	durable := natsNames{}.durable(topic)
	if _, err := js.AddConsumer(topic, &nats.ConsumerConfig{
		Durable: durable, DeliverSubject: nats.NewInbox(), DeliverGroup: cfg.NATSNamespace + "smsbatch",
		AckPolicy: nats.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	waiting := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	msg := nats.NewMsg(topic)
	msg.Header.Set(wmnats.WatermillUUIDHdr, waiting.UUID)
	if _, err := js.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}

	tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	info, err := js.ConsumerInfo(topic, durable)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.DeliverSubject != "" {
		t.Fatalf("the work consumer still pushes to %s", info.Config.DeliverSubject)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		m.Ack()
		if m.UUID != waiting.UUID {
			t.Fatalf("got work message %s, want the one waiting, %s", m.UUID, waiting.UUID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the work message waiting for the old consumer never reached the new one")
	}
}

// A work message whose handler finishes while the instance stops is
// acknowledged, not left to come back after the ack wait: stopping cancels the
// message's context, and the subscriber waits for the handler's answer.
func TestWorkHeldAtStopIsAcknowledged(t *testing.T) {
	url := natsURL(t)
	cfg := Config{
		NATSURL: url, NATSNamespace: natsNamespace(t, url),
		Slice: 2 * time.Second, SendTimeout: time.Second, NATSConcurrency: 4,
	}
	tr, err := openTransport(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := tr.sub.Subscribe(ctx, processors.TopicWork)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.pub.Publish(processors.TopicWork, message.NewMessage(watermill.NewUUID(), []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
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

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	topic := cfg.NATSNamespace + processors.TopicWork
	info, err := js.ConsumerInfo(topic, natsNames{}.durable(topic))
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 {
		t.Fatalf("%d work messages unacknowledged after the stop: they would come back after the ack wait", info.NumAckPending)
	}
}
