package postgres

import "context"

// SetAppendDelay makes every append of s that writes run delay inside its
// transaction just before commit; an error from delay rolls the append back.
// Set it before the store is used.
func SetAppendDelay(s *Store, delay func(ctx context.Context) error) { s.appendDelay = delay }
