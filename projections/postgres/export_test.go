package postgres

func SetBeforeWrite(s *Store, f func() error) { s.beforeWrite = f }
