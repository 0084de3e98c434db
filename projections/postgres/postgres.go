// Package postgres owns the PostgreSQL projections store: the status, analytics
// and errors read models in the tables of migrations/0002_readmodels.sql, kept by
// the projection logic of package projections (a batch's BatchState is loaded,
// folded in Go and written back as JSON), and the rebuild that replays every
// event into a shadow copy of those tables and swaps it in.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgerr"
	"github.com/smsbatch/smsbatch/projections"
)

// DefaultSchema is the schema the migrations create the read models in.
const DefaultSchema = "readmodels"

// checkpointName names the one checkpoint row of a schema.
const checkpointName = "projections"

// Options configures a Store.
type Options struct {
	// Schema holds the read model tables; default DefaultSchema. A rebuild points
	// a store at its shadow schema.
	Schema string
}

func (o *Options) setDefaults() {
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
}

// Store is a projections.Store over PostgreSQL, safe for concurrent use. Apply
// runs in one transaction that locks the checkpoint row, so several instances
// may apply the same events: each event changes the read models once.
type Store struct {
	pool   *pgxpool.Pool
	schema string
	q      queries

	// mu serialises the store's applies, which share states.
	mu sync.Mutex
	// states are batches' states as this store's last apply committed them,
	// decoded, so the next apply need not read and decode them again. They
	// hold while the checkpoint row is the version that apply wrote (statesAt,
	// its xmin): an apply by another instance or a rebuild's swap writes
	// another, and they are dropped. "" when they must not be used.
	states   *lru.Cache[string, *projections.BatchState]
	statesAt string
	// reads are the states status, list and recipient reads decoded, kept
	// while they are stored unchanged.
	reads *projections.ReadCache

	// beforeWrite, when set (by tests), runs inside an apply's transaction
	// once the states are changed, before anything is written.
	beforeWrite func() error
}

var _ projections.Store = (*Store)(nil)

// New returns a store over the tables of opts.Schema, which must exist (see
// package migrations). Every query is prepared once, so that one that does not
// match the tables fails here rather than at its first use.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("postgres projections: pool is required")
	}
	opts.setDefaults()
	states, err := lru.New[string, *projections.BatchState](projections.CachedStates)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: new: %w", err)
	}
	s := &Store{pool: pool, schema: opts.Schema, q: newQueries(opts.Schema), states: states, reads: projections.NewReadCache()}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: new: %w", err)
	}
	defer conn.Release()
	for _, sql := range s.q.all() {
		if _, err := conn.Conn().Prepare(ctx, "", sql); err != nil {
			return nil, fmt.Errorf("postgres projections: prepare %q: %w", sql, err)
		}
	}
	if _, err := conn.Exec(ctx, s.q.ensureCheckpoint, checkpointName); err != nil {
		return nil, fmt.Errorf("postgres projections: new: %w", err)
	}
	return s, nil
}

// queries are the store's SQL, naming the tables of one schema.
type queries struct {
	ensureCheckpoint, checkpoint, lockCheckpoint, writeCheckpoint string
	loadStates, upsertStates, upsertErrors                        string
	state, exists, list, listAfter, errors, errorsOf              string
	unfinished                                                    string
	upsertNumbers, loadOutcomes, upsertOutcomes                   string
	numbers, outcomes, outcomesOf                                 string
}

