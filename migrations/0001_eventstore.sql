-- The event store (eventstore/postgres). See that package's doc for why positions
-- are (xid, global_id) and why reads of the global order stop at the snapshot's xmin.

-- streams holds each stream's last revision; appends lock its row, so appends to
-- one stream are checked against their expected revision one after another.
CREATE TABLE streams (
    stream   text   PRIMARY KEY,
    revision bigint NOT NULL
);

CREATE TABLE events (
    -- Tie-breaker inside one transaction: a sequence, so not gap-free and not in
    -- commit order; only (xid, global_id) is the global order.
    global_id  bigserial   NOT NULL,
    -- The writing transaction's id: the global order's first key.
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream     text        NOT NULL,
    revision   bigint      NOT NULL CHECK (revision >= 0),
    id         text        NOT NULL,
    type       text        NOT NULL,
    -- bytea, not jsonb: events read back byte for byte as appended.
    data       bytea       NOT NULL,
    metadata   bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, revision),
    CONSTRAINT events_id_key UNIQUE (id)
);

CREATE UNIQUE INDEX events_global_order ON events (xid, global_id);
