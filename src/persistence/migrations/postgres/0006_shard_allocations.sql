-- Where each shard lives: written by the shard coordinator (the cluster singleton), read back by its successor
-- when it fails over. `epoch` is the leader lease's epoch of the coordinator that wrote the row; every write is
-- fenced on the writer still holding that lease, so a deposed coordinator cannot allocate.
CREATE TABLE shard_allocations (
    shard        INT PRIMARY KEY,
    node         TEXT NOT NULL,
    incarnation  TEXT NOT NULL,
    epoch        BIGINT NOT NULL,
    allocated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
