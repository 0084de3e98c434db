-- The batches that are not final, which the send processor starts from instead
-- of reading the whole event log: a partial index stays as small as the active
-- work, whatever the history.
CREATE INDEX batches_unfinished ON readmodels.batches (id) WHERE status IN ('pending', 'processing', 'paused');