func newQueries(schema string) queries {
	t := func(table string) string { return pgx.Identifier{schema, table}.Sanitize() }
	batches, errs, checkpoints := t("batches"), t("errors"), t("checkpoints")
	numbers, outcomes := t("recipient_numbers"), t("recipient_outcomes")
	return queries{
		ensureCheckpoint: `INSERT INTO ` + checkpoints + ` (name) VALUES ($1) ON CONFLICT DO NOTHING`,
		checkpoint:       `SELECT commit, prepare FROM ` + checkpoints + ` WHERE name = $1`,
		lockCheckpoint:   `SELECT commit, prepare, applied, xmin::text FROM ` + checkpoints + ` WHERE name = $1 FOR UPDATE`,
		writeCheckpoint:  `UPDATE ` + checkpoints + ` SET commit = $2, prepare = $3, applied = applied + $4 WHERE name = $1 RETURNING xmin::text`,

		loadStates: `SELECT state FROM ` + batches + ` WHERE id = ANY($1)`,
		upsertStates: `INSERT INTO ` + batches + ` (id, tenant, created_ns, status, state, name_folded)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::text[])
			ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state, name_folded = excluded.name_folded`,
		// A second final failure of a recipient replaces the first, as in the
		// memory store; replayed events never get here (the checkpoint skips them).
		upsertErrors: `INSERT INTO ` + errs + ` (batch_id, idx, category, code, message, phone, attempts, time_ns)
			SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::bigint[])
			ON CONFLICT (batch_id, idx) DO UPDATE SET category = excluded.category, code = excluded.code,
				message = excluded.message, phone = excluded.phone, attempts = excluded.attempts, time_ns = excluded.time_ns`,

		state:  `SELECT state FROM ` + batches + ` WHERE id = $1 AND tenant = $2`,
		exists: `SELECT EXISTS (SELECT 1 FROM ` + batches + ` WHERE id = $1 AND tenant = $2)`,
		// The filters ($2 status, $3 folded name or ID prefix) are '' when not used.
		list: `SELECT id, state FROM ` + batches + ` WHERE tenant = $1
			AND ($2 = '' OR status = $2) AND ($3 = '' OR starts_with(name_folded, $3) OR starts_with(id, $3))
			ORDER BY created_ns DESC, id DESC LIMIT $4`,
		listAfter: `SELECT id, state FROM ` + batches + ` WHERE tenant = $1 AND (created_ns, id) < ($5, $6)
			AND ($2 = '' OR status = $2) AND ($3 = '' OR starts_with(name_folded, $3) OR starts_with(id, $3))
			ORDER BY created_ns DESC, id DESC LIMIT $4`,
		errors: `SELECT idx, phone, category, code, message, attempts, time_ns FROM ` + errs + `
			WHERE batch_id = $1 AND idx > $2 ORDER BY idx LIMIT $3`,
		errorsOf: `SELECT idx, phone, category, code, message, attempts, time_ns FROM ` + errs + `
			WHERE batch_id = $1 AND category = $2 AND idx > $3 ORDER BY idx LIMIT $4`,
		// Served by the partial index batches_unfinished_or_settling
		// (migration 0005): the batches not final, and the stopped ones
		// with messages in flight (BatchState.Unfinished; outstanding is
		// left out of the state when empty).
		unfinished: `SELECT state FROM ` + batches + ` WHERE status IN ('pending', 'processing', 'paused') OR state ? 'outstanding'`,

		upsertNumbers: `INSERT INTO ` + numbers + ` (batch_id, page, numbers)
			SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
			ON CONFLICT (batch_id, page) DO UPDATE SET numbers = excluded.numbers`,
		loadOutcomes: `SELECT o.batch_id, o.outcome FROM ` + outcomes + ` o
			JOIN unnest($1::text[], $2::int[]) AS k (batch_id, idx) ON o.batch_id = k.batch_id AND o.idx = k.idx
			FOR UPDATE OF o`,
		upsertOutcomes: `INSERT INTO ` + outcomes + ` (batch_id, idx, status, category, outcome)
			SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])
			ON CONFLICT (batch_id, idx) DO UPDATE SET status = excluded.status, category = excluded.category, outcome = excluded.outcome`,
		numbers: `SELECT numbers FROM ` + numbers + ` WHERE batch_id = $1 AND page = $2`,
		// $5 is the category filter, '' when not used; a NULL $6 is no limit.
		outcomes: `SELECT outcome FROM ` + outcomes + ` WHERE batch_id = $1 AND idx >= $2 AND idx < $3
			AND ($4 = '' OR category = $4) ORDER BY idx LIMIT $5`,
		outcomesOf: `SELECT outcome FROM ` + outcomes + ` WHERE batch_id = $1 AND status = $6 AND idx >= $2 AND idx < $3
			AND ($4 = '' OR category = $4) ORDER BY idx LIMIT $5`,
	}
}

