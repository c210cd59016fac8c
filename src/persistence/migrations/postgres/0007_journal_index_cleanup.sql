-- Read sides poll the journal by (shard, tx_id, ordering) since 0004 (journal_shard_tx_idx); nothing reads it by
-- (shard, ordering) any more. Dropping that index saves one index entry (and its WAL) per event written.
DROP INDEX IF EXISTS journal_shard_ordering_idx;
