//! Regent's configuration: one loader, layered as defaults → TOML file → environment (the Chief of State names,
//! with the original line's legacy names as aliases) → command-line flags → [`Config::validate`].
//!
//! Every key is documented in `config/regent.example.toml` and `docs/configuration.md`;
//! `regent start --dump-config` prints the result ([`Config::to_toml`], with the password, cookie and admin token
//! hidden).
//!
//! The environment is read through one table ([`ENV_VARS`]) that maps each variable, and its legacy aliases, to a
//! key path and a value kind. Each value is parsed here, so a bad value is reported with the variable's name
//! (`COS_PORT: expected an integer, got "abc"`), then handed to figment as one dictionary layer.

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod read_sides;

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
    pub grpc_client: GrpcClientConfig,
    pub entities: EntityConfig,
    pub snapshots: SnapshotConfig,
    pub read_side: ReadSideConfig,
    pub subscriptions: SubscriptionConfig,
    pub cluster: ClusterConfig,
    pub admin: AdminConfig,
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
    /// `REGENT_TLS_CERT_FILE`: PEM certificate chain of the client port; set with `tls_key_file`, the port serves
    /// TLS only (empty = plaintext).
    pub tls_cert_file: String,
    /// `REGENT_TLS_KEY_FILE`: PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// `REGENT_TLS_CLIENT_CA_FILE`: PEM CA certificate(s); when set, clients must present a certificate it signed
    /// (mutual TLS). Needs `tls_cert_file`.
    pub tls_client_ca_file: String,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: requests in flight on one client connection
    /// (`REGENT_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// A connection that has not sent the HTTP/2 preface and its first frame header within this is closed
    /// (`REGENT_HANDSHAKE_TIMEOUT_MS`).
    pub handshake_timeout_ms: u64,
    /// Interval of the HTTP/2 PINGs the server sends on each connection; 0 = none (`REGENT_HTTP2_KEEPALIVE_INTERVAL_MS`).
    pub http2_keepalive_interval_ms: u64,
    /// A connection whose peer does not acknowledge a PING within this is closed (`REGENT_HTTP2_KEEPALIVE_TIMEOUT_MS`).
    pub http2_keepalive_timeout_ms: u64,
    /// Longest a request may take until its response starts (a request whose body never ends is answered
    /// `CANCELLED` after this); 0 = 60 s, or `entities.command_handler_timeout_secs` + 5 s when longer
    /// (`REGENT_REQUEST_TIMEOUT_MS`).
    pub request_timeout_ms: u64,
    /// `COS_SERVER_PROTOCOL`: `grpc`, or `http` / `both` to serve CoS's HTTP/JSON API too (on `http_address` and
    /// `http_port`); the gRPC port is served in every case.
    pub protocol: ServerProtocol,
    /// `COS_HTTP_ADDRESS`: where the HTTP/JSON API listens.
    pub http_address: String,
    /// `COS_HTTP_PORT` (0 = pick a free port).
    pub http_port: u16,
}

/// What the client-facing port speaks (`COS_SERVER_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerProtocol {
    #[default]
    Grpc,
    Http,
    Both,
}

impl ServerProtocol {
    /// Whether the HTTP/JSON API is served.
    pub fn serves_http(self) -> bool {
        self != Self::Grpc
    }
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

/// PostgreSQL connection and pool (`COS_DB_*`). `Debug` hides the password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    /// `REGENT_WRITE_SIDE_TLS_CA_FILE`: with `use_tls`, trust only the CA certificate(s) in this PEM file for the
    /// handler (a private CA); empty = the system's roots.
    pub tls_ca_file: String,
    /// `COS_WRITE_SIDE_BREAKER_*`: a circuit breaker around every `HandleCommand` / `HandleEvent` call of this node.
    pub breaker: BreakerConfig,
    /// `COS_WRITE_SIDE_PROTOCOL`: how the handler is called, gRPC or CoS's HTTP/JSON (`POST
    /// {base}/v1/writeside/handleCommand` and `.../handleEvent`).
    pub protocol: HandlerProtocol,
}

/// How a handler is called (`COS_WRITE_SIDE_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerProtocol {
    #[default]
    Grpc,
    Http,
}

/// A circuit breaker around handler calls (`COS_WRITE_SIDE_BREAKER_*`, `COS_READ_SIDE_BREAKER_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Failed calls in a row that open the circuit.
    pub max_failures: u32,
    /// A call running longer fails and counts as a failure, in milliseconds.
    pub call_timeout_ms: u64,
    /// How long the circuit stays open before one trial call, in milliseconds.
    pub reset_timeout_ms: u64,
}

impl Default for BreakerConfig {
    /// The write side's defaults (the read side's call timeout is 10 s).
    fn default() -> Self {
        Self { enabled: false, max_failures: 5, call_timeout_ms: 60_000, reset_timeout_ms: 60_000 }
    }
}

/// An enabled circuit breaker's settings ([`BreakerConfig::settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub max_failures: u32,
    pub call_timeout: Duration,
    pub reset_timeout: Duration,
}

impl BreakerConfig {
    /// The breaker's settings, when enabled.
    pub fn settings(&self) -> Option<BreakerSettings> {
        self.enabled.then(|| BreakerSettings {
            max_failures: self.max_failures,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            reset_timeout: Duration::from_millis(self.reset_timeout_ms),
        })
    }

    /// CoS's bounds, checked only when the breaker is enabled (as CoS does); `section` names it in errors.
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let max = self.max_failures;
        check((1..=100).contains(&max), &format!("{section}.breaker.max_failures"), || {
            format!("must be between 1 and 100, got {max}")
        })?;
        let call = self.call_timeout_ms;
        check((1..=300_000).contains(&call), &format!("{section}.breaker.call_timeout_ms"), || {
            format!("must be between 1 and 300000 (5 minutes), got {call}")
        })?;
        let reset = self.reset_timeout_ms;
        check((1_000..=HOUR_MS).contains(&reset), &format!("{section}.breaker.reset_timeout_ms"), || {
            format!("must be between 1000 and {HOUR_MS} (an hour), got {reset}")
        })
    }
}

/// Regent's outbound gRPC connections: to the write handler and to the read handlers (`COS_GRPC_KEEPALIVE_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcClientConfig {
    /// `COS_GRPC_KEEPALIVE_ENABLED`: send HTTP/2 PINGs on each connection and close one whose peer stops answering
    /// them (a handler behind a link that silently drops packets, or a load balancer that forgot the connection).
    pub keepalive_enabled: bool,
    /// `COS_GRPC_KEEPALIVE_TIME`: interval between PINGs, in milliseconds.
    pub keepalive_time_ms: u64,
    /// `COS_GRPC_KEEPALIVE_TIMEOUT`: a PING not acknowledged within this closes the connection, in milliseconds.
    pub keepalive_timeout_ms: u64,
    /// `COS_GRPC_KEEPALIVE_WITHOUT_CALLS`: PING also while no call is in flight.
    pub keepalive_without_calls: bool,
}

/// HTTP/2 keepalive of an outbound connection ([`GrpcClientConfig::keepalive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
    pub while_idle: bool,
}

impl GrpcClientConfig {
    /// The keepalive to apply, when enabled.
    pub fn keepalive(&self) -> Option<Keepalive> {
        self.keepalive_enabled.then(|| Keepalive {
            interval: Duration::from_millis(self.keepalive_time_ms),
            timeout: Duration::from_millis(self.keepalive_timeout_ms),
            while_idle: self.keepalive_without_calls,
        })
    }
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
    /// `REGENT_PASSIVATION_ACTIVE_ENTITY_LIMIT`: at most this many live entities per node; beyond it the least
    /// recently used are passivated (0 = no limit).
    pub active_entity_limit: usize,
    /// `REGENT_ENTITY_QUEUE_LIMIT`: at most this many requests wait for one entity; beyond it a request is
    /// answered `RESOURCE_EXHAUSTED` at once instead of queueing.
    pub queue_limit: usize,
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

/// Read sides: whether they run, and where they are described (the read sides themselves are loaded by
/// [`read_sides::load`], see [`Config::read_sides`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadSideConfig {
    /// `COS_READ_SIDE_ENABLED`: run the read sides and serve `ReadSideManagerService`.
    pub enabled: bool,
    /// `COS_READ_SIDE_CONFIG`: a YAML file, or a folder of them; empty = use the `COS_READ_SIDE_CONFIG__*`
    /// variables.
    pub config: String,
    /// `REGENT_READ_SIDE_TLS_CA_FILE`: for the read sides with `useTls`, trust only the CA certificate(s) in this
    /// PEM file (a private CA); empty = the system's roots.
    pub tls_ca_file: String,
    /// `COS_READ_SIDE_BREAKER_*`: a circuit breaker per read side around its `HandleReadSide` calls on this node
    /// (an open circuit fails the row at once, and the read side's failure policy applies).
    pub breaker: BreakerConfig,
}

impl Default for ReadSideConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            config: String::new(),
            tls_ca_file: String::new(),
            breaker: BreakerConfig { call_timeout_ms: 10_000, ..BreakerConfig::default() },
        }
    }
}

/// Event subscriptions (`Subscribe`, `SubscribeAll`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// `COS_SUBSCRIPTION_ENABLED`
    pub enabled: bool,
    /// `REGENT_SUBSCRIPTION_BUFFER`: events buffered per subscriber before a slow subscriber is dropped.
    pub buffer: usize,
}