func (q queries) all() []string {
	return []string{q.ensureCheckpoint, q.checkpoint, q.lockCheckpoint, q.writeCheckpoint,
		q.loadStates, q.upsertStates, q.upsertErrors,
		q.state, q.exists, q.list, q.listAfter, q.errors, q.errorsOf, q.unfinished,
		q.upsertNumbers, q.loadOutcomes, q.upsertOutcomes, q.numbers, q.outcomes, q.outcomesOf}
}

// Apply implements projections.Store. Every event is decoded before the
// transaction starts, so a malformed one leaves the store and its checkpoint as
// they were.
func (s *Store) Apply(ctx context.Context, events []eventstore.Event) error {
	if len(events) == 0 {
		return nil
	}
	use, err := projections.DecodePage(events)
	if err != nil {
		return fmt.Errorf("postgres projections: apply: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres projections: apply: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	written, states, err := s.applyTx(ctx, tx, events, use)
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres projections: apply: commit: %w", err)
	}
	for id, st := range states {
		s.states.Add(id, st)
	}
	s.statesAt = written
	return nil
}

// applyTx applies events (use being those of them the read models use) in tx:
// it locks the checkpoint, folds the events after it into the touched batches'
// states, writes the states, the new errors and the checkpoint back. It
// returns the version of the checkpoint row it leaves (its xmin) and the
// states as written, for Apply to keep once tx commits. The caller holds s.mu.
func (s *Store) applyTx(ctx context.Context, tx pgx.Tx, events []eventstore.Event, use []projections.Decoded) (string, map[string]*projections.BatchState, error) {
	// The checkpoint row lock serialises every Apply on the schema, so the
	// state rows read below are not written by anyone else meanwhile.
	var commit, prepare, applied int64
	var version string
	if err := tx.QueryRow(ctx, s.q.lockCheckpoint, checkpointName).Scan(&commit, &prepare, &applied, &version); err != nil {
		return "", nil, fmt.Errorf("postgres projections: apply: lock checkpoint: %w", err)
	}
	if version != s.statesAt {
		s.states.Purge() // someone else applied since this store's last commit
	}
	// The cached states are changed below, and hold again only once tx commits.
	s.statesAt = ""
	checkpoint := eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
	last := events[len(events)-1].Position
	if !checkpoint.Less(last) {
		return version, nil, nil // all applied before
	}
	fresh := 0
	for _, e := range events {
		if checkpoint.Less(e.Position) {
			fresh++
		}
	}
	use = slices.DeleteFunc(use, func(d projections.Decoded) bool { return !checkpoint.Less(d.Event.Position) })

	states, err := s.loadStates(ctx, tx, use)
	if err != nil {
		return "", nil, err
	}
	outcomes, err := s.loadOutcomes(ctx, tx, use, states)
	if err != nil {
		return "", nil, err
	}
	touched := make(map[string]bool)
	var errs errorRows
	var nums numberRows
	for _, d := range use {
		if p, ok := d.Payload.(domain.RecipientsPageAdded); ok {
			nums.add(d.BatchID, p)
			continue
		}
		st := states[d.BatchID]
		if st == nil {
			if _, created := d.Payload.(domain.BatchCreated); !created {
				continue // events of a batch whose creation was never applied
			}
			st = &projections.BatchState{}
			states[d.BatchID] = st
		}
		st.Apply(d.Event, d.Payload)
		touched[d.BatchID] = true
		if entry, ok := projections.ErrorEntryOf(d.Payload); ok {
			errs.add(d.BatchID, entry)
		}
		if err := outcomes.apply(st, d); err != nil {
			return "", nil, fmt.Errorf("postgres projections: apply: %w", err)
		}
		if original, ok := projections.RetryLink(d.Payload); ok && states[original] != nil {
			states[original].AddRetry(d.Event, d.Payload)
			touched[original] = true
		}
	}

	var rows stateRows
	for _, id := range slices.Sorted(maps.Keys(touched)) {
		if err := rows.add(states[id]); err != nil {
			return "", nil, fmt.Errorf("postgres projections: apply: encode state of %s: %w", id, err)
		}
	}
	if s.beforeWrite != nil {
		if err := s.beforeWrite(); err != nil {
			return "", nil, err
		}
	}
	b := &pgx.Batch{}
	if len(rows.id) > 0 {
		b.Queue(s.q.upsertStates, rows.id, rows.tenant, rows.createdNs, rows.status, rows.state, rows.nameFolded)
	}
	if len(errs.batchID) > 0 {
		b.Queue(s.q.upsertErrors, errs.batchID, errs.idx, errs.category, errs.code, errs.message,
			errs.phone, errs.attempts, errs.timeNs)
	}
	if len(nums.batchID) > 0 {
		b.Queue(s.q.upsertNumbers, nums.batchID, nums.page, nums.numbers)
	}
	if rows, err := outcomes.rows(); err != nil {
		return "", nil, fmt.Errorf("postgres projections: apply: %w", err)
	} else if len(rows.batchID) > 0 {
		b.Queue(s.q.upsertOutcomes, rows.batchID, rows.idx, rows.status, rows.category, rows.outcome)
	}
	b.Queue(s.q.writeCheckpoint, checkpointName, int64(last.Commit), int64(last.Prepare), fresh).
		QueryRow(func(row pgx.Row) error { return row.Scan(&version) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return "", nil, fmt.Errorf("postgres projections: apply: write: %w", err)
	}
	return version, states, nil
}

// loadStates reads the states of the batches the events touch: from s.states
// when it holds them, else from their rows.
func (s *Store) loadStates(ctx context.Context, tx pgx.Tx, use []projections.Decoded) (map[string]*projections.BatchState, error) {
	states := make(map[string]*projections.BatchState)
	ids := make([]string, 0, len(use))
	seen := make(map[string]bool)
	for _, d := range use {
		// A retry's creation changes the batch it retries too.
		original, _ := projections.RetryLink(d.Payload)
		for _, id := range []string{d.BatchID, original} {
			if id != "" && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	ids = slices.DeleteFunc(ids, func(id string) bool {
		st, ok := s.states.Get(id)
		if ok {
			states[id] = st
		}
		return ok
	})
	if len(ids) == 0 {
		return states, nil
	}
	rows, err := tx.Query(ctx, s.q.loadStates, ids)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: apply: load states: %w", err)
	}
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&raw}, func() error {
		st := &projections.BatchState{}
		if err := json.Unmarshal(raw, st); err != nil {
			return err
		}
		states[st.ID] = st
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres projections: apply: load states: %w", err)
	}
	return states, nil
}

// stateRows are batch rows as columns, for one INSERT ... SELECT FROM unnest.
type stateRows struct {
	id, tenant, status []string
	createdNs          []int64
	state, nameFolded  []string
}

func (r *stateRows) add(st *projections.BatchState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	r.id = append(r.id, st.ID)
	r.tenant = append(r.tenant, st.Tenant)
	r.createdNs = append(r.createdNs, st.CreatedAt.UnixNano())
	r.status = append(r.status, string(st.Status))
	r.state = append(r.state, string(raw))
	r.nameFolded = append(r.nameFolded, projections.FoldName(st.Name))
	return nil
}

// numberRows are recipient pages' numbers as columns.
type numberRows struct {
	batchID, numbers []string
	page             []int32
}

func (r *numberRows) add(batchID string, p domain.RecipientsPageAdded) {
	r.batchID = append(r.batchID, batchID)
	r.page = append(r.page, int32(p.Page))
	r.numbers = append(r.numbers, projections.JoinNumbers(projections.RecipientNumbers(p)))
}

// outcomeKey names one recipient of one batch.
type outcomeKey struct {
	batchID string
	index   int
}

// outcomeSet holds the outcome records a page of events changes: loaded
// first, folded in Go, written back once each.
type outcomeSet struct {
	records map[outcomeKey]*projections.RecipientOutcome
	// order lists the records changed, each once, in the order first changed.
	order   []outcomeKey
	changed map[outcomeKey]bool
}

// apply folds d into the records of the recipients it names, through st, the
// batch's state (projections.BatchState.FoldOutcomes): the records it makes
// final or a receipt changes are the ones written.
func (o *outcomeSet) apply(st *projections.BatchState, d projections.Decoded) error {
	return st.FoldOutcomes(d.Payload, func(i int) (projections.RecipientOutcome, error) {
		if rec := o.records[outcomeKey{d.BatchID, i}]; rec != nil {
			return *rec, nil
		}
		return projections.NewOutcome(i), nil
	}, func(rec projections.RecipientOutcome) {
		key := outcomeKey{d.BatchID, rec.Index}
		o.records[key] = &rec
		if !o.changed[key] {
			o.changed[key] = true
			o.order = append(o.order, key)
		}
	})
}

// outcomeRows are outcome records as columns.
type outcomeRows struct {
	batchID, status, category, outcome []string
	idx                                []int32
}

func (o *outcomeSet) rows() (outcomeRows, error) {
	var r outcomeRows
	for _, key := range o.order {
		rec := o.records[key]
		raw, err := json.Marshal(rec)
		if err != nil {
			return r, fmt.Errorf("encode outcome %d of %s: %w", key.index, key.batchID, err)
		}
		r.batchID = append(r.batchID, key.batchID)
		r.idx = append(r.idx, int32(key.index))
		r.status = append(r.status, rec.Status)
		r.category = append(r.category, rec.Category)
		r.outcome = append(r.outcome, string(raw))
	}
	return r, nil
}

// loadOutcomes locks and reads the stored outcome records the events may
// fold into: not those of recipients whose records the batches' states hold
// (projections.BatchState.NeedsStored), nor those of batches created by
// these events.
func (s *Store) loadOutcomes(ctx context.Context, tx pgx.Tx, use []projections.Decoded, states map[string]*projections.BatchState) (*outcomeSet, error) {
	set := &outcomeSet{records: make(map[outcomeKey]*projections.RecipientOutcome), changed: make(map[outcomeKey]bool)}
	var ids []string
	var idx []int32
	seen := make(map[outcomeKey]bool)
	for _, d := range use {
		st := states[d.BatchID]
		for _, i := range projections.OutcomeIndexes(d.Payload) {
			key := outcomeKey{d.BatchID, i}
			if seen[key] || st == nil {
				continue
			}
			seen[key] = true
			if st.NeedsStored(i, d.Payload) {
				ids = append(ids, d.BatchID)
				idx = append(idx, int32(i))
			}
		}
	}
	if len(ids) == 0 {
		return set, nil
	}
	rows, err := tx.Query(ctx, s.q.loadOutcomes, ids, idx)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: apply: load outcomes: %w", err)
	}
	var (
		batchID string
		raw     []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&batchID, &raw}, func() error {
		var rec projections.RecipientOutcome
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		set.records[outcomeKey{batchID, rec.Index}] = &rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres projections: apply: load outcomes: %w", err)
	}
	return set, nil
}

// errorRows are error rows as columns. A recipient failing twice in one page
// keeps its last entry: one INSERT may not touch a row twice.
type errorRows struct {
	batchID, category, code, message, phone []string
	idx, attempts                           []int32
	timeNs                                  []int64
	at                                      map[errorKey]int
}

type errorKey struct {
	batchID string
	index   int
}

func (r *errorRows) add(batchID string, e projections.ErrorEntry) {
	key := errorKey{batchID, e.Index}
	if i, ok := r.at[key]; ok {
		r.category[i], r.code[i], r.message[i], r.phone[i] = pgText(e.Category), pgText(e.Code), pgText(e.Message), pgText(e.PhoneNumber)
		r.attempts[i], r.timeNs[i] = int32(e.Attempts), e.Time.UnixNano()
		return
	}
	if r.at == nil {
		r.at = make(map[errorKey]int)
	}
	r.at[key] = len(r.batchID)
	r.batchID = append(r.batchID, batchID)
	r.idx = append(r.idx, int32(e.Index))
	r.category = append(r.category, pgText(e.Category))
	r.code = append(r.code, pgText(e.Code))
	r.message = append(r.message, pgText(e.Message))
	r.phone = append(r.phone, pgText(e.PhoneNumber))
	r.attempts = append(r.attempts, int32(e.Attempts))
	r.timeNs = append(r.timeNs, e.Time.UnixNano())
}

// pgText is s as a text column can keep it: PostgreSQL refuses U+0000, which
// a provider's words in an event may hold (events stored before the providers
// dropped it); it is shown as U+FFFD. Left in, the page holding it would
// never apply, and every read model would stop there.
func pgText(s string) string { return strings.ReplaceAll(s, "\x00", "\uFFFD") }

// Checkpoint implements projections.Store.
func (s *Store) Checkpoint(ctx context.Context) (eventstore.Position, error) {
	var commit, prepare int64
	if err := s.pool.QueryRow(ctx, s.q.checkpoint, checkpointName).Scan(&commit, &prepare); err != nil {
		return eventstore.Position{}, fmt.Errorf("postgres projections: checkpoint: %w", err)
	}
	return eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}, nil
}

