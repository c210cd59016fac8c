//! The multi-process cluster harness (STYLE habit 11, third tier): real `regent start` processes sharing one
//! PostgreSQL schema and one write handler, with a [`FaultProxy`] on every node-to-node link.
//!
//! Topology of node `nK` (K = 1, 2, ...):
//! - its own loopback IP `127.0.0.{10+K}` ([`node_ip`]; Linux routes all of 127/8 to `lo`), to which it binds its
//!   node-to-node listener and its outbound node-to-node connections, so the proxy knows who dials;
//! - advertised address (`REGENT_CLUSTER_HOST`/`PORT`, what the member table lists and peers dial) = the proxy's
//!   listener for `nK`; bind address (`REGENT_CLUSTER_BIND_ADDRESS`/`BIND_PORT`) = where `nK` really listens;
//! - gRPC and admin HTTP on `127.0.0.1` with pre-picked ports; stdout and stderr in a log file per node, whose tail
//!   is printed when a test fails (the files are then kept);
//! - static seeds: every node but `n1` gets `n1`'s advertised address.
//!
//! Tests hold a process-wide lock while their cluster lives ([`Cluster::new`]): on 2 cores, two clusters at once
//! would starve each other's failure detectors.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use regent::actors::shard_of;
use regent::cluster::status::{ClusterStatus, MemberStatusView};
use regent::config::PostgresConfig;

use super::fault_proxy::FaultProxy;
use super::history::{CheckInput, History, HistoryHandler, JournalEvent, Report, check, read_journal};
use super::load::{ClusterClient, Load, LoadOptions, Target};
use super::read_sink::{OffsetSampler, ReadCheckInput, ReadSink, check_read_side, read_journal_cursors, read_offsets};
use super::report::ScenarioResult;

/// Serialises the cluster tests of this process (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test timings every node gets (besides the split-brain strategy).
pub const LEASE_TTL: Duration = Duration::from_millis(2_000);
pub const STABLE_AFTER: Duration = Duration::from_millis(2_000);
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(10_000);
const TIMINGS: &[(&str, &str)] = &[
    ("REGENT_CLUSTER_LEASE_TTL_MS", "2000"),
    ("REGENT_CLUSTER_HEARTBEAT_INTERVAL_MS", "200"),
    ("REGENT_CLUSTER_ACCEPTABLE_HEARTBEAT_PAUSE_MS", "1000"),
    ("REGENT_SBR_STABLE_AFTER_MS", "2000"),
    ("REGENT_SHARDING_REBALANCE_INTERVAL_MS", "1000"),
    ("REGENT_SHARDING_HANDOFF_TIMEOUT_MS", "5000"),
    ("REGENT_CLUSTER_LEAVE_TIMEOUT_MS", "10000"),
    ("COS_COMMAND_HANDLER_TIMEOUT", "5"),
];

/// How long a node gets to answer `/ready`, and a cluster to agree on its members.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long the read side gets to deliver every event after a run, before I4 is checked.
pub const READ_SIDE_PATIENCE: Duration = Duration::from_secs(30);

/// `127.0.0.{10+k}`: node `nk`'s own loopback address.
pub fn node_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(k).expect("a small node number")))
}