/// Clustering: several nodes sharing one PostgreSQL (see `docs/cluster.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `REGENT_CLUSTER_ENABLED`: join the cluster of every node using the same PostgreSQL database and schema.
    pub enabled: bool,
    /// `REGENT_NODE_NAME`: this node's stable name (empty = the host name).
    pub node_name: String,
    /// `REGENT_CLUSTER_HOST`: the address other nodes reach this one at (empty = `POD_IP`, else the host name).
    pub host: String,
    /// `REGENT_CLUSTER_PORT`: the node-to-node listener (0 = pick a free port).
    pub port: u16,
    /// `REGENT_CLUSTER_BIND_ADDRESS`: the node-to-node listener's bind address; when it is a specific address,
    /// connections to other nodes also leave from it.
    pub bind_address: String,
    /// `REGENT_CLUSTER_BIND_PORT`: the port the listener really binds when it differs from the advertised
    /// `port` (behind NAT or a proxy; 0 = `port`).
    pub bind_port: u16,
    /// `REGENT_CLUSTER_SEEDS`: `host:port` of nodes to contact besides those the database lists.
    pub seeds: Vec<String>,
    /// `REGENT_CLUSTER_COOKIE`: the secret every node of the cluster shares (required; never printed).
    pub cookie: Secret,
    /// `COS_DEPLOYMENT_MODE`: `docker` (DNS discovery of `COS_SERVICE_NAME`) or `kubernetes`.
    pub deployment_mode: String,
    /// `COS_REPLICA_COUNT`: the number of nodes the first node waits for before the cluster forms.
    pub replica_count: usize,
    /// `POD_IP`: this pod's address (Kubernetes).
    pub pod_ip: String,
    /// `COS_KUBERNETES_APP_LABEL`: the `app` label of the pods of this cluster (Kubernetes discovery).
    pub kubernetes_app_label: String,
    /// `REGENT_CLUSTER_LEASE_TTL_MS`: a node that could not renew its lease for this long stops writing and exits.
    pub lease_ttl_ms: u64,
    /// `REGENT_CLUSTER_HEARTBEAT_INTERVAL_MS`: node-to-node heartbeats and membership polling.
    pub heartbeat_interval_ms: u64,
    /// `REGENT_CLUSTER_ACCEPTABLE_HEARTBEAT_PAUSE_MS`: the failure detector's tolerance.
    pub acceptable_heartbeat_pause_ms: u64,
    /// The phi-accrual failure detector's threshold.
    pub phi_threshold: f64,
    /// `REGENT_SBR_STRATEGY`: `keep-majority`, `static-quorum`, `keep-oldest`, `down-all` or `lease-majority`.
    pub sbr_strategy: String,
    /// `REGENT_SBR_STABLE_AFTER_MS`: how long membership and reachability must be stable before the
    /// split-brain resolver decides.
    pub sbr_stable_after_ms: u64,
    /// `REGENT_SBR_DOWN_ALL_WHEN_UNSTABLE`
    pub sbr_down_all_when_unstable: bool,
    /// `REGENT_SBR_QUORUM_SIZE`: for `static-quorum`.
    pub sbr_quorum_size: usize,
    /// `REGENT_SBR_DOWN_IF_ALONE`: for `keep-oldest`.
    pub sbr_down_if_alone: bool,
    /// `REGENT_SHARDING_REBALANCE_INTERVAL_MS`
    pub rebalance_interval_ms: u64,
    /// `REGENT_SHARDING_REBALANCE_ABSOLUTE_LIMIT`: at most this many shards move per rebalance round.
    pub rebalance_absolute_limit: usize,
    /// At most this fraction of the shards move per rebalance round.
    pub rebalance_relative_limit: f64,
    /// `REGENT_SHARDING_HANDOFF_TIMEOUT_MS`: how long a shard's entities get to stop when it moves.
    pub handoff_timeout_ms: u64,
    /// `REGENT_CLUSTER_LEAVE_TIMEOUT_MS`: how long a leaving node waits for its shards to be handed off.
    pub leave_timeout_ms: u64,
    /// `REGENT_CLUSTER_TLS_CERT_FILE`: this node's PEM certificate chain for node-to-node links. The three
    /// `tls_*` files are set together (mutual TLS) or not at all (plaintext links).
    pub tls_cert_file: String,
    /// `REGENT_CLUSTER_TLS_KEY_FILE`: the PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// `REGENT_CLUSTER_TLS_CA_FILE`: the PEM certificate(s) of the CA that signs every member's certificate; a
    /// peer must present a certificate it signed, in both directions.
    pub tls_ca_file: String,
}

/// A secret setting: its `Debug` never shows it (logs, panics); read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

/// The admin HTTP endpoint (`/health`, `/ready`, `/cluster`, `/actors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `REGENT_ADMIN_ENABLED`
    pub enabled: bool,
    /// `REGENT_ADMIN_ADDRESS`
    pub address: String,
    /// `REGENT_ADMIN_PORT` (0 = pick a free port)
    pub port: u16,
    /// `REGENT_ADMIN_TOKEN`: when set, every route but `/health`, `/ready` and the page's files needs
    /// `Authorization: Bearer <token>` (never printed).
    pub token: Secret,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: String::new(),
            host: String::new(),
            port: 25520,
            bind_address: "0.0.0.0".into(),
            bind_port: 0,
            seeds: Vec::new(),
            cookie: Secret::default(),
            deployment_mode: "docker".into(),
            replica_count: 1,
            pod_ip: String::new(),
            kubernetes_app_label: String::new(),
            lease_ttl_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            acceptable_heartbeat_pause_ms: 3_000,
            phi_threshold: 8.0,
            sbr_strategy: "keep-majority".into(),
            sbr_stable_after_ms: 20_000,
            sbr_down_all_when_unstable: true,
            sbr_quorum_size: 0,
            sbr_down_if_alone: true,
            rebalance_interval_ms: 10_000,
            rebalance_absolute_limit: 20,
            rebalance_relative_limit: 0.1,
            handoff_timeout_ms: 60_000,
            leave_timeout_ms: 30_000,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: true, address: "127.0.0.1".into(), port: 8558, token: Secret::default() }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service_name: "chiefofstate".into(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            write_side: WriteSideConfig::default(),
            grpc_client: GrpcClientConfig::default(),
            entities: EntityConfig::default(),
            snapshots: SnapshotConfig::default(),
            read_side: ReadSideConfig::default(),
            subscriptions: SubscriptionConfig::default(),
            cluster: ClusterConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: "0.0.0.0".into(),
            port: 9000,
            max_message_bytes: 4 * 1024 * 1024,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            max_concurrent_streams: 256,
            handshake_timeout_ms: 10_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 20_000,
            request_timeout_ms: 0,
            protocol: ServerProtocol::Grpc,
            http_address: "0.0.0.0".into(),
            http_port: 9001,
        }
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
            tls_ca_file: String::new(),
            breaker: BreakerConfig::default(),
            protocol: HandlerProtocol::Grpc,
        }
    }
}

impl Default for GrpcClientConfig {
    fn default() -> Self {
        Self {
            keepalive_enabled: false,
            keepalive_time_ms: 120_000,
            keepalive_timeout_ms: 60_000,
            keepalive_without_calls: true,
        }
    }
}

impl Default for EntityConfig {
    fn default() -> Self {
        Self {
            num_shards: 16,
            command_handler_timeout_secs: 5,
            passivation_idle_secs: 120,
            active_entity_limit: 0,
            queue_limit: 1000,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { frequency: 100, retain: 2, disabled: false, delete_events: false }
    }
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self { enabled: false, buffer: 1024 }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &REDACTED)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("pool_max_size", &self.pool_max_size)
            .field("pool_min_idle", &self.pool_min_idle)
            .field("pool_idle_timeout_ms", &self.pool_idle_timeout_ms)
            .field("pool_max_lifetime_ms", &self.pool_max_lifetime_ms)
            .finish()
    }
}

/// What `--dump-config` and `Debug` print instead of a credential.
const REDACTED: &str = "***";

