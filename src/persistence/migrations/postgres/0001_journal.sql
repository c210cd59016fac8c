-- The event journal: one row per event, keyed by (entity_id, revision) so that two writers of the same revision
-- collide on the primary key (SQLSTATE 23505, reported as a concurrency conflict).
-- `ordering` is a global, increasing position for read sides, which poll by (shard, ordering).
CREATE TABLE journal (
    ordering   BIGINT GENERATED ALWAYS AS IDENTITY,
    entity_id  TEXT   NOT NULL,
    revision   BIGINT NOT NULL,
    shard      INT    NOT NULL,
    written_at BIGINT NOT NULL, -- epoch milliseconds
    payload    BYTEA  NOT NULL, -- an encoded chief_of_state.v1.EventWrapper
    PRIMARY KEY (entity_id, revision)
);

CREATE UNIQUE INDEX journal_ordering_idx ON journal (ordering);
CREATE INDEX journal_shard_ordering_idx ON journal (shard, ordering);
