-- Read sides: the offsets (and pause flags) of read sides per shard, as in PostgreSQL.
--
-- The journal needs no transaction column here. SQLite writes are serial (one connection behind a mutex, and
-- `BEGIN IMMEDIATE` holds the file's write lock from the first insert to the commit, even across processes), and
-- `ordering` is an AUTOINCREMENT rowid, always above every value ever used: rows become visible in `ordering`
-- order, so a read side's cursor is `(ordering, ordering)` and `ordering > offset` never skips a row.
CREATE TABLE read_side_offsets (
    read_side_id TEXT    NOT NULL,
    shard        INTEGER NOT NULL,
    tx_id        INTEGER NOT NULL DEFAULT 0, -- always equal to `ordering`
    ordering     INTEGER NOT NULL DEFAULT 0,
    paused       INTEGER NOT NULL DEFAULT 0, -- boolean
    updated_at   INTEGER NOT NULL,           -- epoch milliseconds
    PRIMARY KEY (read_side_id, shard)
) WITHOUT ROWID;