// Unfinished implements projections.Store: the batches and the checkpoint are
// read in one snapshot.
func (s *Store) Unfinished(ctx context.Context) ([]projections.BatchStatus, eventstore.Position, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, eventstore.Position{}, fmt.Errorf("postgres projections: unfinished: %w", pgerr.Classify(err))
	}
	defer tx.Rollback(ctx)
	var commit, prepare int64
	if err := tx.QueryRow(ctx, s.q.checkpoint, checkpointName).Scan(&commit, &prepare); err != nil {
		return nil, eventstore.Position{}, fmt.Errorf("postgres projections: unfinished: %w", pgerr.Classify(err))
	}
	rows, err := tx.Query(ctx, s.q.unfinished)
	if err != nil {
		return nil, eventstore.Position{}, fmt.Errorf("postgres projections: unfinished: %w", pgerr.Classify(err))
	}
	var out []projections.BatchStatus
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&raw}, func() error {
		var st projections.BatchState
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		out = append(out, st.StatusView())
		return nil
	})
	if err != nil {
		return nil, eventstore.Position{}, fmt.Errorf("postgres projections: unfinished: %w", pgerr.Classify(err))
	}
	return out, eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}, nil
}

// state loads a batch's state; ENOTFOUND when it does not exist or belongs to
// another tenant.
func (s *Store) state(ctx context.Context, op, tenant, id string) (*projections.BatchState, error) {
	var raw []byte
	err := s.pool.QueryRow(ctx, s.q.state, id, tenant).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound()
	}
	if err != nil {
		return nil, fmt.Errorf("postgres projections: %s: %w", op, pgerr.Classify(err))
	}
	st, err := s.reads.Decode(id, raw)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: %s: state of %s: %w", op, id, err)
	}
	return st, nil
}

