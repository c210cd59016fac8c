-- Deliberately empty: shard allocation only exists in a cluster, hence in PostgreSQL
-- (migrations/postgres/0006_shard_allocations.sql). The version keeps both lists aligned.
SELECT 1;