/// Values given on the command line; each one set replaces whatever the file and the environment said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--address`
    pub address: Option<String>,
    /// `--port`
    pub port: Option<u16>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--store`
    pub backend: Option<Backend>,
    /// `--write-side-host`
    pub write_side_host: Option<String>,
    /// `--write-side-port`
    pub write_side_port: Option<u16>,
}

impl Overrides {
    fn to_dict(&self) -> Dict {
        let mut dict = Dict::new();
        if let Some(address) = &self.address {
            insert(&mut dict, "server.address", Value::from(address.clone()));
        }
        if let Some(port) = self.port {
            insert(&mut dict, "server.port", Value::from(port));
        }
        if let Some(dir) = &self.data_dir {
            insert(&mut dict, "store.data_dir", Value::from(dir.to_string_lossy().into_owned()));
        }
        if let Some(backend) = self.backend {
            insert(&mut dict, "store.backend", Value::from(backend.as_str()));
        }
        if let Some(host) = &self.write_side_host {
            insert(&mut dict, "write_side.host", Value::from(host.clone()));
        }
        if let Some(port) = self.write_side_port {
            insert(&mut dict, "write_side.port", Value::from(port));
        }
        dict
    }
}

impl Backend {
    /// The spelling used in TOML, `REGENT_STORE_BACKEND` and `--store`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A configuration that cannot be loaded or is not valid. Every variant names the key (and environment variable)
/// at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file given explicitly cannot be used.
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// An environment variable holds a value of the wrong kind.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    /// A value (from the file, usually) does not fit its key: unknown key, wrong type, out of range.
    #[error("{key}{}: {message}{}", env_hint(*.env), origin_hint(.origin))]
    Invalid { key: String, env: Option<&'static str>, origin: Option<String>, message: String },
    /// A value is well-formed but not acceptable ([`Config::validate`], [`Config::write_side_endpoint`]).
    #[error("{key}{}: {message}", env_hint(*.env))]
    Validation { key: String, env: Option<&'static str>, message: String },
}

fn env_hint(env: Option<&str>) -> String {
    env.map(|e| format!(" ({e})")).unwrap_or_default()
}

fn origin_hint(origin: &Option<String>) -> String {
    origin.as_ref().map(|o| format!(" [from {o}]")).unwrap_or_default()
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Validation { key: key.into(), env: env_name_for(key), message: message.into() }
    }

    /// Converts a figment error, keeping the key path and the provider it came from. Figment may chain several
    /// errors: the first one gives the variant's key, the others are appended to the message.
    fn from_figment(error: figment::Error) -> Self {
        let mut parts = error.into_iter().map(|e| {
            let mut path = e.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = if path.is_empty() { "(root)".to_string() } else { path.join(".") };
            let origin = e.metadata.as_ref().map(|m| match m.source.as_ref() {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ => m.name.to_string(),
            });
            let profile = match &e.profile {
                Some(p) if *p != Profile::Default => format!(" (profile {p})"),
                _ => String::new(),
            };
            (key, origin, format!("{}{profile}", e.kind))
        });
        let (key, origin, mut message) =
            parts.next().unwrap_or_else(|| ("(root)".into(), None, "invalid configuration".into()));
        for (other_key, _, other_message) in parts {
            message.push_str(&format!("; also {other_key}: {other_message}"));
        }
        let env = env_name_for(&key);
        ConfigError::Invalid { key, env, origin, message }
    }
}

/// How the text of an environment variable becomes a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    /// Taken verbatim (an empty value sets an empty string).
    Str,
    /// A non-negative integer no larger than `max`.
    Int { max: u64 },
    /// `true` / `false`, case-insensitive.
    Bool,
    /// Comma-separated list: items trimmed, empty ones dropped, duplicates dropped (first kept).
    Csv,
    /// An integer number of milliseconds.
    Millis,
    /// An integer number of seconds.
    Secs,
    /// A duration as CoS's HOCON configuration writes it (`120s`, `1m`, `500 ms`; a bare number is milliseconds),
    /// stored in milliseconds.
    Duration,
    /// `STANDARD` / `SIMPLE` / `JSON`, case-insensitive.
    LogStyle,
    /// `sqlite` / `postgres`, case-insensitive.
    Backend,
    /// `grpc` / `http` / `both`, case-insensitive.
    Protocol,
    /// `grpc` / `http`, case-insensitive (CoS rejects `both` for a handler).
    HandlerProtocol,
    /// A port where CoS's "unset" spelling `-1` means 0 (not configured).
    WriteSidePort,
}

const U16: EnvKind = EnvKind::Int { max: u16::MAX as u64 };
const U32: EnvKind = EnvKind::Int { max: u32::MAX as u64 };
/// The largest integer a setting takes: TOML's (a signed 64-bit integer), so that every loaded configuration can be
/// written back by `--dump-config` (a larger value from the environment made [`Config::to_toml`] panic).
const TOML_INT_MAX: u64 = i64::MAX as u64;
const U64: EnvKind = EnvKind::Int { max: TOML_INT_MAX };
const USIZE: EnvKind =
    EnvKind::Int { max: if (usize::MAX as u64) < TOML_INT_MAX { usize::MAX as u64 } else { TOML_INT_MAX } };

/// One environment variable: its name, the legacy names accepted when it is unset, the config key it sets.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    /// Older spellings, consulted in order only when `name` is unset (or empty).
    pub aliases: &'static [&'static str],
    /// Dotted key path in [`Config`] (the TOML path).
    pub key: &'static str,
    kind: EnvKind,
}

const fn var(name: &'static str, aliases: &'static [&'static str], key: &'static str, kind: EnvKind) -> EnvVar {
    EnvVar { name, aliases, key, kind }
}

/// Every environment variable Regent reads. The single source of truth for the environment layer.
pub const ENV_VARS: &[EnvVar] = &[
    var("COS_SERVICE_NAME", &[], "service_name", EnvKind::Str),
    var("COS_ADDRESS", &[], "server.address", EnvKind::Str),
    var("COS_PORT", &[], "server.port", U16),
    var("REGENT_MAX_MESSAGE_BYTES", &[], "server.max_message_bytes", USIZE),
    var("REGENT_TLS_CERT_FILE", &[], "server.tls_cert_file", EnvKind::Str),
    var("REGENT_TLS_KEY_FILE", &[], "server.tls_key_file", EnvKind::Str),
    var("REGENT_TLS_CLIENT_CA_FILE", &[], "server.tls_client_ca_file", EnvKind::Str),
    var("REGENT_MAX_CONCURRENT_STREAMS", &[], "server.max_concurrent_streams", U32),
    var("REGENT_HANDSHAKE_TIMEOUT_MS", &[], "server.handshake_timeout_ms", EnvKind::Millis),
    var("REGENT_HTTP2_KEEPALIVE_INTERVAL_MS", &[], "server.http2_keepalive_interval_ms", EnvKind::Millis),
    var("REGENT_HTTP2_KEEPALIVE_TIMEOUT_MS", &[], "server.http2_keepalive_timeout_ms", EnvKind::Millis),
    var("REGENT_REQUEST_TIMEOUT_MS", &[], "server.request_timeout_ms", EnvKind::Millis),
    var("COS_SERVER_PROTOCOL", &[], "server.protocol", EnvKind::Protocol),
    var("COS_HTTP_ADDRESS", &[], "server.http_address", EnvKind::Str),
    var("COS_HTTP_PORT", &[], "server.http_port", U16),
    var("LOG_LEVEL", &[], "log.level", EnvKind::Str),
    var("LOG_STYLE", &[], "log.style", EnvKind::LogStyle),
    var("REGENT_STORE_BACKEND", &[], "store.backend", EnvKind::Backend),
    var("REGENT_DATA_DIR", &[], "store.data_dir", EnvKind::Str),
    var("COS_DB_HOST", &["COS_POSTGRES_HOST"], "store.postgres.host", EnvKind::Str),
    var("COS_DB_PORT", &["COS_POSTGRES_PORT"], "store.postgres.port", U16),
    var("COS_DB_USER", &["COS_POSTGRES_USER"], "store.postgres.user", EnvKind::Str),
    var("COS_DB_PASSWORD", &["COS_POSTGRES_PASSWORD"], "store.postgres.password", EnvKind::Str),
    var("COS_DB_NAME", &["COS_POSTGRES_DB"], "store.postgres.database", EnvKind::Str),
    var("COS_DB_SCHEMA", &["COS_POSTGRES_SCHEMA"], "store.postgres.schema", EnvKind::Str),
    var("COS_DB_POOL_MAX_SIZE", &[], "store.postgres.pool_max_size", USIZE),
    var("COS_DB_POOL_MIN_IDLE_CONNECTIONS", &[], "store.postgres.pool_min_idle", USIZE),
    var("COS_DB_POOL_IDLE_TIMEOUT_MS", &[], "store.postgres.pool_idle_timeout_ms", EnvKind::Millis),
    var("COS_DB_POOL_MAX_LIFETIME_MS", &[], "store.postgres.pool_max_lifetime_ms", EnvKind::Millis),
    var(
        "COS_WRITE_SIDE_HOST",
        &["WRITE_SIDE_HANDLER_SERVICE_HOST", "HANDLER_SERVICE_HOST"],
        "write_side.host",
        EnvKind::Str,
    ),
    var(
        "COS_WRITE_SIDE_PORT",
        &["WRITE_SIDE_HANDLER_SERVICE_PORT", "HANDLER_SERVICE_PORT"],
        "write_side.port",
        EnvKind::WriteSidePort,
    ),
    var("COS_WRITE_SIDE_USE_TLS", &[], "write_side.use_tls", EnvKind::Bool),
    var("REGENT_WRITE_SIDE_TLS_CA_FILE", &[], "write_side.tls_ca_file", EnvKind::Str),
    var(
        "COS_WRITE_SIDE_PROTO_VALIDATION",
        &["HANDLER_SERVICE_ENABLE_PROTO_VALIDATION"],
        "write_side.proto_validation",
        EnvKind::Bool,
    ),
    var(
        "COS_WRITE_SIDE_STATE_PROTOS",
        &["HANDLER_SERVICE_STATES_PROTOS", "HANDLER_SERVICE_STATE_PROTO"],
        "write_side.state_protos",
        EnvKind::Csv,
    ),
    var("COS_WRITE_SIDE_EVENT_PROTOS", &["HANDLER_SERVICE_EVENTS_PROTOS"], "write_side.event_protos", EnvKind::Csv),
    var(
        "COS_WRITE_SIDE_PROPAGATED_HEADERS",
        &["COS_WRITE_PROPAGATED_HEADERS"],
        "write_side.propagated_headers",
        EnvKind::Csv,
    ),
    var("COS_WRITE_PERSISTED_HEADERS", &[], "write_side.persisted_headers", EnvKind::Csv),
    var("COS_GRPC_CALLS_TIMEOUT", &[], "write_side.calls_timeout_ms", EnvKind::Millis),
    var("COS_GRPC_CLIENT_POOL_SIZE", &[], "write_side.pool_size", USIZE),
    var("COS_WRITE_SIDE_PROTOCOL", &[], "write_side.protocol", EnvKind::HandlerProtocol),
    var("COS_WRITE_SIDE_BREAKER_ENABLED", &[], "write_side.breaker.enabled", EnvKind::Bool),
    var("COS_WRITE_SIDE_BREAKER_MAX_FAILURES", &[], "write_side.breaker.max_failures", U32),
    var("COS_WRITE_SIDE_BREAKER_CALL_TIMEOUT", &[], "write_side.breaker.call_timeout_ms", EnvKind::Duration),
    var("COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT", &[], "write_side.breaker.reset_timeout_ms", EnvKind::Duration),
    var("COS_GRPC_KEEPALIVE_ENABLED", &[], "grpc_client.keepalive_enabled", EnvKind::Bool),
    var("COS_GRPC_KEEPALIVE_TIME", &[], "grpc_client.keepalive_time_ms", EnvKind::Duration),
    var("COS_GRPC_KEEPALIVE_TIMEOUT", &[], "grpc_client.keepalive_timeout_ms", EnvKind::Duration),
    var("COS_GRPC_KEEPALIVE_WITHOUT_CALLS", &[], "grpc_client.keepalive_without_calls", EnvKind::Bool),
    var("COS_NUM_SHARDS", &[], "entities.num_shards", U32),
    var("COS_COMMAND_HANDLER_TIMEOUT", &[], "entities.command_handler_timeout_secs", EnvKind::Secs),
    var("REGENT_PASSIVATION_IDLE_SECS", &[], "entities.passivation_idle_secs", EnvKind::Secs),
    var("REGENT_PASSIVATION_ACTIVE_ENTITY_LIMIT", &[], "entities.active_entity_limit", USIZE),
    var("REGENT_ENTITY_QUEUE_LIMIT", &[], "entities.queue_limit", USIZE),
    var("COS_SNAPSHOT_FREQUENCY", &[], "snapshots.frequency", U64),
    var("COS_NUM_SNAPSHOTS_TO_RETAIN", &[], "snapshots.retain", U32),
    var("COS_DISABLE_SNAPSHOT", &[], "snapshots.disabled", EnvKind::Bool),
    var("COS_JOURNAL_LOGICAL_DELETION", &[], "snapshots.delete_events", EnvKind::Bool),
    var("COS_READ_SIDE_ENABLED", &[], "read_side.enabled", EnvKind::Bool),
    var("COS_READ_SIDE_CONFIG", &[], "read_side.config", EnvKind::Str),
    var("COS_READ_SIDE_BREAKER_ENABLED", &[], "read_side.breaker.enabled", EnvKind::Bool),
    var("COS_READ_SIDE_BREAKER_MAX_FAILURES", &[], "read_side.breaker.max_failures", U32),
    var("COS_READ_SIDE_BREAKER_CALL_TIMEOUT", &[], "read_side.breaker.call_timeout_ms", EnvKind::Duration),
    var("COS_READ_SIDE_BREAKER_RESET_TIMEOUT", &[], "read_side.breaker.reset_timeout_ms", EnvKind::Duration),
    var("REGENT_READ_SIDE_TLS_CA_FILE", &[], "read_side.tls_ca_file", EnvKind::Str),
    var("COS_SUBSCRIPTION_ENABLED", &[], "subscriptions.enabled", EnvKind::Bool),
    var("REGENT_SUBSCRIPTION_BUFFER", &[], "subscriptions.buffer", USIZE),
    var("REGENT_CLUSTER_ENABLED", &[], "cluster.enabled", EnvKind::Bool),
    var("REGENT_NODE_NAME", &[], "cluster.node_name", EnvKind::Str),
    var("REGENT_CLUSTER_HOST", &[], "cluster.host", EnvKind::Str),
    var("REGENT_CLUSTER_PORT", &[], "cluster.port", U16),
    var("REGENT_CLUSTER_BIND_ADDRESS", &[], "cluster.bind_address", EnvKind::Str),
    var("REGENT_CLUSTER_BIND_PORT", &[], "cluster.bind_port", U16),
    var("REGENT_CLUSTER_SEEDS", &[], "cluster.seeds", EnvKind::Csv),
    var("REGENT_CLUSTER_COOKIE", &[], "cluster.cookie", EnvKind::Str),
    var("COS_DEPLOYMENT_MODE", &[], "cluster.deployment_mode", EnvKind::Str),
    var(
        "COS_REPLICA_COUNT",
        &["COS_DOCKER_REPLICA_COUNT", "COS_KUBERNETES_REPLICA_COUNT"],
        "cluster.replica_count",
        USIZE,
    ),
    var("POD_IP", &[], "cluster.pod_ip", EnvKind::Str),
    var("COS_KUBERNETES_APP_LABEL", &[], "cluster.kubernetes_app_label", EnvKind::Str),
    var("REGENT_CLUSTER_LEASE_TTL_MS", &[], "cluster.lease_ttl_ms", EnvKind::Millis),
    var("REGENT_CLUSTER_HEARTBEAT_INTERVAL_MS", &[], "cluster.heartbeat_interval_ms", EnvKind::Millis),
    var("REGENT_CLUSTER_ACCEPTABLE_HEARTBEAT_PAUSE_MS", &[], "cluster.acceptable_heartbeat_pause_ms", EnvKind::Millis),
    var("REGENT_SBR_STRATEGY", &[], "cluster.sbr_strategy", EnvKind::Str),
    var("REGENT_SBR_STABLE_AFTER_MS", &[], "cluster.sbr_stable_after_ms", EnvKind::Millis),
    var("REGENT_SBR_DOWN_ALL_WHEN_UNSTABLE", &[], "cluster.sbr_down_all_when_unstable", EnvKind::Bool),
    var("REGENT_SBR_QUORUM_SIZE", &[], "cluster.sbr_quorum_size", USIZE),
    var("REGENT_SBR_DOWN_IF_ALONE", &[], "cluster.sbr_down_if_alone", EnvKind::Bool),
    var("REGENT_SHARDING_REBALANCE_INTERVAL_MS", &[], "cluster.rebalance_interval_ms", EnvKind::Millis),
    var("REGENT_SHARDING_REBALANCE_ABSOLUTE_LIMIT", &[], "cluster.rebalance_absolute_limit", USIZE),
    var("REGENT_SHARDING_HANDOFF_TIMEOUT_MS", &[], "cluster.handoff_timeout_ms", EnvKind::Millis),
    var("REGENT_CLUSTER_LEAVE_TIMEOUT_MS", &[], "cluster.leave_timeout_ms", EnvKind::Millis),
    var("REGENT_CLUSTER_TLS_CERT_FILE", &[], "cluster.tls_cert_file", EnvKind::Str),
    var("REGENT_CLUSTER_TLS_KEY_FILE", &[], "cluster.tls_key_file", EnvKind::Str),
    var("REGENT_CLUSTER_TLS_CA_FILE", &[], "cluster.tls_ca_file", EnvKind::Str),
    var("REGENT_ADMIN_ENABLED", &[], "admin.enabled", EnvKind::Bool),
    var("REGENT_ADMIN_ADDRESS", &[], "admin.address", EnvKind::Str),
    var("REGENT_ADMIN_PORT", &[], "admin.port", U16),
    var("REGENT_ADMIN_TOKEN", &[], "admin.token", EnvKind::Str),
];

/// Variables that CoS samples still set but that have no effect (in CoS either): accepted and ignored.
pub const IGNORED_ENV_VARS: &[&str] =
    &["COS_DB_CREATE_TABLES", "COS_DB_DB", "COS_EVENTS_BATCH_THRESHOLD", "COS_STORES_AUTO_CREATE"];

/// Keys that can only be set in the TOML file (or on the command line); every other key has an entry in
/// [`ENV_VARS`].
pub const TOML_ONLY_KEYS: &[&str] = &["cluster.phi_threshold", "cluster.rebalance_relative_limit"];

/// The environment variable that sets `key`, if any.
pub fn env_name_for(key: &str) -> Option<&'static str> {
    ENV_VARS.iter().find(|v| v.key == key).map(|v| v.name)
}

/// Reads a variable of the process environment (unset or not valid Unicode = `None`); pass `&process_env` to
/// [`Config::load`] or [`Config::load_with`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses one variable's text. `Ok(None)`: treat as unset (a blank value of a non-text kind).
fn parse_env_value(var: &str, kind: EnvKind, raw: &str) -> Result<Option<Value>, ConfigError> {
    let err = |message: String| ConfigError::Env { var: var.into(), message };
    let text = raw.trim();
    if kind != EnvKind::Str && kind != EnvKind::Csv && text.is_empty() {
        return Ok(None);
    }
    let int = |unit: &str, max: u64| -> Result<u64, ConfigError> {
        let n: u64 = text.parse().map_err(|_| err(format!("expected {unit}, got {raw:?}")))?;
        if n > max {
            return Err(err(format!("{n} is out of range (at most {max})")));
        }
        Ok(n)
    };
    let value = match kind {
        EnvKind::Str => Value::from(raw.to_string()),
        EnvKind::Int { max } => Value::from(int("an integer", max)?),
        EnvKind::Millis => Value::from(int("an integer number of milliseconds", TOML_INT_MAX)?),
        EnvKind::Secs => Value::from(int("an integer number of seconds", TOML_INT_MAX)?),
        EnvKind::Duration => Value::from(parse_duration_ms(text).map_err(err)?),
        EnvKind::WriteSidePort if text == "-1" => Value::from(0u16),
        EnvKind::WriteSidePort => Value::from(int("an integer (a port, or -1 for none)", u16::MAX.into())?),
        EnvKind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => return Err(err(format!("expected true or false, got {raw:?}"))),
        },
        EnvKind::Csv => Value::from(parse_csv(raw)),
        EnvKind::LogStyle => match text.to_ascii_uppercase().as_str() {
            style @ ("STANDARD" | "SIMPLE" | "JSON") => Value::from(style),
            _ => return Err(err(format!("expected STANDARD, SIMPLE or JSON, got {raw:?}"))),
        },
        EnvKind::Protocol => match text.to_ascii_lowercase().as_str() {
            protocol @ ("grpc" | "http" | "both") => Value::from(protocol),
            _ => return Err(err(format!("expected grpc, http or both, got {raw:?}"))),
        },
        EnvKind::HandlerProtocol => match text.to_ascii_lowercase().as_str() {
            protocol @ ("grpc" | "http") => Value::from(protocol),
            _ => return Err(err(format!("expected grpc or http, got {raw:?}"))),
        },
        EnvKind::Backend => match text.to_ascii_lowercase().as_str() {
            backend @ ("sqlite" | "postgres") => Value::from(backend),
            _ => return Err(err(format!("expected sqlite or postgres, got {raw:?}"))),
        },
    };
    Ok(Some(value))
}

/// A HOCON duration (`<number> [unit]`; no unit = milliseconds) in whole milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let expected = || format!("expected a duration such as 120s, 1m or 500ms, got {text:?}");
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let number: f64 = number.parse().map_err(|_| expected())?;
    let unit_ms = match unit {
        "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => 1e-6,
        "us" | "micro" | "micros" | "microsecond" | "microseconds" => 1e-3,
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "s" | "second" | "seconds" => 1e3,
        "m" | "minute" | "minutes" => 60e3,
        "h" | "hour" | "hours" => 3_600e3,
        "d" | "day" | "days" => 86_400e3,
        _ => return Err(expected()),
    };
    let ms = (number * unit_ms).round();
    if !ms.is_finite() || ms > TOML_INT_MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(ms as u64)
}

/// CoS's list syntax: split on `,`, trim, drop empty items and duplicates (keeping the first).
fn parse_csv(raw: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !items.iter().any(|seen| seen == item) {
            items.push(item.to_string());
        }
    }
    items
}

/// Builds the environment layer. Per variable: the first of name-then-aliases with a non-blank value wins; if all
/// are blank, a blank text or list value still counts (an empty password is a password).
fn env_layer(env: &dyn Fn(&str) -> Option<String>, file_sets_backend: bool) -> Result<Dict, ConfigError> {
    let mut dict = Dict::new();
    for var in ENV_VARS {
        let names = std::iter::once(var.name).chain(var.aliases.iter().copied());
        let mut blank: Option<(&str, String)> = None;
        let mut chosen = None;
        for name in names {
            let Some(raw) = env(name) else { continue };
            if raw.trim().is_empty() {
                blank.get_or_insert((name, raw));
                continue;
            }
            chosen = parse_env_value(name, var.kind, &raw)?;
            break;
        }
        if chosen.is_none()
            && let Some((name, raw)) = blank
        {
            chosen = parse_env_value(name, var.kind, &raw)?;
        }
        if let Some(value) = chosen {
            insert(&mut dict, var.key, value);
        }
    }
    // A CoS deployment pointed at Regent keeps its PostgreSQL: COS_DB_HOST alone selects the backend, unless the
    // backend was chosen explicitly (REGENT_STORE_BACKEND or store.backend in the file).
    let db_host_set = ["COS_DB_HOST", "COS_POSTGRES_HOST"].iter().any(|n| env(n).is_some_and(|v| !v.trim().is_empty()));
    if db_host_set && !file_sets_backend && !contains(&dict, "store.backend") {
        insert(&mut dict, "store.backend", Value::from(Backend::Postgres.as_str()));
    }
    Ok(dict)
}

/// Sets `value` at the dotted `path`, creating the intermediate dictionaries.
fn insert(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict.entry(head.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

fn contains(dict: &Dict, path: &str) -> bool {
    match path.split_once('.') {
        None => dict.contains_key(path),
        Some((head, rest)) => matches!(dict.get(head), Some(Value::Dict(_, inner)) if contains(inner, rest)),
    }
}

/// A figment provider over a ready-made dictionary (the environment and command-line layers).
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl Config {
    /// Loads defaults → `file` (if given; it must exist) → environment (read through `env`) → [`Self::validate`].
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::load_with(file, env, &Overrides::default())
    }

    /// [`Self::load`] with the process environment.
    pub fn load_from_process_env(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load(file, &process_env)
    }

    /// Loads defaults → `file` → environment → command-line `overrides` → [`Self::validate`].
    pub fn load_with(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let config = Self::figment(file, env, overrides)?.extract::<Config>().map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Self::load_with`] with the TOML file's text given rather than read (errors name no file). Public for the
    /// fuzz targets (`fuzz/`): whatever the text and the environment, the answer is a `Config` or an error.
    pub fn load_toml_str(
        toml: &str,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file_sets_backend = Figment::from(Toml::string(toml)).contains("store.backend");
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let config = Self::layer_env(figment, env, file_sets_backend, overrides)?
            .extract::<Config>()
            .map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    fn figment(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut file_sets_backend = false;
        if let Some(path) = file {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Err(ConfigError::File { path: path.into(), message: "not a regular file".into() }),
                Err(e) => return Err(ConfigError::File { path: path.into(), message: e.to_string() }),
            }
            file_sets_backend = Figment::from(Toml::file_exact(path)).contains("store.backend");
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::layer_env(figment, env, file_sets_backend, overrides)
    }

    /// Adds the environment and command-line layers on top of defaults and file.
    fn layer_env(
        figment: Figment,
        env: &dyn Fn(&str) -> Option<String>,
        file_sets_backend: bool,
        overrides: &Overrides,
    ) -> Result<Figment, ConfigError> {
        let env = env_layer(env, file_sets_backend)?;
        Ok(figment
            .merge(Layer { name: "environment", dict: env })
            .merge(Layer { name: "command line", dict: overrides.to_dict() }))
    }

    /// Checks the ranges and formats that the types alone do not. Write-side host and port are not required here
    /// (see [`Self::write_side_endpoint`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.service_name;
        check(!name.is_empty() && name.chars().count() <= 64, "service_name", || {
            format!("must be 1 to 64 characters, got {name:?}")
        })?;
        check(!self.server.address.is_empty(), "server.address", || "must not be empty".into())?;
        let max_message = self.server.max_message_bytes;
        check(max_message >= 1024, "server.max_message_bytes", || format!("must be at least 1024, got {max_message}"))?;
        let server = &self.server;
        check(server.max_concurrent_streams >= 1, "server.max_concurrent_streams", || "must be at least 1".into())?;
        check((100..=HOUR_MS).contains(&server.handshake_timeout_ms), "server.handshake_timeout_ms", || {
            format!("must be between 100 and {HOUR_MS} (an hour), got {}", server.handshake_timeout_ms)
        })?;
        check(server.http2_keepalive_interval_ms <= DAY_MS, "server.http2_keepalive_interval_ms", || {
            format!("must be at most {DAY_MS} (a day), got {}", server.http2_keepalive_interval_ms)
        })?;
        check(
            (100..=HOUR_MS).contains(&server.http2_keepalive_timeout_ms),
            "server.http2_keepalive_timeout_ms",
            || format!("must be between 100 and {HOUR_MS} (an hour), got {}", server.http2_keepalive_timeout_ms),
        )?;
        check(server.request_timeout_ms <= DAY_MS, "server.request_timeout_ms", || {
            format!("must be at most {DAY_MS} (a day), got {}", server.request_timeout_ms)
        })?;
        check(!self.log.level.trim().is_empty(), "log.level", || "must not be empty".into())?;
        let sqlite = self.store.backend == Backend::Sqlite;
        check(!sqlite || !self.store.data_dir.as_os_str().is_empty(), "store.data_dir", || "must not be empty".into())?;

        // The PostgreSQL section only matters, and is only checked, when it is the backend in use.
        if self.store.backend == Backend::Postgres {
            validate_postgres(&self.store.postgres)?;
        }

        let ws = &self.write_side;
        check(ws.calls_timeout_ms >= 1, "write_side.calls_timeout_ms", || "must be at least 1".into())?;
        check(ws.pool_size >= 1, "write_side.pool_size", || "must be at least 1".into())?;
        ws.breaker.validate("write_side")?;
        self.read_side.breaker.validate("read_side")?;
        let grpc = &self.grpc_client;
        for (key, ms) in [
            ("grpc_client.keepalive_time_ms", grpc.keepalive_time_ms),
            ("grpc_client.keepalive_timeout_ms", grpc.keepalive_timeout_ms),
        ] {
            check((100..=HOUR_MS).contains(&ms), key, || {
                format!("must be between 100 and {HOUR_MS} (an hour), got {ms}")
            })?;
        }

        let shards = self.entities.num_shards;
        check((1..=10_000).contains(&shards), "entities.num_shards", || {
            format!("must be between 1 and 10000, got {shards}")
        })?;
        let timeout = self.entities.command_handler_timeout_secs;
        check((1..=300).contains(&timeout), "entities.command_handler_timeout_secs", || {
            format!("must be between 1 and 300, got {timeout}")
        })?;
        check(self.entities.queue_limit >= 1, "entities.queue_limit", || "must be at least 1".into())?;

        let snap = &self.snapshots;
        check(snap.frequency >= 1, "snapshots.frequency", || "must be at least 1".into())?;
        check((1..=100).contains(&snap.retain), "snapshots.retain", || {
            format!("must be between 1 and 100, got {}", snap.retain)
        })?;
        check(self.subscriptions.buffer >= 1, "subscriptions.buffer", || "must be at least 1".into())?;
        check(!self.admin.address.is_empty(), "admin.address", || "must not be empty".into())?;
        self.validate_tls()?;
        if self.cluster.enabled {
            self.validate_cluster()?;
        }
        Ok(())
    }

    /// The TLS files come in sets: a certificate with its key (and, for the cluster, its CA); a client CA needs
    /// a server certificate. The files themselves are read when the node starts.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = |path: &str| !path.trim().is_empty();
        let s = &self.server;
        check(set(&s.tls_cert_file) == set(&s.tls_key_file), "server.tls_key_file", || {
            "server.tls_cert_file and server.tls_key_file are set together or not at all".into()
        })?;
        check(!set(&s.tls_client_ca_file) || set(&s.tls_cert_file), "server.tls_client_ca_file", || {
            "client certificates (mutual TLS) need server.tls_cert_file and server.tls_key_file".into()
        })?;
        let c = &self.cluster;
        let files = [&c.tls_cert_file, &c.tls_key_file, &c.tls_ca_file];
        check(files.iter().all(|f| set(f)) || files.iter().all(|f| !set(f)), "cluster.tls_ca_file", || {
            "cluster.tls_cert_file, cluster.tls_key_file and cluster.tls_ca_file are set together (mutual TLS \
             between nodes) or not at all"
                .into()
        })?;
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        check(self.store.backend == Backend::Postgres, "cluster.enabled", || {
            "a cluster needs the postgres store backend (COS_DB_HOST or REGENT_STORE_BACKEND=postgres)".into()
        })?;
        check(!c.cookie.expose().trim().is_empty() && c.cookie.expose() != "changeme", "cluster.cookie", || {
            "a cluster needs a secret cookie shared by its nodes; refusing to form one with an empty or default cookie"
                .into()
        })?;
        check(
            c.node_name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)) && c.node_name.len() <= 63,
            "cluster.node_name",
            || format!("must be letters, digits, - and _ (at most 63), got {:?}", c.node_name),
        )?;
        // ractor_cluster cannot tell which port it bound, and other nodes dial the advertised one.
        check(c.port != 0, "cluster.port", || "must not be 0: other nodes dial it".into())?;
        check(c.lease_ttl_ms >= 300, "cluster.lease_ttl_ms", || "must be at least 300".into())?;
        check(c.heartbeat_interval_ms >= 10, "cluster.heartbeat_interval_ms", || "must be at least 10".into())?;
        check(c.heartbeat_interval_ms < c.lease_ttl_ms, "cluster.heartbeat_interval_ms", || {
            "must be shorter than cluster.lease_ttl_ms".into()
        })?;
        check(c.phi_threshold > 0.0, "cluster.phi_threshold", || "must be positive".into())?;
        check(
            ["keep-majority", "static-quorum", "keep-oldest", "down-all", "lease-majority"]
                .contains(&c.sbr_strategy.as_str()),
            "cluster.sbr_strategy",
            || {
                format!(
                    "expected keep-majority, static-quorum, keep-oldest, down-all or lease-majority, got {:?}",
                    c.sbr_strategy
                )
            },
        )?;
        check(c.sbr_strategy != "static-quorum" || c.sbr_quorum_size >= 1, "cluster.sbr_quorum_size", || {
            "static-quorum needs a quorum size of at least 1".into()
        })?;
        check(["docker", "kubernetes"].contains(&c.deployment_mode.as_str()), "cluster.deployment_mode", || {
            format!("expected docker or kubernetes, got {:?}", c.deployment_mode)
        })?;
        check(c.replica_count >= 1, "cluster.replica_count", || "must be at least 1".into())?;
        check(c.rebalance_interval_ms >= 10, "cluster.rebalance_interval_ms", || "must be at least 10".into())?;
        check((0.0..=1.0).contains(&c.rebalance_relative_limit), "cluster.rebalance_relative_limit", || {
            "must be between 0 and 1".into()
        })?;
        for seed in &c.seeds {
            check(
                seed.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                "cluster.seeds",
                || format!("expected host:port, got {seed:?}"),
            )?;
        }
        Ok(())
    }

    /// How long a request may take until its response starts: `server.request_timeout_ms`, or when 0, 60 s (the
    /// read-side manager's calls wait up to 30 s) or the ask timeout (`entities.command_handler_timeout_secs`)
    /// plus 5 s when that is longer, so that a command is never cut short by it.
    pub fn request_timeout(&self) -> std::time::Duration {
        match self.server.request_timeout_ms {
            0 => std::time::Duration::from_secs((self.entities.command_handler_timeout_secs + 5).max(60)),
            ms => std::time::Duration::from_millis(ms),
        }
    }

    /// The write handler's URL, `http://host:port` (`https` with `use_tls`), or an error naming the missing key.
    pub fn write_side_endpoint(&self) -> Result<String, ConfigError> {
        let ws = &self.write_side;
        if ws.host.trim().is_empty() {
            return Err(ConfigError::invalid("write_side.host", "the write handler's host is not set"));
        }
        if ws.port == 0 {
            return Err(ConfigError::invalid("write_side.port", "the write handler's port is not set"));
        }
        let scheme = if ws.use_tls { "https" } else { "http" };
        let host =
            if ws.host.contains(':') && !ws.host.starts_with('[') { format!("[{}]", ws.host) } else { ws.host.clone() };
        Ok(format!("{scheme}://{host}:{}", ws.port))
    }

    /// The configured read sides: none when `read_side.enabled` is off, else [`read_sides::load`] of
    /// `read_side.config` or, when that is empty, of the `COS_READ_SIDE_CONFIG__*` variables among `env_vars`
    /// (e.g. [`read_sides::process_env_vars`]). Disabled read sides are included, marked `enabled == false`.
    pub fn read_sides(&self, env_vars: &[(String, String)]) -> Result<Vec<read_sides::ReadSideSettings>, ConfigError> {
        if !self.read_side.enabled {
            return Ok(Vec::new());
        }
        let mut sides = read_sides::load(&self.read_side.config, env_vars)?;
        for side in &mut sides {
            side.tls_ca_file = self.read_side.tls_ca_file.clone();
        }
        Ok(sides)
    }

    /// The configuration as TOML, for `--dump-config`; the database password, the cookie and the admin token are
    /// printed as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.postgres.password = REDACTED.into();
        if !shown.cluster.cookie.expose().is_empty() {
            shown.cluster.cookie = Secret(REDACTED.into());
        }
        if !shown.admin.token.expose().is_empty() {
            shown.admin.token = Secret(REDACTED.into());
        }
        shown.store.data_dir = PathBuf::from(shown.store.data_dir.to_string_lossy().into_owned());
        toml::to_string_pretty(&shown).expect("a Config with UTF-8 paths always serializes to TOML")
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// `Ok` if `ok`, else a validation error naming `key` (and its environment variable).
fn check(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError::invalid(key, message())) }
}

