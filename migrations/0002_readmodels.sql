-- The read models (projections/postgres). They live in a schema of their own so
-- that a rebuild can fill a shadow copy (readmodels_rebuild, made with
-- CREATE TABLE ... (LIKE readmodels.x INCLUDING ALL)) and swap it in by renaming
-- schemas in one transaction. Queries name tables schema-qualified, resolved when
-- they run, so the swap takes effect at once.
--
-- Times that take part in keys or are shown to users are kept as Unix
-- nanoseconds (bigint): timestamptz keeps microseconds, and a list cursor made
-- from a nanosecond time would not find its own batch again. Ids are COLLATE "C"
-- so that SQL orders them byte-wise, as Go compares strings.
CREATE SCHEMA readmodels;

-- One row per batch: state is the projections.BatchState as JSON, from which the
-- status and analytics read models are derived; the other columns are copies of
-- its fields that queries filter and sort on.
CREATE TABLE readmodels.batches (
    id         text COLLATE "C" PRIMARY KEY,
    tenant     text COLLATE "C" NOT NULL,
    created_ns bigint NOT NULL,
    status     text NOT NULL,
    state      jsonb NOT NULL
);

-- A tenant's batches newest first.
CREATE INDEX batches_tenant_created ON readmodels.batches (tenant, created_ns DESC, id DESC);

-- One row per recipient that failed for good.
CREATE TABLE readmodels.errors (
    batch_id text COLLATE "C" NOT NULL,
    idx      integer NOT NULL,
    category text NOT NULL,
    code     text NOT NULL,
    message  text NOT NULL,
    phone    text NOT NULL,
    attempts integer NOT NULL,
    time_ns  bigint NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- A batch's errors of one category in recipient order.
CREATE INDEX errors_batch_category ON readmodels.errors (batch_id, category, idx);

-- The position of the last event applied. commit and prepare are uint64 stored
-- as their bits (values past 2^63 read as negative here); they are only
-- compared in Go. applied counts the events applied (or skipped as not
-- projected) so far, for a rebuild's progress.
CREATE TABLE readmodels.checkpoints (
    name    text PRIMARY KEY,
    commit  bigint NOT NULL DEFAULT 0,
    prepare bigint NOT NULL DEFAULT 0,
    applied bigint NOT NULL DEFAULT 0
);

INSERT INTO readmodels.checkpoints (name) VALUES ('projections');
