//! The test PostgreSQL: `REGENT_TEST_DATABASE_URL` (set by `scripts/test.sh`, which starts the server), and a
//! fresh schema per call so that tests never see each other's rows.

use regent::config::PostgresConfig;
use std::str::FromStr;
use tokio_postgres::config::Host;

/// The environment variable naming the test server, e.g. `postgres://postgres@127.0.0.1:55433/postgres`.
pub const DATABASE_URL_VAR: &str = "REGENT_TEST_DATABASE_URL";

/// The test server's settings with a new, unique schema (`regent_t_<uuid>`), which the store creates on open.
///
/// Panics when `REGENT_TEST_DATABASE_URL` is unset or unparsable: PostgreSQL tests never skip silently.
pub fn config() -> PostgresConfig {
    let url = std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!("{DATABASE_URL_VAR} is not set: run the suite with scripts/test.sh, which starts PostgreSQL")
    });
    let parsed = tokio_postgres::Config::from_str(&url)
        .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR}={url:?} is not a PostgreSQL URL: {e}"));
    let defaults = PostgresConfig::default();
    let host = match parsed.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => "127.0.0.1".into(),
    };
    PostgresConfig {
        host,
        port: parsed.get_ports().first().copied().unwrap_or(5432),
        user: parsed.get_user().unwrap_or("postgres").into(),
        password: parsed.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        database: parsed.get_dbname().unwrap_or("postgres").into(),
        schema: unique_schema(),
        pool_max_size: 8,
        ..defaults
    }
}

/// `regent_t_` and a v4 UUID in lowercase hex: 41 characters, a plain identifier.
pub fn unique_schema() -> String {
    let mut name = format!("regent_t_{}", uuid::Uuid::new_v4().simple());
    name.truncate(63);
    name
}
