-- Snapshots of entities' state; a few newest are kept per entity.
CREATE TABLE snapshots (
    entity_id  TEXT   NOT NULL,
    revision   BIGINT NOT NULL,
    written_at BIGINT NOT NULL, -- epoch milliseconds
    payload    BYTEA  NOT NULL, -- an encoded chief_of_state.v1.StateWrapper
    PRIMARY KEY (entity_id, revision)
);