func unixNano(ns int64) time.Time { return time.Unix(0, ns).UTC() }

func notFound() error { return domain.Errorf(domain.ENOTFOUND, "batch not found") }

// Batch implements projections.Store.
func (s *Store) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	st, err := s.state(ctx, "batch", tenant, id)
	if err != nil {
		return projections.BatchStatus{}, err
	}
	return st.StatusView(), nil
}

// Analytics implements projections.Store.
func (s *Store) Analytics(ctx context.Context, tenant, id string) (projections.Analytics, error) {
	st, err := s.state(ctx, "analytics", tenant, id)
	if err != nil {
		return projections.Analytics{}, err
	}
	return st.AnalyticsView(), nil
}

// Batches implements projections.Store. It reads one batch more than the page
// holds to know whether another page follows.
func (s *Store) Batches(ctx context.Context, q projections.ListQuery) ([]projections.BatchStatus, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	var rows pgx.Rows
	if page.After == nil {
		rows, err = s.pool.Query(ctx, s.q.list, q.Tenant, page.Status, page.Q, page.Limit+1)
	} else {
		rows, err = s.pool.Query(ctx, s.q.listAfter, q.Tenant, page.Status, page.Q, page.Limit+1,
			page.After.CreatedAt.UnixNano(), page.After.ID)
	}
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: list: %w", pgerr.Classify(err))
	}
	out := make([]projections.BatchStatus, 0, page.Limit)
	more := false
	var (
		id  string
		raw []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &raw}, func() error {
		if len(out) == page.Limit {
			more = true
			return nil
		}
		st, err := s.reads.Decode(id, raw)
		if err != nil {
			return fmt.Errorf("state of %s: %w", id, err)
		}
		out = append(out, st.StatusView())
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: list: %w", pgerr.Classify(err))
	}
	next := ""
	if more {
		next = projections.KeyOf(out[len(out)-1]).Cursor()
	}
	return out, next, nil
}

