package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
)

// errDamaged is what `smsbatch check` returns when it found damage, so that it
// exits non-zero; the report itself is already printed.
var errDamaged = errors.New("damage found")

// eventsFile is the embedded event store's file in the data directory.
func eventsFile(dataDir string) string { return filepath.Join(dataDir, "events.db") }

// checkStore verifies the embedded event store of cfg.DataDir offline and prints
// what it found to out: errDamaged when something is damaged.
func checkStore(ctx context.Context, cfg Config, out io.Writer) error {
	if cfg.EventStore != "bolt" {
		return fmt.Errorf("check verifies the embedded bolt store of a data directory; the event store is %s", cfg.EventStore)
	}
	r, err := bolt.Check(ctx, eventsFile(cfg.DataDir), bolt.Options{})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "event store %s\n", r.Path)
	if r.StoreID != "" || r.Format != "" {
		fmt.Fprintf(out, "  store %s, layout %s: %d events in %d streams\n", r.StoreID, r.Format, r.Events, len(r.Streams))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(out, "  note: %s\n", n)
	}
	if orphans := orphanRecipientStreams(r.Streams, r.FirstTypes); len(orphans) > 0 {
		fmt.Fprintf(out, "  note: %d recipients stream(s) without a batch, from uploads that never finished "+
			"(a full disk, a crash); they are never read nor counted: %s\n", len(orphans), strings.Join(first(orphans, 10), ", "))
	}
	if r.Clean() {
		fmt.Fprintln(out, "clean: no damage found")
		return nil
	}
	fmt.Fprintf(out, "DAMAGED: %d problem(s)\n", len(r.Problems)+r.MoreProblems)
	for _, p := range r.Problems {
		fmt.Fprintf(out, "  %s\n", p)
	}
	if r.MoreProblems > 0 {
		fmt.Fprintf(out, "  ... and %d more\n", r.MoreProblems)
	}
	if len(r.DamagedStreams) > 0 {
		fmt.Fprintf(out, "damaged streams (%d): %s\n", len(r.DamagedStreams), strings.Join(first(r.DamagedStreams, 100), ", "))
	}
	if len(r.DamagedEvents) > 0 {
		seqs := make([]string, 0, min(len(r.DamagedEvents), 100))
		for _, s := range first(r.DamagedEvents, 100) {
			seqs = append(seqs, fmt.Sprint(s))
		}
		fmt.Fprintf(out, "damaged events (%d, by global position): %s\n", len(r.DamagedEvents), strings.Join(seqs, ", "))
	}
	fmt.Fprintln(out, "smsbatch serve refuses to start on this store, or stops at the damaged records: restore the data directory from a backup.")
	return fmt.Errorf("%s: %w", r.Path, errDamaged)
}

// orphanRecipientStreams are the recipients streams whose batch was never
// created: commands.CreateBatch writes the pages first and BatchCreated last,
// and a create its key's retry fenced off (BatchCreateAbandoned first in the
// batch's stream) stores none.
func orphanRecipientStreams(streams map[string]uint64, firstTypes map[string]string) []string {
	var orphans []string
	for name := range streams {
		id, ok := strings.CutPrefix(name, domain.RecipientsStreamPrefix)
		batch := domain.BatchStream(id)
		_, created := streams[batch]
		if created && firstTypes[batch] == domain.TypeBatchCreateAbandoned {
			created = false
		}
		if ok && !created {
			orphans = append(orphans, name)
		}
	}
	slices.Sort(orphans)
	return orphans
}

func first[T any](s []T, n int) []T { return s[:min(len(s), n)] }
