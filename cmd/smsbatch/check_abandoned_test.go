package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
)

// A create fenced off by its key's retry (AbandonCreate) stored its recipients
// pages and no batch: they are never read, like any unfinished upload's, and
// `smsbatch check` should note them. It does not: the batch stream exists
// (holding only BatchCreateAbandoned), so the pages are not taken for orphans.
func TestCheckNotesTheRecipientsOfAnAbandonedCreate(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	store, err := bolt.Open(filepath.Join(dataDir, "events.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := commands.NewRepository(store, 0)
	cmds, err := commands.New(store, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, _ := domain.NewTemplate("Hello {{name}}", domain.TemplateLimits{})
	id := "0190c0de-0000-7000-8000-000000000001"
	// The retry fences the first try off, which then goes on and stores its
	// pages, and is refused at its BatchCreated.
	if err := cmds.AbandonCreate(context.Background(), id, "acme"); err != nil {
		t.Fatal(err)
	}
	_, err = cmds.CreateBatch(context.Background(), commands.CreateBatch{
		ID: id, Tenant: "acme", Template: tmpl, Priority: domain.PriorityNormal,
		Recipients: func(yield func(domain.Recipient, error) bool) {
			for i := range 1500 {
				if !yield(domain.Recipient{Phone: fmt.Sprintf("+1415555%04d", i), Values: []string{"x"}}, nil) {
					return
				}
			}
		},
	})
	if domain.ErrorCode(err) != domain.ECONFLICT {
		t.Fatalf("the fenced create: %v", err)
	}
	store.Close()
	wantCheck(t, dataDir, 0, "clean", "1 recipients stream(s) without a batch", domain.RecipientsStream(id))
}
