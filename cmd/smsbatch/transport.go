package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"

	"github.com/smsbatch/smsbatch/processors"
)

// transport is the Watermill publisher and subscriber the processor runs on.
type transport struct {
	pub    message.Publisher
	sub    message.Subscriber
	closer func() error
	name   string
}

func (t transport) Close() error {
	if t.closer == nil {
		return nil
	}
	return t.closer()
}

// keptOpen is a subscriber whose Close leaves it open; the transport closes it.
type keptOpen struct{ message.Subscriber }

func (keptOpen) Close() error { return nil }

// openTransport returns GoChannel for a single instance, or NATS JetStream when a
// NATS URL is configured: durable streams so a restart loses no work message, one
// pull consumer each so each message is handled by one instance.
func openTransport(cfg Config, logger *slog.Logger) (transport, error) {
	wlog := watermill.NewSlogLogger(logger.With("component", "watermill"))
	if cfg.NATSURL == "" {
		gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, wlog)
		// One chain start a start, as over NATS (processors.OncePublisher).
		// The GoChannel is publisher and subscriber at once: the router, which
		// closes its subscriber when it stops, gets one it cannot close, or the
		// work its last slices hand on would fail to publish ("Pub/Sub closed",
		// logged as errors at every stop). The transport closes it last.
		return transport{pub: processors.NewOncePublisher(gc), sub: keptOpen{gc}, closer: gc.Close, name: "gochannel"}, nil
	}
	ns := cfg.NATSNamespace
	// Longer than a slice plus its last sends: an unacknowledged message is
	// redelivered to another instance after this, which is how the work of an
	// instance that died moves on.
	ackWait := cfg.Slice + cfg.SendTimeout + 10*time.Second
	if err := provisionStreams(cfg.NATSURL, ns, ackWait); err != nil {
		return transport{}, err
	}
	opts := []nats.Option{nats.Name("smsbatch"), nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}
	js := wmnats.JetStreamConfig{
		AutoProvision: false, // provisionStreams made them as work queues
		TrackMsgId:    true,
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL: cfg.NATSURL, NatsOptions: opts, Marshaler: &wmnats.NATSMarshaler{}, JetStream: js,
	}, wlog)
	if err != nil {
		return transport{}, fmt.Errorf("NATS publisher: %w", err)
	}
	// Each slot holds one work message for a slice at a time, so this bounds
	// the batches one instance works at once.
	sub, err := newPullSubscriber(cfg.NATSURL, opts, cfg.NATSConcurrency, ackWait, wlog)
	if err != nil {
		pub.Close()
		return transport{}, fmt.Errorf("NATS subscriber: %w", err)
	}
	return transport{pub: namespaced{pub: pub, ns: ns}, sub: namespaced{sub: sub, ns: ns}, name: "nats", closer: func() error {
		return errors.Join(sub.Close(), pub.Close())
	}}, nil
}

// durableName is the name of the consumer of a topic (which carries the
// namespace).
func durableName(topic string) string {
	return "smsbatch_" + strings.NewReplacer(".", "_", "-", "_").Replace(topic)
}

// provisionStreams creates the JetStream streams of the two topics as work
// queues (a message is removed once acknowledged, so the streams do not grow),
// and the durable pull consumer of each, which every instance pulls from.
//
// The consumer is made here, not by a subscription: nats.go deletes a
// consumer its subscription created when that subscription ends, so the first
// instance to start took the consumer away with it when it stopped, and the
// others got no work message again. A push consumer left by an older version
// (watermill-nats made one per topic, under the same name) is replaced: a
// work-queue stream takes one consumer per subject, and the messages stay in
// the stream for the new one.
func provisionStreams(url, ns string, ackWait time.Duration) error {
	nc, err := nats.Connect(url, nats.Name("smsbatch-provision"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return fmt.Errorf("NATS JetStream: %w", err)
	}
	for _, topic := range []string{ns + processors.TopicBatchEvents, ns + processors.TopicWork} {
		if _, err := js.StreamInfo(topic); err != nil {
			_, err := js.AddStream(&nats.StreamConfig{
				Name:      topic,
				Subjects:  []string{topic},
				Retention: nats.WorkQueuePolicy,
				Storage:   nats.FileStorage,
				MaxAge:    24 * time.Hour,
			})
			if err != nil && !errors.Is(err, nats.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("create NATS stream %s: %w", topic, err)
			}
		}
		cfg := &nats.ConsumerConfig{
			Durable:       durableName(topic),
			FilterSubject: topic,
			DeliverPolicy: nats.DeliverAllPolicy,
			AckPolicy:     nats.AckExplicitPolicy,
			AckWait:       ackWait,
			// Every work message handled at once, on all instances together.
			MaxAckPending: 1 << 16,
		}
		info, err := js.ConsumerInfo(topic, cfg.Durable)
		switch {
		case err == nil && info.Config.DeliverSubject == "":
			// Made by another instance, or before a restart: with the ack
			// wait of its configuration, which the subscriber's handlers
			// count on. Left as it was, a longer --work-slice or
			// --send-timeout kept the first ack wait, and the messages of
			// slices still running were delivered again.
			if err := updateConsumer(js, topic, info.Config, cfg); err != nil {
				return err
			}
			continue
		case err == nil:
			if err := js.DeleteConsumer(topic, cfg.Durable); err != nil && !errors.Is(err, nats.ErrConsumerNotFound) {
				return fmt.Errorf("replace the NATS push consumer of %s: %w", topic, err)
			}
		case !errors.Is(err, nats.ErrConsumerNotFound):
			return fmt.Errorf("NATS consumer of %s: %w", topic, err)
		}
		_, err = js.AddConsumer(topic, cfg)
		if errors.Is(err, nats.ErrConsumerNameAlreadyInUse) {
			// Made just now by another instance, with other settings.
			info, err = js.ConsumerInfo(topic, cfg.Durable)
			if err == nil {
				err = updateConsumer(js, topic, info.Config, cfg)
			}
		}
		if err != nil {
			return fmt.Errorf("create NATS consumer of %s: %w", topic, err)
		}
	}
	return nil
}

// updateConsumer gives the pull consumer of topic the settings of ours in
// want that have changed since it was made (the last instance to start sets
// them).
func updateConsumer(js nats.JetStreamContext, topic string, have nats.ConsumerConfig, want *nats.ConsumerConfig) error {
	if have.AckWait == want.AckWait && have.MaxAckPending == want.MaxAckPending {
		return nil
	}
	upd := have
	upd.AckWait, upd.MaxAckPending = want.AckWait, want.MaxAckPending
	if _, err := js.UpdateConsumer(topic, &upd); err != nil {
		return fmt.Errorf("update the NATS consumer of %s: %w", topic, err)
	}
	return nil
}

// namespaced prefixes every topic, so that several deployments (or test runs) can
// share one NATS server without taking each other's messages.
type namespaced struct {
	pub message.Publisher
	sub message.Subscriber
	ns  string
}

func (n namespaced) Publish(topic string, msgs ...*message.Message) error {
	return n.pub.Publish(n.ns+topic, msgs...)
}

func (n namespaced) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return n.sub.Subscribe(ctx, n.ns+topic)
}

func (n namespaced) Close() error {
	if n.pub != nil {
		return n.pub.Close()
	}
	return n.sub.Close()
}
