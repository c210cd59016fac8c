//! Regent's configuration: one loader, layered as defaults → TOML file → environment (the Chief of State names,
//! with the original line's legacy names as aliases) → command-line flags → [`Config::validate`].
//!
//! Every key is documented in `config/regent.example.toml`; `regent start --dump-config` prints the result.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `COS_SERVICE_NAME`: service name, used in logs and traces.
    pub service_name: String,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub write_side: WriteSideConfig,
    pub entities: EntityConfig,
    pub snapshots: SnapshotConfig,
}

/// The client-facing gRPC listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `COS_ADDRESS`
    pub address: String,
    /// `COS_PORT` (0 = pick a free port)
    pub port: u16,
    /// Largest gRPC message accepted or sent, in bytes (`REGENT_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `LOG_LEVEL`: DEBUG, INFO, WARN, ERROR (or any `tracing` filter directive).
    pub level: String,
    /// `LOG_STYLE`: STANDARD, SIMPLE or JSON.
    pub style: LogStyle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogStyle {
    Standard,
    Simple,
    Json,
}

/// Where journal and snapshots live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `REGENT_STORE_BACKEND`: `sqlite` (embedded, the default) or `postgres`.
    pub backend: Backend,
    /// `REGENT_DATA_DIR`: folder of the embedded store's file.
    pub data_dir: PathBuf,
    pub postgres: PostgresConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// PostgreSQL connection and pool (`COS_DB_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// `COS_DB_SCHEMA`: created if missing; must be a plain SQL identifier.
    pub schema: String,
    pub pool_max_size: usize,
    pub pool_min_idle: usize,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_lifetime_ms: u64,
}

/// The application's write handler (`COS_WRITE_SIDE_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteSideConfig {
    pub host: String,
    /// 0 = not configured.
    pub port: u16,
    pub use_tls: bool,
    pub proto_validation: bool,
    /// Fully-qualified state message names accepted when `proto_validation` is on.
    pub state_protos: Vec<String>,
    /// Fully-qualified event message names accepted when `proto_validation` is on.
    pub event_protos: Vec<String>,
    /// Incoming metadata keys forwarded to `HandleCommand`.
    pub propagated_headers: Vec<String>,
    /// Incoming metadata keys stored into `MetaData.headers` of new events.
    pub persisted_headers: Vec<String>,
    /// `COS_GRPC_CALLS_TIMEOUT`: deadline of each `HandleCommand` / `HandleEvent` call, in milliseconds.
    pub calls_timeout_ms: u64,
    /// `COS_GRPC_CLIENT_POOL_SIZE`: channels to the handler, used round-robin.
    pub pool_size: usize,
}

/// Entities, shards, passivation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntityConfig {
    /// `COS_NUM_SHARDS`: fixed for the life of a database.
    pub num_shards: u32,
    /// `COS_COMMAND_HANDLER_TIMEOUT`: how long a request waits for its entity, in seconds.
    pub command_handler_timeout_secs: u64,
    /// `REGENT_PASSIVATION_IDLE_SECS`: stop an entity after this long without a message (0 = never).
    pub passivation_idle_secs: u64,
}

/// Snapshots and journal compaction (`COS_SNAPSHOT_FREQUENCY`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `COS_SNAPSHOT_FREQUENCY`: snapshot every N events.
    pub frequency: u64,
    /// `COS_NUM_SNAPSHOTS_TO_RETAIN`
    pub retain: u32,
    /// `COS_DISABLE_SNAPSHOT`
    pub disabled: bool,
    /// `COS_JOURNAL_LOGICAL_DELETION`: delete events covered by the retained snapshots.
    pub delete_events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service_name: "chiefofstate".into(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            write_side: WriteSideConfig::default(),
            entities: EntityConfig::default(),
            snapshots: SnapshotConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { address: "0.0.0.0".into(), port: 9000, max_message_bytes: 4 * 1024 * 1024 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "INFO".into(), style: LogStyle::Standard }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { backend: Backend::Sqlite, data_dir: PathBuf::from("data"), postgres: PostgresConfig::default() }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: "changeme".into(),
            database: "postgres".into(),
            schema: "public".into(),
            pool_max_size: 5,
            pool_min_idle: 1,
            pool_idle_timeout_ms: 60_000,
            pool_max_lifetime_ms: 120_000,
        }
    }
}

impl Default for WriteSideConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 0,
            use_tls: false,
            proto_validation: false,
            state_protos: Vec::new(),
            event_protos: Vec::new(),
            propagated_headers: Vec::new(),
            persisted_headers: Vec::new(),
            calls_timeout_ms: 60_000,
            pool_size: 1,
        }
    }
}

impl Default for EntityConfig {
    fn default() -> Self {
        Self { num_shards: 16, command_handler_timeout_secs: 5, passivation_idle_secs: 120 }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { frequency: 100, retain: 2, disabled: false, delete_events: false }
    }
}

// TEMPORARY until the loader lands.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    pub fn write_side_endpoint(&self) -> Result<String, ConfigError> {
        let scheme = if self.write_side.use_tls { "https" } else { "http" };
        Ok(format!("{scheme}://{}:{}", self.write_side.host, self.write_side.port))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub backend: Option<Backend>,
    pub write_side_host: Option<String>,
    pub write_side_port: Option<u16>,
}

impl Config {
    pub fn load_with(
        file: Option<&std::path::Path>,
        _env: &dyn Fn(&str) -> Option<String>,
        o: &Overrides,
    ) -> Result<Config, ConfigError> {
        use figment::providers::{Format, Serialized, Toml};
        let mut f = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            f = f.merge(Toml::file(file));
        }
        let mut c: Config = f.extract().map_err(|e| ConfigError { key: "file".into(), message: e.to_string() })?;
        if let Some(v) = &o.address {
            c.server.address = v.clone();
        }
        if let Some(v) = o.port {
            c.server.port = v;
        }
        if let Some(v) = &o.data_dir {
            c.store.data_dir = v.clone();
        }
        if let Some(v) = o.backend {
            c.store.backend = v;
        }
        if let Some(v) = &o.write_side_host {
            c.write_side.host = v.clone();
        }
        if let Some(v) = o.write_side_port {
            c.write_side.port = v;
        }
        c.validate()?;
        Ok(c)
    }
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}
