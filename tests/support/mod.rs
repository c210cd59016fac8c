//! Test support for the node-level integration tests: a scriptable write handler ([`handler`]), a fresh
//! PostgreSQL schema per test ([`pg`]) and [`TestNode`], a real `regent::Node` on `127.0.0.1:0` wired to both.
//!
//! For the multi-process cluster suites (`tests/cluster.rs`, `tests/cluster_faults.rs`): [`cluster`] starts real
//! `regent` processes behind a [`fault_proxy`], [`load`] drives them with retrying clients, [`history`] is the
//! list-append write handler, ownership registry and checker, [`read_sink`] records read-side deliveries and checks
//! I4, [`actor_tree`] reads `/actors`, [`report`] records scenario results for docs/reliability.md. [`private_pg`]
//! starts a PostgreSQL server of the test's own, for the tests that restart or stop the database
//! (`tests/pg_faults.rs`).
#![allow(dead_code)]

pub mod actor_tree;
pub mod cluster;
pub mod fault_proxy;
pub mod handler;
pub mod history;
pub mod load;
pub mod nodes;
pub mod pg;
pub mod private_pg;
pub mod read_handler;
pub mod read_sink;
pub mod report;

use std::future::Future;
use std::time::{Duration, Instant};

use prost::Message as _;
use prost_types::Any;
use tonic::transport::Channel;
use tonic::{Request, Status};

use regent::Node;
use regent::config::{Backend, Config};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{
    EventWrapper, GetStateRequest, GetStateResponse, ProcessCommandRequest, ProcessCommandResponse, StateWrapper,
};

pub use handler::{CallLog, TestHandler};