/// A port free on `ip` right now, below the kernel's ephemeral range (32768+): a port picked there could be taken
/// by some outgoing connection before the node binds it. Each call hands out a new port (a counter from a
/// per-process start), so that two nodes never get the same one.
pub fn free_port(ip: IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 1000) as u16 * 10, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..2000 {
        let mut port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            port = 20_000;
        }
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A port free on every one of `ips` right now.
pub fn free_port_on_all(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let port = free_port(ips[0]);
        if ips.iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// What every node of a cluster is configured with.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `REGENT_SBR_STRATEGY`
    pub strategy: &'static str,
    /// `REGENT_SBR_QUORUM_SIZE`
    pub quorum_size: usize,
    /// `REGENT_SBR_DOWN_IF_ALONE`, when set.
    pub down_if_alone: Option<bool>,
    /// `COS_NUM_SHARDS`
    pub num_shards: u32,
    /// How long the write handler spends in each `HandleCommand`.
    pub handler_delay: Duration,
    /// More environment for every node.
    pub env: Vec<(String, String)>,
    /// Whether every node runs the [`ReadSink`] read side, and [`Cluster::check`] checks I4.
    pub read_sink: bool,
    /// The write handler serves TLS only, with this PEM certificate chain and key (the nodes then need
    /// `COS_WRITE_SIDE_USE_TLS` and a CA that trusts it, in `env`).
    pub handler_tls: Option<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            strategy: "keep-majority",
            quorum_size: 2,
            down_if_alone: None,
            num_shards: 16,
            handler_delay: Duration::from_millis(2),
            env: Vec::new(),
            read_sink: false,
            handler_tls: None,
        }
    }
}

impl ClusterOptions {
    pub fn strategy(strategy: &'static str) -> Self {
        ClusterOptions { strategy, ..Self::default() }
    }

    /// With the read-side sink on (I4 checked).
    pub fn with_read_sink(self) -> Self {
        ClusterOptions { read_sink: true, ..self }
    }
}

/// One node's addresses and settings, before it starts.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `REGENT_NODE_NAME`
    pub name: String,
    /// Where the node-to-node listener really is; its IP is also the source of the node's outbound connections.
    pub bind: SocketAddr,
    /// What the node advertises (normally the proxy's listener for it).
    pub advertised: SocketAddr,
    /// `REGENT_CLUSTER_SEEDS`
    pub seeds: Vec<String>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// More environment for this node.
    pub env: Vec<(String, String)>,
}