// Errors implements projections.Store. It reads one entry more than the page
// holds to know whether another page follows.
func (s *Store) Errors(ctx context.Context, q projections.ErrorQuery) ([]projections.ErrorEntry, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, s.q.exists, q.BatchID, q.Tenant).Scan(&exists); err != nil {
		return nil, "", fmt.Errorf("postgres projections: errors: %w", pgerr.Classify(err))
	}
	if !exists {
		return nil, "", notFound()
	}
	var rows pgx.Rows
	if page.Category == "" {
		rows, err = s.pool.Query(ctx, s.q.errors, q.BatchID, page.AfterIndex, page.Limit+1)
	} else {
		rows, err = s.pool.Query(ctx, s.q.errorsOf, q.BatchID, page.Category, page.AfterIndex, page.Limit+1)
	}
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: errors: %w", pgerr.Classify(err))
	}
	out := make([]projections.ErrorEntry, 0, min(page.Limit, 64))
	more := false
	var (
		e      projections.ErrorEntry
		timeNs int64
	)
	_, err = pgx.ForEachRow(rows, []any{&e.Index, &e.PhoneNumber, &e.Category, &e.Code, &e.Message, &e.Attempts, &timeNs}, func() error {
		if len(out) == page.Limit {
			more = true
			return nil
		}
		e.Time = unixNano(timeNs)
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: errors: %w", pgerr.Classify(err))
	}
	next := ""
	if more {
		next = projections.ErrorCursor(out[len(out)-1])
	}
	return out, next, nil
}

