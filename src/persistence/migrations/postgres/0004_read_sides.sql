-- Read sides: the journal's commit-safe position, and the offsets (and pause flags) of read sides per shard.
--
-- `tx_id` is the id of the transaction that wrote the row (`pg_current_xact_id()`, PostgreSQL 13 and later: a
-- 64-bit id with epoch, so it never wraps). Identity values (`ordering`) are drawn when a row is inserted, not when
-- it commits, so concurrent transactions can commit out of `ordering` order and a reader that polls
-- `ordering > offset` can skip a row that commits late. Read sides poll by `(tx_id, ordering)` instead, and only
-- below the oldest transaction still running (`pg_snapshot_xmin`): no row with a smaller key can appear after that.
--
-- Rows already in the journal get this migration's transaction id: ALTER TABLE waits for every transaction that
-- wrote to the journal, so they are all committed, and rows written afterwards get larger ids.
ALTER TABLE journal ADD COLUMN tx_id BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text)::bigint;

CREATE INDEX journal_shard_tx_idx ON journal (shard, tx_id, ordering);

-- One row per read side and shard: the cursor of the last row it handled ((0, 0) = none yet) and whether it is
-- paused. Either may be stored first; storing one keeps the other.
CREATE TABLE read_side_offsets (
    read_side_id TEXT    NOT NULL,
    shard        INT     NOT NULL,
    tx_id        BIGINT  NOT NULL DEFAULT 0,
    ordering     BIGINT  NOT NULL DEFAULT 0,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at   BIGINT  NOT NULL, -- epoch milliseconds
    PRIMARY KEY (read_side_id, shard)
);