/// Installs a test-friendly log subscriber once (`RUST_LOG` to see more; warnings by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,h2=warn,hyper=warn,tower=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A unique entity id, so that tests never share an entity.
pub fn entity(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` every 25 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One row of the `journal` table, payload decoded.
#[derive(Debug, Clone)]
pub struct JournalRow {
    pub revision: i64,
    pub shard: i64,
    pub event: EventWrapper,
}

/// A node under test, its write handler and a connected client.
pub struct TestNode {
    pub handler: TestHandler,
    pub config: Config,
    pub client: ChiefOfStateServiceClient<Channel>,
    node: Option<Node>,
}

/// The configuration every test starts from: loopback, port 0 (gRPC and admin), the given handler, a fresh Postgres
/// schema, short timeouts.
pub fn base_config(handler: &TestHandler) -> Config {
    let mut config = Config::default();
    config.server.address = "127.0.0.1".into();
    config.server.port = 0;
    config.write_side.host = "127.0.0.1".into();
    config.write_side.port = handler.addr().port();
    config.write_side.calls_timeout_ms = 5_000;
    config.entities.command_handler_timeout_secs = 5;
    config.store.backend = Backend::Postgres;
    config.store.postgres = pg::fresh_postgres_config();
    // Many nodes share the process: never the fixed admin port.
    config.admin.port = 0;
    config
}

impl TestNode {
    /// Starts a test handler and a node using it; `tweak` adjusts the configuration last.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestNode {
        init_logging();
        let handler = TestHandler::start().await;
        let mut config = base_config(&handler);
        tweak(&mut config);
        let node = start_node(&config).await;
        let client = connect(&node).await;
        TestNode { handler, config, client, node: Some(node) }
    }

    /// The running node (panics between [`stop_node`](Self::stop_node) and [`start_node`](Self::start_node)).
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("the node is stopped")
    }

    /// Stops the node (graceful shutdown), keeping its store.
    pub async fn stop_node(&mut self) {
        if let Some(node) = self.node.take() {
            tokio::time::timeout(Duration::from_secs(20), node.shutdown())
                .await
                .expect("node shutdown took more than 20 s")
                .expect("node shutdown failed");
        }
    }

    /// Starts a new node on the same configuration (same store) and reconnects the client.
    pub async fn start_node(&mut self) {
        assert!(self.node.is_none(), "start_node while a node is running");
        let node = start_node(&self.config).await;
        self.client = connect(&node).await;
        self.node = Some(node);
    }

    /// Stops the node and starts a fresh one on the same store.
    pub async fn restart(&mut self) {
        self.stop_node().await;
        self.start_node().await;
    }

    /// Shuts everything down and drops the test schema.
    pub async fn shutdown(mut self) {
        self.stop_node().await;
        self.handler.stop().await;
        if self.config.store.backend == Backend::Postgres {
            pg::drop_schema(&self.config.store.postgres.schema).await;
        }
    }

    pub fn log(&self) -> &CallLog {
        &self.handler.log
    }

    /// `ProcessCommand(entity_id, command)`.
    pub async fn process(&self, entity_id: &str, command: Any) -> Result<ProcessCommandResponse, Status> {
        self.process_request(Request::new(ProcessCommandRequest {
            entity_id: entity_id.into(),
            command: Some(command),
        }))
        .await
    }

    pub async fn process_request(
        &self,
        request: Request<ProcessCommandRequest>,
    ) -> Result<ProcessCommandResponse, Status> {
        self.client.clone().process_command(request).await.map(tonic::Response::into_inner)
    }

    /// `GetState(entity_id)`.
    pub async fn get(&self, entity_id: &str) -> Result<GetStateResponse, Status> {
        self.client
            .clone()
            .get_state(GetStateRequest { entity_id: entity_id.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `schema.table`, quoted.
    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".{table}", self.config.store.postgres.schema)
    }

    /// The entity's journal rows, by revision.
    pub async fn journal(&self, entity_id: &str) -> Vec<JournalRow> {
        let db = pg::connect().await;
        let sql = format!(
            "SELECT revision::bigint, shard::bigint, payload FROM {} WHERE entity_id = $1 ORDER BY revision",
            self.table("journal")
        );
        db.query(&sql, &[&entity_id])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| JournalRow {
                revision: row.get(0),
                shard: row.get(1),
                event: EventWrapper::decode(row.get::<_, &[u8]>(2)).expect("journal payload is an EventWrapper"),
            })
            .collect()
    }

    /// The revisions of the entity's journal rows.
    pub async fn journal_revisions(&self, entity_id: &str) -> Vec<i64> {
        self.journal(entity_id).await.iter().map(|r| r.revision).collect()
    }

    /// The entity's snapshots `(revision, state)`, by revision.
    pub async fn snapshots(&self, entity_id: &str) -> Vec<(i64, StateWrapper)> {
        let db = pg::connect().await;
        let sql = format!(
            "SELECT revision::bigint, payload FROM {} WHERE entity_id = $1 ORDER BY revision",
            self.table("snapshots")
        );
        db.query(&sql, &[&entity_id])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| {
                (row.get(0), StateWrapper::decode(row.get::<_, &[u8]>(1)).expect("snapshot payload is a StateWrapper"))
            })
            .collect()
    }

    /// Runs one statement on the test schema (to tamper with the store between restarts).
    pub async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
        pg::connect().await.execute(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

async fn start_node(config: &Config) -> Node {
    tokio::time::timeout(Duration::from_secs(20), Node::start(config.clone()))
        .await
        .expect("the node did not start within 20 s")
        .unwrap_or_else(|e| panic!("the node did not start: {e}"))
}

async fn connect(node: &Node) -> ChiefOfStateServiceClient<Channel> {
    let url = format!("http://{}", node.local_addr());
    ChiefOfStateServiceClient::connect(url.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the node at {url}: {e}"))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// Runs the real `regent` binary with `args`, without the environment defaults a developer's shell may set for the
/// CLI (`REGENT_NODE`, `REGENT_ADMIN_NODE`, `REGENT_ADMIN_TOKEN`); returns (exit code, stdout, stderr).
pub async fn regent_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_regent"))
            .args(&args)
            .env_remove("REGENT_NODE")
            .env_remove("REGENT_ADMIN_NODE")
            .env_remove("REGENT_ADMIN_TOKEN")
            .output()
    })
    .await
    .unwrap()
    .expect("run the regent binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
