-- The batches the send processor starts from: not final, or stopped with
-- messages still in flight, which it ends once no send of them can still be
-- running (BatchState.Unfinished; "outstanding" is in the state only when not
-- empty). Still as small as the active work, whatever the history. The index
-- of 0003 is replaced (a rebuilt schema may hold it under another name: it is
-- then left, unused).
DROP INDEX IF EXISTS readmodels.batches_unfinished;
CREATE INDEX batches_unfinished_or_settling ON readmodels.batches (id)
    WHERE status IN ('pending', 'processing', 'paused') OR state ? 'outstanding';