// Recipients implements projections.Store. The page is read in one
// repeatable-read transaction, a consistent view of the batch.
func (s *Store) Recipients(ctx context.Context, q projections.RecipientQuery) ([]projections.Recipient, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: recipients: %w", pgerr.Classify(err))
	}
	defer tx.Rollback(ctx)
	var raw []byte
	err = tx.QueryRow(ctx, s.q.state, q.BatchID, q.Tenant).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "", notFound()
	}
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: recipients: %w", pgerr.Classify(err))
	}
	st, err := s.reads.Decode(q.BatchID, raw)
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: recipients: state of %s: %w", q.BatchID, err)
	}
	out, next, err := projections.QueryRecipients(st, page, source{ctx: ctx, tx: tx, q: s.q, batchID: q.BatchID})
	if err != nil {
		return nil, "", fmt.Errorf("postgres projections: recipients: %w", pgerr.Classify(err))
	}
	return out, next, nil
}

// source reads a batch's recipients for projections.QueryRecipients.
type source struct {
	ctx     context.Context
	tx      pgx.Tx
	q       queries
	batchID string
}

func (src source) Numbers(page int) ([]string, error) {
	var joined string
	err := src.tx.QueryRow(src.ctx, src.q.numbers, src.batchID, page).Scan(&joined)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return projections.SplitNumbers(joined), nil
}

func (src source) Outcomes(from, to int, status, category string, limit int) ([]projections.RecipientOutcome, error) {
	var max *int64
	if limit > 0 {
		n := int64(limit)
		max = &n
	}
	var rows pgx.Rows
	var err error
	if status == "" {
		rows, err = src.tx.Query(src.ctx, src.q.outcomes, src.batchID, from, to, category, max)
	} else {
		rows, err = src.tx.Query(src.ctx, src.q.outcomesOf, src.batchID, from, to, category, max, status)
	}
	if err != nil {
		return nil, err
	}
	var out []projections.RecipientOutcome
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&raw}, func() error {
		var rec projections.RecipientOutcome
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}
