package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// pullSubscriber is a Watermill subscriber on the JetStream pull consumer of a
// topic: an instance asks for messages only while it has room for them (up to
// slots at once), so a work message waits in the stream for the first instance
// with room, never behind a slice running on a busy one.
//
// watermill-nats subscribes with push queue subscriptions instead, each
// handling one message at a time: the server hands every message to a member
// of the queue group whether it is busy or not, so a batch's next slice often
// waited for a slice of another batch (2 s) to end first. 300 batches at 5/s
// on one instance then kept a median of 77% of their rate, the worst 35%.
type pullSubscriber struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	slots   int           // messages of one topic handled at once
	ackWait time.Duration // how long a handler may take to acknowledge
	log     watermill.LoggerAdapter

	closing  chan struct{}
	once     sync.Once
	closeErr error
	loops    sync.WaitGroup
}

// maxFetch bounds the messages one pull asks for, so that instances asking at
// the same time share what is waiting rather than the first taking it all.
const maxFetch = 32

// returnDelay is how long a message refused at close waits before it is
// delivered again: after the closing instance's pulls have ended (fetchWait).
const returnDelay = time.Second

// fetchWait is how long one pull waits for messages before asking again, and
// so how long a stop may wait for the last pulls to end (see pull). Idle, an
// instance then spends 0.11% of a core on asking (0.014% at 5 s).
const fetchWait = 500 * time.Millisecond

func newPullSubscriber(url string, opts []nats.Option, slots int, ackWait time.Duration, log watermill.LoggerAdapter) (*pullSubscriber, error) {
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &pullSubscriber{
		nc: nc, js: js, slots: max(slots, 1), ackWait: ackWait, log: log,
		closing: make(chan struct{}),
	}, nil
}

// Subscribe implements message.Subscriber. The topic's stream and consumer
// exist (provisionStreams made them).
func (s *pullSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	cons, err := s.js.Consumer(ctx, topic, durableName(topic))
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		s.pull(ctx, cons, out)
	}()
	return out, nil
}

// pull asks for as many messages as there are free slots, hands each to the
// router in its own goroutine, and closes out once every handler is done.
func (s *pullSubscriber) pull(ctx context.Context, cons jetstream.Consumer, out chan<- *message.Message) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	free := make(chan struct{}, s.slots) // a token for every slot in use
	var handlers sync.WaitGroup
	defer func() {
		handlers.Wait()
		close(out)
	}()
	failures := 0
	for ctx.Err() == nil {
		select {
		case free <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
	more:
		for n < maxFetch {
			select {
			case free <- struct{}{}:
				n++
			default:
				break more
			}
		}
		got := 0
		// Not cancelled at the stop: a cancelled fetch drops, unanswered,
		// what the server has sent to it by then, which came back only after
		// the ack wait (a pull's worth sent as an instance stopped: 6 to 32
		// of 32, 8 runs of 8). Run to its end, everything it brings in is
		// handed out or refused. The server ends it after fetchWait, the
		// client waits a second longer, so a message the server sends last
		// is not dropped when the client is slow to read it.
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		if err == nil {
			for m := range batch.Messages() {
				got++
				handlers.Add(1)
				go func() {
					defer handlers.Done()
					defer func() { <-free }()
					s.handle(ctx, m, out)
				}()
			}
			err = batch.Error()
		}
		for range n - got {
			<-free
		}
		switch {
		case err == nil || errors.Is(err, nats.ErrTimeout) || ctx.Err() != nil:
			failures = 0
		default:
			failures++
			s.log.Error("pulling NATS messages failed", err, watermill.LogFields{"consumer": cons.CachedInfo().Name})
			select {
			case <-time.After(min(time.Duration(failures)*200*time.Millisecond, 5*time.Second)):
			case <-ctx.Done():
			}
		}
	}
}

// handle gives one message to the router and acknowledges it as the handler
// does, also while the subscriber closes: closing cancels the message's
// context, the slice hands its work on and returns, and its message is
// acknowledged rather than delivered again. A message the router had not taken
// when the subscriber closed is refused, to be delivered again a second later
// (returnDelay), to another instance. A message left unacknowledged (its
// handler took longer than ackWait) is delivered again after the consumer's ack
// wait.
func (s *pullSubscriber) handle(ctx context.Context, m jetstream.Msg, out chan<- *message.Message) {
	wm, err := wmjs.DefaultUnmarshaler{}.Unmarshal(m)
	if err != nil {
		s.log.Error("dropping a NATS message that is not a Watermill message", err, nil)
		_ = m.Term()
		return
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wm.SetContext(mctx)
	select {
	case out <- wm:
	case <-ctx.Done():
		// Stopping before the router took it: give it back for another
		// instance to take, not after the ack wait. Not at once: this
		// instance's last pull may not have ended at the server yet, which
		// would deliver it here again.
		if err := m.NakWithDelay(returnDelay); err != nil {
			s.log.Error("returning a NATS message failed", err, watermill.LogFields{"message_uuid": wm.UUID})
		}
		return
	}
	timer := time.NewTimer(s.ackWait)
	defer timer.Stop()
	fields := watermill.LogFields{"message_uuid": wm.UUID}
	select {
	case <-wm.Acked():
		actx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		if err := m.DoubleAck(actx); err != nil {
			s.log.Error("acknowledging a NATS message failed", err, fields)
		}
	case <-wm.Nacked():
		if ctx.Err() != nil {
			// Refused as this instance stops (its handler never ran): as
			// above, back to another instance a moment later.
			if err := m.NakWithDelay(returnDelay); err != nil {
				s.log.Error("returning a NATS message failed", err, fields)
			}
			return
		}
		if err := m.Nak(); err != nil {
			s.log.Error("refusing a NATS message failed", err, fields)
		}
	case <-timer.C:
	}
}

// Close stops pulling, cancels the context of every message held, waits for
// the last pulls to end (at most fetchWait; what they bring in is refused) and
// for the handlers to acknowledge their messages, and closes the connection.
// The router closes its subscriber when it starts to stop, before its handlers
// end (once for each handler, and the transport once more). watermill-nats
// left the messages held then unacknowledged, so each came back after the ack
// wait to start a chain that fencing then refused.
func (s *pullSubscriber) Close() error {
	s.once.Do(func() {
		close(s.closing)
		s.loops.Wait()
		s.closeErr = s.nc.Drain()
	})
	return s.closeErr
}
