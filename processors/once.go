package processors

import (
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// DuplicateWindow is how long OncePublisher remembers a message ID: JetStream's
// default duplicate window, which the NATS transport relies on for the same.
const DuplicateWindow = 2 * time.Minute

// onceMaxIDs bounds the IDs a OncePublisher remembers. Past it the oldest are
// forgotten early: a copy let through then is what fencing is for (its slice
// finds the chain taken), so the bound costs work, never a guarantee.
const onceMaxIDs = 1 << 16

// OncePublisher publishes a message whose ID is derived from what it stands for
// (a chain start, a lifecycle message: derivedID, a name-based UUID) once within
// DuplicateWindow, as JetStream keeps one message of a Nats-Msg-Id. It is for
// the in-process transport, where both copies of a batch's chain start (the
// API's and the lifecycle handler's, see chainStart) were queued and the second
// loaded the batch only to find the chain taken: at 1,000 batches created at
// once, a thousand needless slices in the middle of the creates. Messages with
// random IDs (hand-ons, recoveries) are published as they come.
type OncePublisher struct {
	message.Publisher
	now func() time.Time

	mu    sync.Mutex
	seen  map[string]struct{}
	order []seenID // oldest first, from head on
	head  int
}

type seenID struct {
	id string
	at time.Time
}

// NewOncePublisher wraps pub.
func NewOncePublisher(pub message.Publisher) *OncePublisher {
	return &OncePublisher{Publisher: pub, now: time.Now, seen: map[string]struct{}{}}
}

// Publish publishes the messages of msgs not published within the window. When
// publishing fails, their IDs are forgotten, so that the copy its caller counts
// on (the lifecycle handler's, a redelivered message's) is published after all.
func (p *OncePublisher) Publish(topic string, msgs ...*message.Message) error {
	out := p.first(msgs)
	if len(out) == 0 {
		return nil
	}
	err := p.Publisher.Publish(topic, out...)
	if err != nil {
		p.unsee(out)
	}
	return err
}

// unsee forgets the derived IDs of msgs. Their entries in order stay until they
// expire: one that then forgets the same ID published again later only lets a
// copy through early, which fencing ends.
func (p *OncePublisher) unsee(msgs []*message.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if derived(m.UUID) {
			delete(p.seen, m.UUID)
		}
	}
}

// first returns the messages of msgs to publish, remembering their derived IDs.
func (p *OncePublisher) first(msgs []*message.Message) []*message.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.forget(now)
	out := msgs[:0:0]
	for _, m := range msgs {
		if !derived(m.UUID) {
			out = append(out, m)
			continue
		}
		if _, ok := p.seen[m.UUID]; ok {
			continue
		}
		p.seen[m.UUID] = struct{}{}
		p.order = append(p.order, seenID{m.UUID, now})
		out = append(out, m)
	}
	return out
}

// forget drops the IDs remembered longer than the window, and the oldest past
// onceMaxIDs.
func (p *OncePublisher) forget(now time.Time) {
	for p.head < len(p.order) && (now.Sub(p.order[p.head].at) >= DuplicateWindow || len(p.order)-p.head > onceMaxIDs) {
		delete(p.seen, p.order[p.head].id)
		p.order[p.head] = seenID{}
		p.head++
	}
	// Move the rest down once the forgotten are half the slice: each entry
	// is moved a bounded number of times on average.
	if p.head > 0 && p.head >= len(p.order)/2 {
		p.order = append(p.order[:0], p.order[p.head:]...)
		p.head = 0
	}
}

// derived reports whether id is a name-based UUID (version 5, derivedID's).
func derived(id string) bool {
	u, err := uuid.Parse(id)
	return err == nil && u.Version() == 5
}