struct NodeProcess {
    spec: NodeSpec,
    child: Child,
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl NodeProcess {
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A cluster under test. Dropping it SIGKILLs every node (and prints their logs' tails if the test failed).
pub struct Cluster {
    pub options: ClusterOptions,
    pub pg: PostgresConfig,
    pub handler: HistoryHandler,
    pub proxy: FaultProxy,
    cookie: String,
    nodes: Vec<NodeProcess>,
    logs: Option<tempfile::TempDir>,
    /// The read-side sink and the offset sampler, when [`ClusterOptions::read_sink`].
    pub read_sink: Option<(ReadSink, OffsetSampler)>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// A cluster without nodes yet: the lock, a write handler, a fresh schema, a proxy.
    pub async fn new(options: ClusterOptions) -> Cluster {
        let serial = SERIAL.lock().await;
        crate::support::init_logging();
        super::history::start_clock();
        let pg = crate::support::pg::fresh_postgres_config();
        let read_sink =
            options.read_sink.then(|| (ReadSink::new(), OffsetSampler::start(&pg.schema, Duration::from_millis(300))));
        Cluster {
            handler: HistoryHandler::start_with_tls(options.handler_delay, options.handler_tls.clone()).await,
            pg,
            read_sink,
            proxy: FaultProxy::new(),
            cookie: format!("cookie-{}", uuid::Uuid::new_v4().simple()),
            nodes: Vec::new(),
            logs: Some(tempfile::Builder::new().prefix("regent-cluster-").tempdir().expect("a log folder")),
            options,
            _serial: serial,
        }
    }

    /// `size` nodes: `n1` first (the oldest member), then the others together; returns once every node is ready
    /// and sees all of them up.
    pub async fn start(size: usize, options: ClusterOptions) -> Cluster {
        let mut cluster = Cluster::new(options).await;
        let first = cluster.spec(1);
        cluster.launch(first).await;
        cluster.wait_ready("n1").await;
        for k in 2..=size {
            let spec = cluster.spec(k);
            cluster.launch(spec).await;
        }
        for k in 2..=size {
            cluster.wait_ready(&format!("n{k}")).await;
        }
        let names: Vec<String> = (1..=size).map(|k| format!("n{k}")).collect();
        cluster.wait_formed(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
        cluster.assert_sources_named();
        cluster
    }

    /// Panics if a connection reached the proxy from an address that is no node's bind address: the nodes must
    /// bind their outbound node-to-node connections to `REGENT_CLUSTER_BIND_ADDRESS`, or partitions by source
    /// cannot work.
    #[track_caller]
    pub fn assert_sources_named(&self) {
        let unknown = self.proxy.unknown_sources();
        assert!(
            unknown.is_empty(),
            "node-to-node connections came from {unknown:?}, which is no node's bind address: each node must bind \
             its outbound connections to REGENT_CLUSTER_BIND_ADDRESS (connections seen: {:?})",
            self.proxy.connections()
        );
    }

    /// The default spec of node `nk` (see the module documentation), with fresh ports.
    pub fn spec(&self, k: usize) -> NodeSpec {
        let ip = node_ip(k);
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let seeds = match self.nodes.iter().find(|n| n.spec.name == "n1") {
            Some(first) if k > 1 => vec![first.spec.advertised.to_string()],
            _ => Vec::new(),
        };
        NodeSpec {
            name: format!("n{k}"),
            bind: SocketAddr::new(ip, free_port(ip)),
            advertised: SocketAddr::new(ip, free_port(ip)),
            seeds,
            grpc: SocketAddr::new(localhost, free_port(localhost)),
            admin: SocketAddr::new(localhost, free_port(localhost)),
            env: Vec::new(),
        }
    }

    fn node_env(&self, spec: &NodeSpec) -> Vec<(String, String)> {
        let pg = &self.pg;
        let mut env: Vec<(String, String)> = [
            ("REGENT_STORE_BACKEND", "postgres".to_string()),
            ("COS_DB_HOST", pg.host.clone()),
            ("COS_DB_PORT", pg.port.to_string()),
            ("COS_DB_USER", pg.user.clone()),
            ("COS_DB_PASSWORD", pg.password.clone()),
            ("COS_DB_NAME", pg.database.clone()),
            ("COS_DB_SCHEMA", pg.schema.clone()),
            ("COS_WRITE_SIDE_HOST", "127.0.0.1".into()),
            ("COS_WRITE_SIDE_PORT", self.handler.addr().port().to_string()),
            ("COS_ADDRESS", spec.grpc.ip().to_string()),
            ("COS_PORT", spec.grpc.port().to_string()),
            ("COS_NUM_SHARDS", self.options.num_shards.to_string()),
            ("LOG_LEVEL", std::env::var("REGENT_TEST_NODE_LOG_LEVEL").unwrap_or_else(|_| "info".into())),
            ("NO_COLOR", "1".into()),
            ("REGENT_ADMIN_ADDRESS", spec.admin.ip().to_string()),
            ("REGENT_ADMIN_PORT", spec.admin.port().to_string()),
            ("REGENT_CLUSTER_ENABLED", "true".into()),
            ("REGENT_CLUSTER_COOKIE", self.cookie.clone()),
            ("REGENT_NODE_NAME", spec.name.clone()),
            ("REGENT_CLUSTER_HOST", spec.advertised.ip().to_string()),
            ("REGENT_CLUSTER_PORT", spec.advertised.port().to_string()),
            ("REGENT_CLUSTER_BIND_ADDRESS", spec.bind.ip().to_string()),
            ("REGENT_CLUSTER_BIND_PORT", spec.bind.port().to_string()),
            ("REGENT_SBR_STRATEGY", self.options.strategy.to_string()),
            ("REGENT_SBR_QUORUM_SIZE", self.options.quorum_size.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(TIMINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if !spec.seeds.is_empty() {
            env.push(("REGENT_CLUSTER_SEEDS".into(), spec.seeds.join(",")));
        }
        if let Some(alone) = self.options.down_if_alone {
            env.push(("REGENT_SBR_DOWN_IF_ALONE".into(), alone.to_string()));
        }
        env.extend(self.options.env.iter().cloned());
        env.extend(spec.env.iter().cloned());
        env
    }

    /// Starts a node: its proxy link (when it advertises another address than it binds), then the process.
    pub async fn launch(&mut self, spec: NodeSpec) {
        assert!(self.nodes.iter().all(|n| n.spec.name != spec.name), "{} launched twice", spec.name);
        if spec.advertised == spec.bind {
            self.proxy.register_source(&spec.name, spec.bind.ip());
        } else {
            self.proxy
                .add_link(&spec.name, spec.bind.ip(), spec.advertised, spec.bind)
                .await
                .unwrap_or_else(|e| panic!("proxy link for {} on {}: {e}", spec.name, spec.advertised));
        }
        let log = self.log_path(&spec.name);
        let child = self.spawn(&spec, &log).await;
        self.nodes.push(NodeProcess { spec, child, exit: None, log });
    }

    fn log_path(&self, file: &str) -> PathBuf {
        let dir = self.logs.as_ref().expect("the log folder").path();
        let mut log = dir.join(format!("{file}.log"));
        for restart in 1.. {
            if !log.exists() {
                break;
            }
            log = dir.join(format!("{file}.{restart}.log"));
        }
        log
    }

    async fn spawn(&mut self, spec: &NodeSpec, log: &PathBuf) -> Child {
        let file = std::fs::File::create(log).expect("a node log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_regent"));
        command.arg("start").stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        // Nothing of the test's own environment may configure the node.
        for (name, _) in std::env::vars() {
            if name.starts_with("COS_") || name.starts_with("REGENT_") || name == "RUST_LOG" || name == "POD_IP" {
                command.env_remove(name);
            }
        }
        command.envs(self.node_env(spec));
        if let Some((sink, _)) = &mut self.read_sink {
            command.env("COS_READ_SIDE_ENABLED", "true").env("COS_READ_SIDE_CONFIG", sink.config_for(&spec.name).await);
        }
        command.spawn().unwrap_or_else(|e| panic!("spawn regent start for {}: {e}", spec.name))
    }

    /// Starts `name` again, after it exited, with the same spec: same name, addresses and ports (a new
    /// incarnation, as after a crash and a supervisor's restart). Does not wait for it to be ready.
    pub async fn restart(&mut self, name: &str) {
        let node = self.node_mut(name);
        assert!(node.poll_exit().is_some(), "{name} is still running: it cannot be restarted");
        let spec = node.spec.clone();
        let log = self.log_path(name);
        if let Some((sink, _)) = &self.read_sink {
            sink.restarted(name);
        }
        let child = self.spawn(&spec, &log).await;
        let node = self.node_mut(name);
        node.child = child;
        node.exit = None;
        node.log = log;
    }

    /// Launches the next node `nK` (default spec), waits until it is ready and every running node sees it up.
    pub async fn add_node(&mut self) -> String {
        let spec = self.spec(self.nodes.len() + 1);
        let name = spec.name.clone();
        self.launch(spec).await;
        self.wait_ready(&name).await;
        let running = self.running();
        self.wait_formed(&running.iter().map(String::as_str).collect::<Vec<_>>()).await;
        name
    }

    fn node(&self, name: &str) -> &NodeProcess {
        self.nodes.iter().find(|n| n.spec.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeProcess {
        self.nodes.iter_mut().find(|n| n.spec.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn spec_of(&self, name: &str) -> NodeSpec {
        self.node(name).spec.clone()
    }

    /// Every node launched so far, in launch order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.spec.name.clone()).collect()
    }

    /// The nodes whose process still runs.
    pub fn running(&mut self) -> Vec<String> {
        self.nodes.iter_mut().filter_map(|n| n.poll_exit().is_none().then(|| n.spec.name.clone())).collect()
    }

    /// Panics (with its log) if `name` has exited.
    #[track_caller]
    pub fn assert_running(&mut self, name: &str) {
        let node = self.node_mut(name);
        if let Some(status) = node.poll_exit() {
            panic!("{name} exited ({status}) (the nodes' logs follow)");
        }
    }

    /// The cookie every node gets (unless its spec's `env` sets another).
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The last `lines` lines of `name`'s log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.node(name).log_tail(lines)
    }

    /// Polls `/ready` until it answers 200; panics if the node exits or after [`PATIENCE`].
    pub async fn wait_ready(&mut self, name: &str) {
        let admin = self.node(name).spec.admin;
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.assert_running(name);
            let last = match http_get(admin, "/ready").await {
                Ok((200, _)) => return,
                Ok((code, body)) => format!("{code} {body}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "{name} was not ready within {PATIENCE:?} (last /ready: {last}) (the nodes' logs follow)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /cluster` on `name`.
    pub async fn status(&self, name: &str) -> Result<ClusterStatus, String> {
        let (code, body) = http_get(self.node(name).spec.admin, "/cluster").await?;
        if code != 200 {
            return Err(format!("/cluster answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/cluster is not a ClusterStatus ({e}): {body}"))
    }

    /// `GET /cluster` on `name`, or a panic.
    pub async fn status_of(&self, name: &str) -> ClusterStatus {
        self.status(name).await.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// `GET /actors` on `name`.
    pub async fn actors(&self, name: &str) -> Result<serde_json::Value, String> {
        let (code, body) = http_get(self.node(name).spec.admin, "/actors").await?;
        if code != 200 {
            return Err(format!("/actors answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/actors is not JSON ({e}): {body}"))
    }

    /// Polls until every node of `names` sees exactly `names` as its `up` members, all reachable and connected,
    /// and they agree on the leader; panics after [`PATIENCE`] with the views.
    pub async fn wait_formed(&mut self, names: &[&str]) {
        let expected: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut problems = Vec::new();
            let mut leaders = BTreeSet::new();
            for name in names {
                self.assert_running(name);
                match self.status(name).await {
                    Err(e) => problems.push(format!("{name}: {e}")),
                    Ok(status) => {
                        let up = up_nodes(&status);
                        if up != expected {
                            problems.push(format!("{name} sees up {up:?}"));
                        }
                        for member in status.members.iter().filter(|m| expected.contains(&m.node)) {
                            if !member.reachable || !member.connected {
                                problems.push(format!(
                                    "{name} sees {}: reachable {}, connected {}",
                                    member.node, member.reachable, member.connected
                                ));
                            }
                        }
                        leaders.insert(status.leader.as_ref().map(|l| node_of_id(&status, l)));
                    }
                }
            }
            if leaders.len() != 1 || leaders.contains(&None) {
                problems.push(format!("leaders: {leaders:?}"));
            }
            if problems.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let mut views = String::new();
                for name in names {
                    views.push_str(&format!("--- {name}: {:?}\n", self.status(name).await));
                }
                panic!("the cluster {names:?} did not form within {PATIENCE:?}: {problems:?}\n{views}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `check` over `observer`'s `/cluster` until it returns `Some`; panics with the last view after
    /// `patience`.
    pub async fn wait_status<T>(
        &mut self,
        observer: &str,
        what: &str,
        patience: Duration,
        mut check: impl FnMut(&ClusterStatus) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + patience;
        loop {
            self.assert_running(observer);
            let status = self.status(observer).await;
            if let Ok(status) = &status
                && let Some(value) = check(status)
            {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{observer}'s /cluster did not show {what} within {patience:?}; last: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.node(name).child.id()
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to `name` with kill(1).
    pub fn signal(&mut self, name: &str, signal: &str) {
        let pid = self.node(name).child.id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} ({name}) failed");
    }

    /// SIGKILLs `name` and reaps it; returns when the signal was sent.
    pub fn sigkill(&mut self, name: &str) -> Instant {
        let node = self.node_mut(name);
        let at = Instant::now();
        let _ = node.child.kill();
        node.exit = node.child.wait().ok();
        at
    }

    /// Waits until `name` exits; panics after `patience`.
    pub async fn wait_exit(&mut self, name: &str, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.node_mut(name).poll_exit() {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} did not exit within {patience:?} (the nodes' logs follow)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC target for `name`.
    pub fn target(&self, name: &str) -> Target {
        Target::new(name, self.node(name).spec.grpc)
    }

    /// A client of every node launched so far.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.nodes.iter().map(|n| Target::new(&n.spec.name, n.spec.grpc)).collect())
    }

    /// A client of `names`.
    pub fn client_of(&self, names: &[&str]) -> ClusterClient {
        ClusterClient::new(names.iter().map(|n| self.target(n)).collect())
    }

    /// Shard → node, as `observer` sees it.
    pub async fn shard_homes(&self, observer: &str) -> BTreeMap<u32, String> {
        shard_homes(&self.status_of(observer).await)
    }

    /// The shards `observer` sees on `node`.
    pub async fn shards_on(&self, observer: &str, node: &str) -> BTreeSet<u32> {
        self.shard_homes(observer).await.into_iter().filter(|(_, n)| n == node).map(|(s, _)| s).collect()
    }

    /// The node running the shard coordinator, as `observer` sees it (polls until there is one).
    pub async fn coordinator(&mut self, observer: &str) -> String {
        self.wait_status(observer, "a coordinator", PATIENCE, |s| s.coordinator.as_ref().map(|c| node_of_id(s, c)))
            .await
    }

    /// The oldest member, as `observer` sees it.
    pub async fn oldest(&mut self, observer: &str) -> String {
        self.wait_status(observer, "an oldest member", PATIENCE, |s| s.oldest.as_ref().map(|o| node_of_id(s, o))).await
    }

    /// Runs the checker: the journal, `GetState` of every entity through the running nodes, the registry; with
    /// the read sink, I4 too, once the read side caught up (at most [`READ_SIDE_PATIENCE`]).
    /// The standard load of the cluster suites: 6 clients over 24 entities, through every node launched so far.
    pub fn standard_load(&self) -> Load {
        Load::start(self.client(), LoadOptions::new(6, 24))
    }

    /// Runs the checker, writes the scenario's result file with `notes` (`tests/support/report.rs`, for
    /// docs/reliability.md; before asserting, so that a failed run is recorded too) and asserts that no invariant
    /// is broken.
    pub async fn check_and_record(
        &mut self,
        scenario: &str,
        test: &str,
        history: &History,
        notes: &[String],
    ) -> Report {
        let report = self.check(history).await;
        let mut result = ScenarioResult::new(scenario, test, history, &report);
        for note in notes {
            result = result.note(note.clone());
        }
        result.write();
        report.assert_ok();
        report
    }

    pub async fn check(&mut self, history: &History) -> Report {
        let journal = read_journal(&self.pg.schema).await;
        self.check_journal(history, journal).await
    }

    /// [`check`](Self::check) over a journal read elsewhere (the nodes' database is not the shared test server).
    pub async fn check_journal(&mut self, history: &History, journal: Vec<JournalEvent>) -> Report {
        let running = self.running();
        let reader = self.client_of(&running.iter().map(String::as_str).collect::<Vec<_>>());
        let mut entities = history.entities();
        entities.extend(journal.iter().map(|e| e.entity.clone()));
        let mut states = BTreeMap::new();
        for entity in entities {
            let state = reader.state(&entity, Duration::from_secs(20)).await;
            states.insert(entity, state);
        }
        let calls = self.handler.registry.calls();
        let mut report = check(&CheckInput {
            journal: &journal,
            history,
            states: &states,
            calls: &calls,
            num_shards: self.options.num_shards,
        });
        if self.read_sink.is_some() {
            let read = self.check_read_side().await;
            report.violations.extend(read.violations);
            report.summary.push_str(&read.summary);
            report.summary.push('\n');
            report.notes.push(read.summary);
        }
        eprintln!("{}", report.summary);
        report
    }

    /// I4 over the sink's deliveries, once every journal event was delivered and every shard's offset stored (or
    /// [`READ_SIDE_PATIENCE`] passed: the checker then reports what is missing). `GetState` of every entity
    /// ([`Cluster::check`]) has allocated every shard with events, so each has a processor somewhere.
    async fn check_read_side(&mut self) -> super::read_sink::ReadReport {
        let schema = self.pg.schema.clone();
        let journal = read_journal_cursors(&schema).await;
        let mut last: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        for row in &journal {
            last.insert(row.shard, row.cursor);
        }
        let db = crate::support::pg::connect().await;
        let deadline = Instant::now() + READ_SIDE_PATIENCE;
        let (sink, sampler) = self.read_sink.as_ref().expect("a read sink");
        let final_offsets = loop {
            let delivered: BTreeSet<(String, u32)> =
                sink.deliveries().into_iter().map(|d| (d.entity, d.revision)).collect();
            let offsets = read_offsets(&db, &schema).await.unwrap_or_default();
            let complete = journal.iter().all(|r| delivered.contains(&(r.entity.clone(), r.revision)));
            if (complete && offsets == last) || Instant::now() >= deadline {
                break offsets;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The sampler's last look, after the end.
        tokio::time::sleep(Duration::from_millis(400)).await;
        check_read_side(&ReadCheckInput {
            journal: &journal,
            deliveries: &sink.deliveries(),
            samples: &sampler.samples(),
            final_offsets: &final_offsets,
        })
    }

    /// SIGKILLs every node, stops the handler, drops the schema and the logs.
    pub async fn finish(mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        self.handler.stop().await;
        if let Some((mut sink, sampler)) = self.read_sink.take() {
            drop(sampler);
            sink.stop().await;
        }
        crate::support::pg::drop_schema(&self.pg.schema).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.poll_exit().is_none() {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let exit = node.exit.map_or("still running at the end".to_string(), |e| format!("exited, {e}"));
                eprintln!(
                    "===== {} ({exit}), last lines of {}:\n{}",
                    node.spec.name,
                    node.log.display(),
                    node.log_tail(60)
                );
            }
            eprintln!("===== proxy: {:?}; connections {:?}", self.proxy.rules(), self.proxy.connections());
            if let Some(logs) = self.logs.take() {
                let kept = logs.keep();
                eprintln!("node logs kept in {}; schema {} kept", kept.display(), self.pg.schema);
            }
        }
    }
}

/// Borrows each name (for the `&[&str]` arguments of the harness).
pub fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// The nodes `status` lists as `up`.
pub fn up_nodes(status: &ClusterStatus) -> BTreeSet<String> {
    status.members.iter().filter(|m| m.status == "up").map(|m| m.node.clone()).collect()
}

/// The member view of `node` in `status`.
pub fn member<'a>(status: &'a ClusterStatus, node: &str) -> Option<&'a MemberStatusView> {
    status.members.iter().find(|m| m.node == node)
}

/// The node name of a `node.incarnation` member id.
pub fn node_of_id(status: &ClusterStatus, id: &str) -> String {
    status
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.node.clone())
        .unwrap_or_else(|| id.split('.').next().unwrap_or(id).to_string())
}

/// Shard → node.
pub fn shard_homes(status: &ClusterStatus) -> BTreeMap<u32, String> {
    status.shards.iter().map(|home| (home.shard, home.node.clone())).collect()
}

/// An entity id `prefix-<shard>-<i>` that lives in `shard`.
pub fn entity_in_shard(prefix: &str, shard: u32, num_shards: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}-{shard}-{i}"))
        .find(|id| shard_of(id, num_shards) == shard)
        .expect("some id lands in every shard")
}

/// A plain HTTP/1.1 `GET` (the admin endpoint needs no more), with a 2 s timeout: `(status code, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| format!("read from {addr}: {e}"))?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET http://{addr}{path} timed out")))
}

/// `(status code, body)` of a whole HTTP/1.1 response (plain or chunked body).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut body = &raw[end + 4..];
    let code = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {head}"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if !chunked {
        return Ok((code, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((code, String::from_utf8_lossy(&out).into_owned()));
        }
        let chunk = body.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}
