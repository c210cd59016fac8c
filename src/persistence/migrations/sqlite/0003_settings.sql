-- Settings fixed at the first boot of a database, such as `num_shards`, checked by every node that opens it.
CREATE TABLE regent_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
