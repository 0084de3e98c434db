package processors

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
)

// Topics and handler names. They are part of the deployment (broker subscriptions
// are named after them) and do not change.
const (
	TopicBatchEvents = "smsbatch-batch-events"
	TopicWork        = "smsbatch-batch-work"

	HandlerStartWork = "smsbatch.start-work"
	HandlerSend      = "smsbatch.send"
)

// Lifecycle is the payload of a batch lifecycle message on TopicBatchEvents.
type Lifecycle struct {
	BatchID string `json:"batchId"`
	Type    string `json:"type"`
	// Revision is the event's revision in the batch's stream.
	Revision uint64 `json:"revision"`
}

// NewRouter returns a Watermill router with the processor's handlers: one that
// gives a started or resumed batch its work message, and the send handler that
// works a batch for a slice and hands the work message on.
func NewRouter(p *Processor, pub message.Publisher, sub message.Subscriber, logger *slog.Logger) (*message.Router, error) {
	wlog := watermill.NewSlogLogger(logger)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: p.cfg.SendTimeout + p.cfg.SliceDuration + 5*time.Second}, wlog)
	if err != nil {
		return nil, fmt.Errorf("new router: %w", err)
	}
	router.AddMiddleware(
		dropFailed(logger),
		middleware.Recoverer,
		middleware.Retry{MaxRetries: 3, InitialInterval: 200 * time.Millisecond, MaxInterval: 2 * time.Second, Multiplier: 2, Logger: wlog}.Middleware,
	)
	// Watermill closes a handler's publisher as soon as its subscription ends,
	// while handlers still running may be publishing the work they hand on: at
	// shutdown those successors would be lost. The publisher is the caller's,
	// closed once the router has stopped.
	out := keepOpen{pub}
	router.AddHandler(HandlerStartWork, TopicBatchEvents, sub, TopicWork, out, p.handleLifecycle)
	router.AddHandler(HandlerSend, TopicWork, sub, TopicWork, out, p.handleWork)
	return router, nil
}

// keepOpen is a publisher the router cannot close.
type keepOpen struct{ message.Publisher }

func (keepOpen) Close() error { return nil }

// dropFailed acknowledges a message whose handling failed after its retries, with
// a log line. Redelivering it at once would spin; a batch whose work message is
// dropped is picked up again by recovery once it stalls.
func dropFailed(logger *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err != nil && msg.Context().Err() != nil {
				// Refused as its subscriber stops (Retry does not run the
				// handler once the message's context ended): nothing was
				// handed on, and dropping it would end the batch's chain, a
				// stopped batch's for good. Delivered again, elsewhere.
				return nil, err
			}
			if err != nil {
				logger.Error("message dropped after retries", "handler", message.HandlerNameFromCtx(msg.Context()), "uuid", msg.UUID, "err", err)
				return nil, nil
			}
			return out, nil
		}
	}
}

func (p *Processor) handleLifecycle(msg *message.Message) ([]*message.Message, error) {
	var l Lifecycle
	if err := json.Unmarshal(msg.Payload, &l); err != nil {
		p.log.Error("malformed lifecycle message dropped", "uuid", msg.UUID, "err", err)
		return nil, nil
	}
	switch l.Type {
	case domain.TypeBatchStarted, domain.TypeBatchResumed,
		// A stopped batch may have messages in flight on an instance that
		// died while no chain ran for it (it was paused): a chain of its own
		// ends them once no send of them can still be running
		// (settleStopped), and ends at once when none is in flight.
		domain.TypeBatchCancelled, domain.TypeBatchFailed:
		out, err := chainStart(l.BatchID, l.Revision)
		if err != nil {
			return nil, err
		}
		return []*message.Message{out}, nil
	}
	return nil, nil
}

func (p *Processor) handleWork(msg *message.Message) ([]*message.Message, error) {
	var w Work
	if err := json.Unmarshal(msg.Payload, &w); err != nil || w.BatchID == "" {
		p.log.Error("malformed work message dropped", "uuid", msg.UUID, "err", err)
		return nil, nil
	}
	next, err := p.RunSlice(msg.Context(), w)
	if err != nil {
		return nil, err
	}
	if next == nil {
		return nil, nil
	}
	out, err := workMessage(*next)
	if err != nil {
		return nil, err
	}
	return []*message.Message{out}, nil
}

// workMessage is a work message of its own: a hand-on, or a stalled batch's
// recovery, which must not be taken for the message it replaces.
func workMessage(w Work) (*message.Message, error) {
	return newWorkMessage(watermill.NewUUID(), w)
}

func newWorkMessage(id string, w Work) (*message.Message, error) {
	payload, err := json.Marshal(w)
	if err != nil {
		return nil, errors.New("encode work message")
	}
	msg := message.NewMessage(id, payload)
	msg.Metadata.Set("batch_id", w.BatchID)
	return msg, nil
}

// messageIDs is the namespace of the message IDs derived from what a message
// stands for (see chainStart).
var messageIDs = uuid.MustParse("8f44c6cf-65c6-48bb-ae0a-a831bf9d3af4")

// derivedID is the ID of the message that parts stand for: the same for every
// copy of it, wherever it is published.
func derivedID(parts ...string) string {
	return uuid.NewSHA1(messageIDs, []byte(strings.Join(parts, "\x00"))).String()
}

// chainStart is the first work message of the chain a start or resume begins
// (revision: that of the BatchStarted or BatchResumed event). Its ID is derived
// from the two, so every copy of it is the same message: the API's (PublishWork)
// and the lifecycle handler's of each instance's lifecycle message. Watermill
// NATS sends the ID as Nats-Msg-Id, and JetStream keeps one message of an ID
// within its duplicate window (two minutes), and in process OncePublisher does
// the same: one chain starts, not one per copy, each loading the batch to find
// the chain taken.
func chainStart(batchID string, revision uint64) (*message.Message, error) {
	id := derivedID("start", batchID, strconv.FormatUint(revision, 10))
	return newWorkMessage(id, Work{BatchID: batchID, PrevSlice: domain.ChainToken(revision)})
}

// PublishWork hands a batch that was just started or resumed (revision: that of
// the BatchStarted or BatchResumed event) its first work message directly, so
// sending does not wait for the event subscription to deliver the event. The
// lifecycle handler publishes the same work message when the event arrives:
// over NATS the broker keeps one of them (see chainStart), in process the
// OncePublisher does; were both to run, as they share one chain token only one
// of their slices would dispatch.
func PublishWork(pub message.Publisher, batchID string, revision uint64) error {
	msg, err := chainStart(batchID, revision)
	if err != nil {
		return err
	}
	return pub.Publish(TopicWork, msg)
}
