package bolt

// SetBeforeCheckpoint makes Apply run f inside its transaction, after the read
// models were written and before the checkpoint is.
func SetBeforeCheckpoint(s *Store, f func() error) { s.beforeCheckpoint = f }
