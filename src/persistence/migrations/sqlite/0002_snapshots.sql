-- Snapshots of entities' state; a few newest are kept per entity.
CREATE TABLE snapshots (
    entity_id  TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    written_at INTEGER NOT NULL, -- epoch milliseconds
    payload    BLOB    NOT NULL, -- an encoded chief_of_state.v1.StateWrapper
    PRIMARY KEY (entity_id, revision)
);
