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

// openTransport returns GoChannel for a single instance, or NATS JetStream when a
// NATS URL is configured: durable streams so a restart loses no work message, one
// queue group so each message is handled by one instance.
func openTransport(cfg Config, logger *slog.Logger) (transport, error) {
	wlog := watermill.NewSlogLogger(logger.With("component", "watermill"))
	if cfg.NATSURL == "" {
		gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, wlog)
		return transport{pub: gc, sub: gc, closer: gc.Close, name: "gochannel"}, nil
	}
	ns := cfg.NATSNamespace
	// Longer than a slice plus its last sends: an unacknowledged message is
	// redelivered to another instance after this, which is how the work of an
	// instance that died moves on.
	ackWait := cfg.Slice + cfg.SendTimeout + 10*time.Second
	names := natsNames{ns: ns, ackWait: ackWait}
	if err := provisionStreams(cfg.NATSURL, names); err != nil {
		return transport{}, err
	}
	opts := []nats.Option{nats.Name("smsbatch"), nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}
	js := wmnats.JetStreamConfig{
		AutoProvision:     false, // provisionStreams made them as work queues
		TrackMsgId:        true,
		DurablePrefix:     "smsbatch",
		DurableCalculator: func(_, topic string) string { return names.durable(topic) },
		SubscribeOptions:  []nats.SubOpt{nats.AckExplicit(), nats.DeliverAll(), nats.MaxAckPending(4096)},
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL: cfg.NATSURL, NatsOptions: opts, Marshaler: &wmnats.NATSMarshaler{}, JetStream: js,
	}, wlog)
	if err != nil {
		return transport{}, fmt.Errorf("NATS publisher: %w", err)
	}
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:              cfg.NATSURL,
		QueueGroupPrefix: names.queueGroup(),
		// Each subscriber holds one work message for a slice at a time, so this
		// bounds the batches one instance works at once.
		SubscribersCount: cfg.NATSConcurrency,
		AckWaitTimeout:   ackWait,
		CloseTimeout:     cfg.Slice + cfg.SendTimeout + 5*time.Second,
		SubscribeTimeout: 10 * time.Second,
		NatsOptions:      opts,
		Unmarshaler:      &wmnats.NATSMarshaler{},
		JetStream:        js,
	}, wlog)
	if err != nil {
		pub.Close()
		return transport{}, fmt.Errorf("NATS subscriber: %w", err)
	}
	return transport{pub: namespaced{pub: pub, ns: ns}, sub: namespaced{sub: sub, ns: ns}, name: "nats", closer: func() error {
		return errors.Join(sub.Close(), pub.Close())
	}}, nil
}

// natsNames are the names of the JetStream consumers the instances share.
type natsNames struct {
	ns      string
	ackWait time.Duration
}

// queueGroup is the one queue group of every instance of the deployment.
func (n natsNames) queueGroup() string { return n.ns + "smsbatch" }

// durable is the name of the consumer of a topic (which carries the namespace).
func (n natsNames) durable(topic string) string {
	return "smsbatch_" + strings.NewReplacer(".", "_", "-", "_").Replace(topic)
}

// deliverSubject is where the consumer of a topic pushes its messages to the
// queue group: fixed, so that every instance listens where the consumer sends.
func (n natsNames) deliverSubject(topic string) string {
	return "_smsbatch.deliver." + n.durable(topic)
}

// provisionStreams creates the JetStream streams of the two topics as work
// queues (a message is removed once acknowledged, so the streams do not grow),
// and the durable consumer of each, which the instances' subscriptions bind to.
//
// The consumer is made here, not by the first subscription: nats.go deletes a
// consumer its subscription created when that subscription ends, so the first
// instance to start would take the consumer away with it when it stopped, and
// every other instance, still listening on the old delivery subject, would get
// no work message again.
func provisionStreams(url string, names natsNames) error {
	nc, err := nats.Connect(url, nats.Name("smsbatch-provision"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return fmt.Errorf("NATS JetStream: %w", err)
	}
	for _, topic := range []string{names.ns + processors.TopicBatchEvents, names.ns + processors.TopicWork} {
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
		if _, err := js.ConsumerInfo(topic, names.durable(topic)); err == nil {
			continue // made by another instance, or by a subscription of an older one
		} else if !errors.Is(err, nats.ErrConsumerNotFound) {
			return fmt.Errorf("NATS consumer of %s: %w", topic, err)
		}
		_, err := js.AddConsumer(topic, &nats.ConsumerConfig{
			Durable:        names.durable(topic),
			DeliverSubject: names.deliverSubject(topic),
			DeliverGroup:   names.queueGroup(),
			FilterSubject:  topic,
			DeliverPolicy:  nats.DeliverAllPolicy,
			AckPolicy:      nats.AckExplicitPolicy,
			AckWait:        names.ackWait,
			MaxAckPending:  4096,
		})
		if err != nil && !errors.Is(err, nats.ErrConsumerNameAlreadyInUse) {
			return fmt.Errorf("create NATS consumer of %s: %w", topic, err)
		}
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
