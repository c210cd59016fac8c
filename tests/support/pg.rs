//! The test PostgreSQL (`REGENT_TEST_DATABASE_URL`): a fresh schema per test (from `tests/common/pg.rs`), a direct
//! connection to look at what a node wrote, and clean-up.

use regent::config::PostgresConfig;
use tokio_postgres::NoTls;

pub use crate::common::pg::DATABASE_URL_VAR;

/// The test server's URL, or a panic that says how to set it.
pub fn database_url() -> String {
    std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_VAR} is not set: these tests need a PostgreSQL server, e.g. \
             {DATABASE_URL_VAR}=postgres://postgres@127.0.0.1:55440/postgres (see /work/shared/postgres.md)"
        )
    })
}

/// A `PostgresConfig` for the test server with a unique schema that nothing has used yet (the shared
/// `tests/common/pg.rs` helper: the test crate must declare `mod common;`).
pub fn fresh_postgres_config() -> PostgresConfig {
    crate::common::pg::config()
}

/// A direct connection to the test server (for looking at the tables a node wrote).
pub async fn connect() -> tokio_postgres::Client {
    let url = database_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {DATABASE_URL_VAR}={url:?}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Drops a schema made by [`fresh_postgres_config`] (best effort).
pub async fn drop_schema(schema: &str) {
    assert!(schema.starts_with("regent_t_"), "refusing to drop schema {schema:?}: not a test schema");
    let client = connect().await;
    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
}
