-- Campaign management (projections/postgres): the list's filters and the
-- recipients read model.

-- The batch's name, lower-cased in Go (projections.FoldName), for ?q=: lower()
-- here would depend on the database's locale, and the stores must agree.
ALTER TABLE readmodels.batches ADD COLUMN name_folded text NOT NULL DEFAULT '';

-- A tenant's batches of one status, newest first (?status=).
CREATE INDEX batches_tenant_status_created ON readmodels.batches (tenant, status, created_ns DESC, id DESC);

-- The recipients' numbers, one row per page of the recipients stream (1,000
-- numbers joined by newlines): a million recipients are a thousand rows
-- written at create time, not a million.
CREATE TABLE readmodels.recipient_numbers (
    batch_id text COLLATE "C" NOT NULL,
    page     integer NOT NULL,
    numbers  text NOT NULL,
    PRIMARY KEY (batch_id, page)
);

-- One row per recipient dispatched or skipped: status and category to filter
-- on, the record (projections.RecipientOutcome) as JSON text. A recipient
-- without a row was never dispatched.
CREATE TABLE readmodels.recipient_outcomes (
    batch_id text COLLATE "C" NOT NULL,
    idx      integer NOT NULL,
    status   text NOT NULL,
    category text NOT NULL,
    outcome  text NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- A batch's recipients of one status in index order (?status=failed...).
CREATE INDEX recipient_outcomes_status ON readmodels.recipient_outcomes (batch_id, status, idx);
