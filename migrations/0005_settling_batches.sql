-- The batches the send processor starts from: not final, or stopped with
-- messages still in flight, which it ends once no send of them can still be
-- running (BatchState.Unfinished; "outstanding" is in the state only when not
-- empty). Still as small as the active work, whatever the history.
CREATE INDEX batches_unfinished_or_settling ON readmodels.batches (id)
    WHERE status IN ('pending', 'processing', 'paused') OR state ? 'outstanding';

-- The index of 0003 it replaces, by its definition: a read model rebuilt
-- before this version holds it under a generated name.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT indexname FROM pg_indexes
             WHERE schemaname = 'readmodels' AND tablename = 'batches'
               AND indexdef LIKE '% USING btree (id) WHERE (status = ANY (ARRAY[''pending''::text, ''processing''::text, ''paused''::text]))'
    LOOP
        EXECUTE format('DROP INDEX readmodels.%I', r.indexname);
    END LOOP;
END $$;
