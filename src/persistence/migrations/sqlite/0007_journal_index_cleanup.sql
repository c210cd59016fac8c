-- Nothing to change on SQLite: its read sides poll by (shard, ordering) (a single writer commits in ordering
-- order), so journal_shard_ordering_idx stays. The migration exists so that both backends share one numbering.
SELECT 1;
