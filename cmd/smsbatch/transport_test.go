package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

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
