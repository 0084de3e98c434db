package postgres

import "context"

// SetAppendDelay makes every append of s that writes run delay inside its
// transaction just before commit; an error from delay rolls the append back.
// Set it before the store is used.
func SetAppendDelay(s *Store, delay func(ctx context.Context) error) { s.appendDelay = delay }

// SetGroupHook makes s tell hook the size of every group of appends before it is
// written; hook may block, holding its writer. Set it before the store is used.
func SetGroupHook(s *Store, hook func(size int)) { s.groupHook = hook }

// QueuedAppends returns how many appends wait for a leader.
func QueuedAppends(s *Store) int {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	return len(s.queue)
}

// ReadableQuery is the query WaitForEvents asks whether an event is there with.
const ReadableQuery = readableQuery
