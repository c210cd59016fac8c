-- The event journal: the same logical table as PostgreSQL's, laid out for SQLite. `ordering` is the rowid
-- (AUTOINCREMENT, so a position is never reused after deletions) and (entity_id, revision) is a unique key, so
-- that two writers of the same revision collide (SQLITE_CONSTRAINT_UNIQUE, reported as a concurrency conflict).
CREATE TABLE journal (
    ordering   INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_id  TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    shard      INTEGER NOT NULL,
    written_at INTEGER NOT NULL, -- epoch milliseconds
    payload    BLOB    NOT NULL, -- an encoded chief_of_state.v1.EventWrapper
    UNIQUE (entity_id, revision)
);

CREATE INDEX journal_shard_ordering_idx ON journal (shard, ordering);
