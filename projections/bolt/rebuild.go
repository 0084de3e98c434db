package bolt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// OpenFor opens the read models at path to follow events. A file of another
// layout, or one built from another history (see Follows), is removed and
// started afresh: the read models are derived from the events, and the runner
// builds them again from position 0. reset says why a file was removed; it is
// empty when none was.
func OpenFor(ctx context.Context, path string, events eventstore.Store, opts Options) (s *Store, reset string, err error) {
	s, err = Open(path, opts)
	if errors.Is(err, ErrFormat) {
		reset = err.Error()
		if err := os.Remove(path); err != nil {
			return nil, "", fmt.Errorf("bolt projections: remove %s: %w", path, err)
		}
		s, err = Open(path, opts)
	}
	if err != nil {
		return nil, "", err
	}
	follows, err := s.Follows(ctx, events)
	if err != nil {
		_ = s.Close()
		return nil, "", err
	}
	if follows {
		return s, reset, nil
	}
	if err := s.Close(); err != nil {
		return nil, "", err
	}
	if err := os.Remove(path); err != nil {
		return nil, "", fmt.Errorf("bolt projections: remove %s: %w", path, err)
	}
	s, err = Open(path, opts)
	return s, "the event store does not hold the event of the read models' checkpoint: they were built from another history", err
}

// RebuildOptions configures Rebuild.
type RebuildOptions struct {
	// BatchSize is the most events applied in one transaction; default
	// projections.DefaultReplayBatchSize.
	BatchSize int
	// Progress, if set, is called after every page applied and once at the end.
	Progress func(projections.RebuildProgress)
	// LockTimeout is how long Rebuild waits for another process to release the
	// live file; default DefaultLockTimeout.
	LockTimeout time.Duration
	// Logger; default discards.
	Logger *slog.Logger
}

func (o *RebuildOptions) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Rebuild replays every event of events into a new file beside path (path +
// ".rebuild") and renames it over path once complete, so that path holds
// either the old read models or the new ones, never a mix. It holds the lock
// of the live file throughout and fails with an error wrapping ErrInUse when a
// running service (or another rebuild) holds it: the embedded read models are
// rebuilt while the service is stopped.
//
// The new file is written without an fsync per page and synced once before the
// rename: nothing reads it before then, and an interrupted rebuild (ctx
// cancelled, process killed, power lost) leaves the live file as it was and a
// partial file that the next rebuild removes and starts over.
func Rebuild(ctx context.Context, path string, events eventstore.Store, opts RebuildOptions) error {
	if events == nil {
		return errors.New("bolt projections: rebuild: events are required")
	}
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("bolt projections: rebuild: %w", err)
	}
	live, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.LockTimeout})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("bolt projections: rebuild %s: %w (file lock not released within %s)", path, ErrInUse, opts.LockTimeout)
	case err != nil:
		// A file bbolt cannot open is one no service has open either, and the
		// very thing a rebuild replaces.
		opts.Logger.Warn("projections: replacing read models that do not open", "path", path, "error", err)
	default:
		defer live.Close()
	}

	shadowPath := path + ".rebuild"
	if err := os.Remove(shadowPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bolt projections: rebuild: remove the file of an earlier rebuild: %w", err)
	}
	shadow, err := Open(shadowPath, Options{LockTimeout: opts.LockTimeout, noSync: true})
	if err != nil {
		return fmt.Errorf("bolt projections: rebuild: %w", err)
	}
	swapped := false
	defer func() {
		if !swapped {
			_ = shadow.Close()
			_ = os.Remove(shadowPath)
		}
	}()

	opts.Logger.Info("projections: rebuilding", "path", path)
	began := time.Now()
	_, done, err := projections.Replay(ctx, events, shadow.Apply, projections.ReplayOptions{
		BatchSize: opts.BatchSize, Progress: opts.Progress,
	})
	if err != nil {
		return fmt.Errorf("bolt projections: rebuild: %w", err)
	}
	if err := shadow.db.Sync(); err != nil {
		return fmt.Errorf("bolt projections: rebuild: sync: %w", err)
	}
	if err := shadow.Close(); err != nil {
		return fmt.Errorf("bolt projections: rebuild: %w", err)
	}
	swapped = true
	if err := os.Rename(shadowPath, path); err != nil {
		_ = os.Remove(shadowPath)
		return fmt.Errorf("bolt projections: rebuild: swap in the new file: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("bolt projections: rebuild: %w", err)
	}
	opts.Logger.Info("projections: rebuilt", "path", path, "events", done, "took", time.Since(began).String())
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