fn validate_postgres(pg: &PostgresConfig) -> Result<(), ConfigError> {
    check(!pg.host.is_empty(), "store.postgres.host", || "must not be empty".into())?;
    check(pg.port != 0, "store.postgres.port", || "must not be 0".into())?;
    check(!pg.database.is_empty(), "store.postgres.database", || "must not be empty".into())?;
    check(is_sql_identifier(&pg.schema), "store.postgres.schema", || {
        format!(
            "must be a plain SQL identifier (letters, digits, _; not starting with a digit; at most 63), got {:?}",
            pg.schema
        )
    })?;
    check(pg.pool_max_size >= 1, "store.postgres.pool_max_size", || "must be at least 1".into())?;
    check(pg.pool_min_idle <= pg.pool_max_size, "store.postgres.pool_min_idle", || {
        format!("must not exceed store.postgres.pool_max_size ({}), got {}", pg.pool_max_size, pg.pool_min_idle)
    })?;
    check(pg.pool_idle_timeout_ms >= 1, "store.postgres.pool_idle_timeout_ms", || "must be at least 1".into())?;
    check(pg.pool_max_lifetime_ms >= 1, "store.postgres.pool_max_lifetime_ms", || "must be at least 1".into())?;
    Ok(())
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`
fn is_sql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    /// An environment made of `pairs` only.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn load(file: Option<&Path>, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(file, &env_of(pairs))
    }

    /// Every leaf key path of the default config, e.g. `store.postgres.host`.
    fn leaf_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaf_keys(v, &path, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    fn all_leaf_keys() -> Vec<String> {
        let mut keys = Vec::new();
        leaf_keys(&toml::Value::try_from(Config::default()).unwrap(), "", &mut keys);
        keys
    }

    #[test]
    fn defaults_load_and_validate() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config, Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults() {
        let file = toml_file("service_name = \"bank\"\n[server]\nport = 9100\n[entities]\nnum_shards = 9\n");
        let config = load(Some(file.path()), &[]).unwrap();
        assert_eq!(config.service_name, "bank");
        assert_eq!(config.server.port, 9100);
        assert_eq!(config.entities.num_shards, 9);
        assert_eq!(config.server.address, "0.0.0.0", "untouched keys keep their default");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/regent.toml")), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/regent.toml"), "{err}");
    }

    #[test]
    fn env_overrides_toml() {
        let file = toml_file("[server]\nport = 9100\naddress = \"10.0.0.1\"\n");
        let config = load(Some(file.path()), &[("COS_PORT", "9200"), ("LOG_STYLE", "json")]).unwrap();
        assert_eq!(config.server.port, 9200);
        assert_eq!(config.server.address, "10.0.0.1");
        assert_eq!(config.log.style, LogStyle::Json);
    }

    #[test]
    fn every_kind_of_env_value() {
        let config = load(
            None,
            &[
                ("COS_SERVICE_NAME", "bank"),
                ("COS_DB_PASSWORD", ""),
                ("COS_DB_POOL_IDLE_TIMEOUT_MS", "30000"),
                ("COS_WRITE_SIDE_USE_TLS", "TRUE"),
                ("COS_COMMAND_HANDLER_TIMEOUT", "7"),
                ("COS_JOURNAL_LOGICAL_DELETION", "False"),
                ("REGENT_STORE_BACKEND", "SQLite"),
                ("REGENT_DATA_DIR", "/var/lib/regent"),
                ("COS_NUM_SHARDS", " "),
            ],
        )
        .unwrap();
        assert_eq!(config.service_name, "bank");
        assert_eq!(config.store.postgres.password, "", "an empty password is a password");
        assert_eq!(config.store.postgres.pool_idle_timeout_ms, 30_000);
        assert!(config.write_side.use_tls);
        assert_eq!(config.entities.command_handler_timeout_secs, 7);
        assert!(!config.snapshots.delete_events);
        assert_eq!(config.store.backend, Backend::Sqlite);
        assert_eq!(config.store.data_dir, PathBuf::from("/var/lib/regent"));
        assert_eq!(config.entities.num_shards, 16, "a blank number counts as unset");
    }

    #[test]
    fn modern_name_beats_alias() {
        let config = load(
            None,
            &[
                ("COS_WRITE_SIDE_HOST", "modern"),
                ("WRITE_SIDE_HANDLER_SERVICE_HOST", "legacy"),
                ("HANDLER_SERVICE_HOST", "oldest"),
                ("COS_DB_USER", "modern"),
                ("COS_POSTGRES_USER", "legacy"),
            ],
        )
        .unwrap();
        assert_eq!(config.write_side.host, "modern");
        assert_eq!(config.store.postgres.user, "modern");
    }

    #[test]
    fn aliases_work() {
        let config = load(
            None,
            &[
                ("COS_WRITE_SIDE_HOST", ""),
                ("WRITE_SIDE_HANDLER_SERVICE_HOST", "legacy"),
                ("HANDLER_SERVICE_PORT", "50051"),
                ("HANDLER_SERVICE_ENABLE_PROTO_VALIDATION", "true"),
                ("HANDLER_SERVICE_STATE_PROTO", "bank.Account"),
                ("HANDLER_SERVICE_EVENTS_PROTOS", "bank.Opened,bank.Closed"),
                ("COS_WRITE_PROPAGATED_HEADERS", "x-user"),
                ("COS_POSTGRES_DB", "cos"),
                ("COS_POSTGRES_SCHEMA", "cos_schema"),
            ],
        )
        .unwrap();
        assert_eq!(config.write_side.host, "legacy", "a blank modern name falls through to the alias");
        assert_eq!(config.write_side.port, 50051);
        assert!(config.write_side.proto_validation);
        assert_eq!(config.write_side.state_protos, ["bank.Account"]);
        assert_eq!(config.write_side.event_protos, ["bank.Opened", "bank.Closed"]);
        assert_eq!(config.write_side.propagated_headers, ["x-user"]);
        assert_eq!(config.store.postgres.database, "cos");
        assert_eq!(config.store.postgres.schema, "cos_schema");
    }

    #[test]
    fn write_side_port_minus_one_is_unset() {
        let file = toml_file("[write_side]\nport = 50051\n");
        let config = load(Some(file.path()), &[("COS_WRITE_SIDE_PORT", "-1")]).unwrap();
        assert_eq!(config.write_side.port, 0);
        let config = load(Some(file.path()), &[("COS_WRITE_SIDE_PORT", "")]).unwrap();
        assert_eq!(config.write_side.port, 50051, "blank = not given");
    }

    #[test]
    fn csv_values_are_trimmed_deduplicated_and_ordered() {
        assert_eq!(parse_csv(" b.B , a.A,,b.B, c.C ,"), ["b.B", "a.A", "c.C"]);
        assert!(parse_csv("").is_empty());
        assert!(parse_csv(" , ,").is_empty());
        let config = load(None, &[("COS_WRITE_PERSISTED_HEADERS", "x-a, x-b ,x-a")]).unwrap();
        assert_eq!(config.write_side.persisted_headers, ["x-a", "x-b"]);
        let config = load(None, &[("COS_WRITE_SIDE_STATE_PROTOS", "")]).unwrap();
        assert!(config.write_side.state_protos.is_empty());
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = load(None, &[("COS_PORT", "abc")]).unwrap_err();
        assert_eq!(err.to_string(), r#"COS_PORT: expected an integer, got "abc""#);
        let err = load(None, &[("COS_PORT", "70000")]).unwrap_err();
        assert!(err.to_string().starts_with("COS_PORT: 70000 is out of range"), "{err}");
        let err = load(None, &[("COS_DISABLE_SNAPSHOT", "yes")]).unwrap_err();
        assert_eq!(err.to_string(), r#"COS_DISABLE_SNAPSHOT: expected true or false, got "yes""#);
        let err = load(None, &[("LOG_STYLE", "pretty")]).unwrap_err();
        assert!(err.to_string().starts_with("LOG_STYLE:"), "{err}");
        let err = load(None, &[("HANDLER_SERVICE_PORT", "x")]).unwrap_err();
        assert!(err.to_string().starts_with("HANDLER_SERVICE_PORT:"), "an alias is named as such: {err}");
        let err = load(None, &[("REGENT_STORE_BACKEND", "mysql")]).unwrap_err();
        assert_eq!(err, ConfigError::Env { var: "REGENT_STORE_BACKEND".into(), message: err_message(&err) });
    }

    fn err_message(err: &ConfigError) -> String {
        match err {
            ConfigError::Env { message, .. } => message.clone(),
            other => panic!("not an env error: {other}"),
        }
    }

    #[test]
    fn bad_toml_names_the_key() {
        let file = toml_file("[server]\nprot = 9000\n");
        let err = load(Some(file.path()), &[]).unwrap_err();
        let ConfigError::Invalid { key, origin, .. } = &err else { panic!("{err:?}") };
        assert_eq!(key, "server.prot");
        assert!(origin.as_deref().unwrap().ends_with(".toml"), "{err}");
        assert!(err.to_string().starts_with("server.prot: unknown field"), "{err}");

        let file = toml_file("[entities]\nnum_shards = \"many\"\n");
        let err = load(Some(file.path()), &[]).unwrap_err();
        assert!(err.to_string().starts_with("entities.num_shards (COS_NUM_SHARDS): invalid type"), "{err}");

        let file = toml_file("colour = \"blue\"\n");
        let err = load(Some(file.path()), &[]).unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "colour"), "{err}");
    }

    #[test]
    fn postgres_is_selected_by_cos_db_host() {
        let config = load(None, &[("COS_DB_HOST", "db")]).unwrap();
        assert_eq!(config.store.backend, Backend::Postgres);
        assert_eq!(config.store.postgres.host, "db");
        let config = load(None, &[("COS_POSTGRES_HOST", "db")]).unwrap();
        assert_eq!(config.store.backend, Backend::Postgres, "the alias selects it too");

        let config = load(None, &[("COS_DB_HOST", "db"), ("REGENT_STORE_BACKEND", "sqlite")]).unwrap();
        assert_eq!(config.store.backend, Backend::Sqlite, "an explicit variable wins");
        let file = toml_file("[store]\nbackend = \"sqlite\"\n");
        let config = load(Some(file.path()), &[("COS_DB_HOST", "db")]).unwrap();
        assert_eq!(config.store.backend, Backend::Sqlite, "an explicit file key wins");
        let file = toml_file("[store.postgres]\nhost = \"db\"\n");
        let config = load(Some(file.path()), &[]).unwrap();
        assert_eq!(config.store.backend, Backend::Sqlite, "only the environment selects");
        let config = load(None, &[("COS_DB_HOST", "")]).unwrap();
        assert_eq!(config.store.backend, Backend::Sqlite, "a blank host selects nothing");
        let err = load(None, &[("COS_DB_HOST", ""), ("REGENT_STORE_BACKEND", "postgres")]).unwrap_err();
        assert!(err.to_string().starts_with("store.postgres.host (COS_DB_HOST)"), "{err}");
    }

    #[test]
    fn overrides_beat_env() {
        let overrides = Overrides {
            address: Some("127.0.0.1".into()),
            port: Some(0),
            data_dir: Some("/tmp/regent".into()),
            backend: Some(Backend::Sqlite),
            write_side_host: Some("handler".into()),
            write_side_port: Some(50052),
        };
        let env = env_of(&[
            ("COS_ADDRESS", "10.0.0.1"),
            ("COS_PORT", "9200"),
            ("REGENT_DATA_DIR", "/data"),
            ("COS_DB_HOST", "db"),
            ("COS_WRITE_SIDE_HOST", "env-handler"),
            ("COS_WRITE_SIDE_PORT", "50051"),
        ]);
        let config = Config::load_with(None, &env, &overrides).unwrap();
        assert_eq!(config.server.address, "127.0.0.1");
        assert_eq!(config.server.port, 0);
        assert_eq!(config.store.data_dir, PathBuf::from("/tmp/regent"));
        assert_eq!(config.store.backend, Backend::Sqlite);
        assert_eq!(config.write_side.host, "handler");
        assert_eq!(config.write_side.port, 50052);
        let config = Config::load_with(None, &env, &Overrides::default()).unwrap();
        assert_eq!(config.server.port, 9200, "no override, env stands");
    }

    #[test]
    fn validate_errors_name_keys() {
        let cases: &[(&str, &str, &str)] = &[
            ("COS_NUM_SHARDS", "0", "entities.num_shards (COS_NUM_SHARDS): must be between 1 and 10000, got 0"),
            ("COS_NUM_SHARDS", "10001", "entities.num_shards (COS_NUM_SHARDS)"),
            (
                "COS_COMMAND_HANDLER_TIMEOUT",
                "301",
                "entities.command_handler_timeout_secs (COS_COMMAND_HANDLER_TIMEOUT)",
            ),
            ("COS_NUM_SNAPSHOTS_TO_RETAIN", "0", "snapshots.retain (COS_NUM_SNAPSHOTS_TO_RETAIN)"),
            ("COS_NUM_SNAPSHOTS_TO_RETAIN", "101", "snapshots.retain (COS_NUM_SNAPSHOTS_TO_RETAIN)"),
            ("COS_SNAPSHOT_FREQUENCY", "0", "snapshots.frequency (COS_SNAPSHOT_FREQUENCY)"),
            ("COS_DB_POOL_MAX_SIZE", "0", "store.postgres.pool_max_size (COS_DB_POOL_MAX_SIZE)"),
            ("COS_GRPC_CLIENT_POOL_SIZE", "0", "write_side.pool_size (COS_GRPC_CLIENT_POOL_SIZE)"),
            ("COS_GRPC_CALLS_TIMEOUT", "0", "write_side.calls_timeout_ms (COS_GRPC_CALLS_TIMEOUT)"),
            ("REGENT_MAX_MESSAGE_BYTES", "1023", "server.max_message_bytes (REGENT_MAX_MESSAGE_BYTES)"),
            ("REGENT_MAX_CONCURRENT_STREAMS", "0", "server.max_concurrent_streams (REGENT_MAX_CONCURRENT_STREAMS)"),
            ("REGENT_HANDSHAKE_TIMEOUT_MS", "50", "server.handshake_timeout_ms (REGENT_HANDSHAKE_TIMEOUT_MS)"),
            (
                "REGENT_HTTP2_KEEPALIVE_TIMEOUT_MS",
                "0",
                "server.http2_keepalive_timeout_ms (REGENT_HTTP2_KEEPALIVE_TIMEOUT_MS)",
            ),
            ("COS_DB_SCHEMA", "my-schema", "store.postgres.schema (COS_DB_SCHEMA)"),
            ("COS_DB_SCHEMA", "1abc", "store.postgres.schema (COS_DB_SCHEMA)"),
            ("COS_SERVICE_NAME", "", "service_name (COS_SERVICE_NAME)"),
            (
                "REGENT_SUBSCRIPTION_BUFFER",
                "0",
                "subscriptions.buffer (REGENT_SUBSCRIPTION_BUFFER): must be at least 1",
            ),
        ];
        for (var, value, expected) in cases {
            let err = load(None, &[(var, value), ("REGENT_STORE_BACKEND", "postgres")]).unwrap_err();
            assert!(matches!(err, ConfigError::Validation { .. }), "{var}={value}: {err:?}");
            assert!(err.to_string().starts_with(expected), "{var}={value}: {err}");
        }
        for ok in ["_x", "Cos_2", &"a".repeat(63)] {
            assert!(is_sql_identifier(ok), "{ok}");
        }
        for bad in ["", "a b", "a;drop", "é", &"a".repeat(64)] {
            assert!(!is_sql_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn write_side_endpoint_names_missing_variables() {
        let mut config = Config::default();
        let err = config.write_side_endpoint().unwrap_err();
        assert!(err.to_string().starts_with("write_side.host (COS_WRITE_SIDE_HOST)"), "{err}");
        config.write_side.host = "handler".into();
        let err = config.write_side_endpoint().unwrap_err();
        assert!(err.to_string().starts_with("write_side.port (COS_WRITE_SIDE_PORT)"), "{err}");
        config.write_side.port = 50051;
        assert_eq!(config.write_side_endpoint().unwrap(), "http://handler:50051");
        config.write_side.use_tls = true;
        config.write_side.host = "::1".into();
        assert_eq!(config.write_side_endpoint().unwrap(), "https://[::1]:50051");
    }

    #[test]
    fn grpc_keepalive_variables_take_hocon_durations() {
        let config = Config::default();
        assert_eq!(config.grpc_client.keepalive(), None, "off by default, as in CoS");
        let config = load(
            None,
            &[
                ("COS_GRPC_KEEPALIVE_ENABLED", "true"),
                ("COS_GRPC_KEEPALIVE_TIME", "2m"),
                ("COS_GRPC_KEEPALIVE_TIMEOUT", "1500 ms"),
                ("COS_GRPC_KEEPALIVE_WITHOUT_CALLS", "false"),
            ],
        )
        .unwrap();
        let keepalive = config.grpc_client.keepalive().expect("enabled");
        assert_eq!(keepalive.interval, Duration::from_secs(120));
        assert_eq!(keepalive.timeout, Duration::from_millis(1500));
        assert!(!keepalive.while_idle);

        for (text, ms) in [("120s", 120_000), ("60 seconds", 60_000), ("1h", 3_600_000), ("250", 250), ("0.5s", 500)] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for bad in ["abc", "10 parsecs", "s", "-5s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        let err = load(None, &[("COS_GRPC_KEEPALIVE_TIME", "soon")]).unwrap_err();
        assert!(err.to_string().contains("COS_GRPC_KEEPALIVE_TIME"), "{err}");
        let err = load(None, &[("COS_GRPC_KEEPALIVE_TIMEOUT", "10ms")]).unwrap_err();
        assert!(err.to_string().starts_with("grpc_client.keepalive_timeout_ms (COS_GRPC_KEEPALIVE_TIMEOUT)"), "{err}");
    }

    #[test]
    fn protocols() {
        let config = load(None, &[("COS_WRITE_SIDE_PROTOCOL", "HTTP")]).unwrap();
        assert_eq!(config.write_side.protocol, HandlerProtocol::Http);
        let err = load(None, &[("COS_WRITE_SIDE_PROTOCOL", "both")]).unwrap_err();
        assert!(err.to_string().starts_with("COS_WRITE_SIDE_PROTOCOL: expected grpc or http"), "{err}");
        let config = load(None, &[("COS_SERVER_PROTOCOL", "Both"), ("COS_HTTP_PORT", "8080")]).unwrap();
        assert_eq!((config.server.protocol, config.server.http_port), (ServerProtocol::Both, 8080));
        assert!(config.server.protocol.serves_http() && !ServerProtocol::Grpc.serves_http());
        let err = load(None, &[("COS_SERVER_PROTOCOL", "soap")]).unwrap_err();
        assert!(err.to_string().starts_with("COS_SERVER_PROTOCOL: expected grpc, http or both"), "{err}");
    }

    #[test]
    fn breaker_variables_and_their_bounds_when_enabled() {
        assert_eq!(
            (Config::default().write_side.breaker.settings(), Config::default().read_side.breaker.settings()),
            (None, None)
        );
        let config = load(
            None,
            &[
                ("COS_WRITE_SIDE_BREAKER_ENABLED", "true"),
                ("COS_WRITE_SIDE_BREAKER_MAX_FAILURES", "3"),
                ("COS_WRITE_SIDE_BREAKER_CALL_TIMEOUT", "30s"),
                ("COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT", "2m"),
                ("COS_READ_SIDE_BREAKER_ENABLED", "true"),
            ],
        )
        .unwrap();
        let write = config.write_side.breaker.settings().expect("enabled");
        assert_eq!(
            (write.max_failures, write.call_timeout, write.reset_timeout),
            (3, Duration::from_secs(30), Duration::from_secs(120))
        );
        let read = config.read_side.breaker.settings().expect("enabled");
        assert_eq!(
            (read.max_failures, read.call_timeout, read.reset_timeout),
            (5, Duration::from_secs(10), Duration::from_secs(60)),
            "CoS's read-side defaults"
        );
        // Out-of-range settings are refused only when the breaker is on, as in CoS.
        assert!(load(None, &[("COS_WRITE_SIDE_BREAKER_MAX_FAILURES", "0")]).is_ok());
        for (var, value, key) in [
            ("COS_WRITE_SIDE_BREAKER_MAX_FAILURES", "101", "write_side.breaker.max_failures"),
            ("COS_WRITE_SIDE_BREAKER_CALL_TIMEOUT", "6m", "write_side.breaker.call_timeout_ms"),
            ("COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT", "500ms", "write_side.breaker.reset_timeout_ms"),
        ] {
            let err = load(None, &[("COS_WRITE_SIDE_BREAKER_ENABLED", "true"), (var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{key} ({var})")), "{var}={value}: {err}");
        }
        let err = load(None, &[("COS_READ_SIDE_BREAKER_ENABLED", "true"), ("COS_READ_SIDE_BREAKER_MAX_FAILURES", "0")])
            .unwrap_err();
        assert!(err.to_string().starts_with("read_side.breaker.max_failures"), "{err}");
    }

    #[test]
    fn read_side_and_subscription_variables() {
        let config = load(
            None,
            &[
                ("COS_READ_SIDE_ENABLED", "true"),
                ("COS_READ_SIDE_CONFIG", "/etc/regent/readsides"),
                ("COS_SUBSCRIPTION_ENABLED", "TRUE"),
                ("REGENT_SUBSCRIPTION_BUFFER", "16"),
            ],
        )
        .unwrap();
        assert!(config.read_side.enabled);
        assert_eq!(config.read_side.config, "/etc/regent/readsides");
        assert!(config.subscriptions.enabled);
        assert_eq!(config.subscriptions.buffer, 16);

        let vars: Vec<(String, String)> =
            [("COS_READ_SIDE_CONFIG__HOST__A", "h"), ("COS_READ_SIDE_CONFIG__PORT__A", "1")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let mut config = Config::default();
        assert!(config.read_sides(&vars).unwrap().is_empty(), "read sides off: nothing loaded");
        config.read_side.enabled = true;
        assert_eq!(config.read_sides(&vars).unwrap()[0].endpoint(), "http://h:1");
    }

    #[test]
    fn dump_hides_the_password() {
        let config = load(None, &[("COS_DB_PASSWORD", "s3cret-pw")]).unwrap();
        let dump = config.to_toml();
        assert!(!dump.contains("s3cret-pw"), "{dump}");
        assert!(dump.contains(r#"password = "***""#), "{dump}");
        assert!(!format!("{config:?}").contains("s3cret-pw"), "Debug hides it too");
        // The dump is itself a valid config file.
        let file = toml_file(&dump);
        let reloaded = load(Some(file.path()), &[]).unwrap();
        assert_eq!(reloaded.store.postgres.password, "***");
        assert_eq!(reloaded.server, config.server);
    }

    #[test]
    fn ignored_variables_change_nothing() {
        let pairs: Vec<(&str, &str)> = IGNORED_ENV_VARS.iter().map(|v| (*v, "whatever")).collect();
        assert_eq!(load(None, &pairs).unwrap(), Config::default());
        assert_eq!(load(None, &[("COS_DOCKER_SERVICE_NAME", "other")]).unwrap().service_name, "chiefofstate");
    }

    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/regent.example.toml");
        assert_eq!(load(Some(&path), &[]).unwrap(), Config::default());
        // Every key is written out (only store.backend is commented, see the file), with its default value.
        let mut expected = toml::Value::try_from(Config::default()).unwrap();
        expected["store"].as_table_mut().unwrap().remove("backend");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(toml::from_str::<toml::Value>(&text).unwrap(), expected);
        assert!(text.contains("\n# backend = \"sqlite\"\n"));
        // ... and documented with its environment variables.
        for var in ENV_VARS {
            for name in std::iter::once(&var.name).chain(var.aliases) {
                assert!(text.contains(name), "{name} is not mentioned in the example file");
            }
        }
    }

    #[test]
    fn every_key_has_an_env_mapping_or_is_toml_only() {
        let keys = all_leaf_keys();
        for key in &keys {
            let mapped = ENV_VARS.iter().any(|v| v.key == key);
            let toml_only = TOML_ONLY_KEYS.contains(&key.as_str());
            assert!(mapped ^ toml_only, "{key}: needs exactly one of an ENV_VARS entry or a TOML_ONLY_KEYS entry");
        }
        for var in ENV_VARS {
            assert!(keys.iter().any(|k| k == var.key), "{} maps to unknown key {}", var.name, var.key);
        }
        let mut names: Vec<&str> =
            ENV_VARS.iter().flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied())).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "an environment variable is mapped twice");
    }

    #[test]
    fn reference_doc_lists_every_key_and_variable() {
        let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap();
        for key in all_leaf_keys() {
            assert!(doc.contains(&format!("| `{key}` |")), "{key} is missing from docs/configuration.md");
        }
        for var in ENV_VARS {
            for name in std::iter::once(&var.name).chain(var.aliases) {
                assert!(doc.contains(&format!("`{name}`")), "{name} is missing from docs/configuration.md");
            }
        }
        for name in IGNORED_ENV_VARS {
            assert!(doc.contains(&format!("`{name}`")), "{name} is missing from docs/configuration.md");
        }
    }

    #[test]
    fn tls_files_come_in_sets() {
        let ok: &[&[(&str, &str)]] = &[
            &[],
            &[("REGENT_TLS_CERT_FILE", "c.pem"), ("REGENT_TLS_KEY_FILE", "k.pem")],
            &[("REGENT_TLS_CERT_FILE", "c"), ("REGENT_TLS_KEY_FILE", "k"), ("REGENT_TLS_CLIENT_CA_FILE", "ca")],
            &[
                ("REGENT_CLUSTER_TLS_CERT_FILE", "c"),
                ("REGENT_CLUSTER_TLS_KEY_FILE", "k"),
                ("REGENT_CLUSTER_TLS_CA_FILE", "a"),
            ],
            &[("REGENT_WRITE_SIDE_TLS_CA_FILE", "ca"), ("REGENT_READ_SIDE_TLS_CA_FILE", "ca")],
        ];
        for vars in ok {
            load(None, vars).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
        }
        let bad: &[(&[(&str, &str)], &str)] = &[
            (&[("REGENT_TLS_CERT_FILE", "c.pem")], "server.tls_key_file (REGENT_TLS_KEY_FILE)"),
            (&[("REGENT_TLS_KEY_FILE", "k.pem")], "server.tls_key_file (REGENT_TLS_KEY_FILE)"),
            (&[("REGENT_TLS_CLIENT_CA_FILE", "ca")], "server.tls_client_ca_file (REGENT_TLS_CLIENT_CA_FILE)"),
            (
                &[("REGENT_CLUSTER_TLS_CERT_FILE", "c"), ("REGENT_CLUSTER_TLS_KEY_FILE", "k")],
                "cluster.tls_ca_file (REGENT_CLUSTER_TLS_CA_FILE)",
            ),
            (&[("REGENT_CLUSTER_TLS_CA_FILE", "a")], "cluster.tls_ca_file (REGENT_CLUSTER_TLS_CA_FILE)"),
        ];
        for (vars, expected) in bad {
            let err = load(None, vars).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn the_admin_token_is_never_printed() {
        let config = load(None, &[("REGENT_ADMIN_TOKEN", "s3cret-token")]).unwrap();
        assert_eq!(config.admin.token.expose(), "s3cret-token");
        assert!(!format!("{config:?}").contains("s3cret-token"));
        let dump = config.to_toml();
        assert!(!dump.contains("s3cret-token") && dump.contains(r#"token = "***""#), "{dump}");
        assert!(Config::default().to_toml().contains(r#"token = """#), "no token: nothing to hide");
    }

    #[test]
    fn integers_beyond_toml_are_refused_so_the_dump_never_panics() {
        // Found by the config_toml fuzz target: u64::MAX from the environment made `--dump-config` panic.
        let err = load(None, &[("COS_SNAPSHOT_FREQUENCY", "18446744073709551615")]).unwrap_err();
        assert!(err.to_string().contains("COS_SNAPSHOT_FREQUENCY"), "{err}");
        let err = load(None, &[("COS_DB_POOL_IDLE_TIMEOUT_MS", "9223372036854775808")]).unwrap_err();
        assert!(err_message(&err).contains("out of range"), "{err}");
        let config = load(None, &[("COS_SNAPSHOT_FREQUENCY", "9223372036854775807")]).unwrap();
        let dumped = config.to_toml();
        assert!(dumped.contains("frequency = 9223372036854775807"), "{dumped}");
    }

    #[test]
    fn request_timeout_never_cuts_a_command_short() {
        use std::time::Duration;
        let config = load(None, &[]).unwrap();
        assert_eq!(config.request_timeout(), Duration::from_secs(60));
        let config = load(None, &[("COS_COMMAND_HANDLER_TIMEOUT", "120")]).unwrap();
        assert_eq!(config.request_timeout(), Duration::from_secs(125));
        let config = load(None, &[("REGENT_REQUEST_TIMEOUT_MS", "3000")]).unwrap();
        assert_eq!(config.request_timeout(), Duration::from_millis(3000));
    }

    #[test]
    fn the_cluster_cookie_is_never_printed() {
        let config = load(None, &[("REGENT_CLUSTER_COOKIE", "s3cret-cookie")]).unwrap();
        assert_eq!(config.cluster.cookie.expose(), "s3cret-cookie");
        assert!(!format!("{config:?}").contains("s3cret-cookie"));
        assert!(!config.to_toml().contains("s3cret-cookie"));
    }
}
