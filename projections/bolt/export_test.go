package bolt

import "github.com/smsbatch/smsbatch/projections"

// SetBeforeCheckpoint makes Apply run f inside its transaction, after the read
// models were written and before the checkpoint is.
func SetBeforeCheckpoint(s *Store, f func() error) { s.beforeCheckpoint = f }

// ReadState is the state the read side reads for a batch (shared, not to be
// changed).
func ReadState(s *Store, tenant, id string) (*projections.BatchState, error) {
	return s.state("test", tenant, id)
}
