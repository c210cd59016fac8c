//! `regent-bench`: Regent's load generator, with the baselines it is judged against (pgbench, a tonic echo) measured
//! in the same run. See docs/performance.md.
//!
//! ```sh
//! source scripts/pg.sh && REGENT_PG_PORT=55450 pg_start
//! cargo build --release && cargo run --release -p regent-bench -- --quick
//! ```

mod echo;
mod handler;
mod load;
mod pg;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use prost_types::Any;
use regent::config::{Backend, Config};
use regent::engine::Engine;
use regent::example::bank::{BankHandler, pack};
use regent::proto::bank::{Deposit, OpenAccount};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::write_side::WriteSide;
use serde::Serialize;

use crate::load::Target;
use crate::pg::PgTarget;
use crate::procs::Proc;

const NODE_SERVICE: &str = "chief_of_state.v1.ChiefOfStateService";

#[derive(Parser, Debug)]
#[command(name = "regent-bench", about = "Regent's load generator and baselines (docs/performance.md)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Serve grpc.health.v1 on 127.0.0.1:PORT (the echo baseline's server; started by the harness itself).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Lane {
    /// gRPC clients → `regent start` process → `regent example-handler` process → PostgreSQL.
    Full,
    /// Engine + in-process handler (no gRPC) → PostgreSQL, all in this process.
    Engine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Shape {
    /// `--entities` entities × `--commands-per-entity` commands, at each `--concurrency`.
    Spread,
    /// One client, one entity.
    Serial,
    /// One entity, `--hot-clients` clients.
    Hot,
    /// `--creations` new entities (one event each) at the highest `--concurrency`.
    Create,
    /// Spread over `--entities` at the highest `--concurrency`, paced at `--rate` (open loop).
    Rate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum EngineHandler {
    /// One event of exactly the payload size per command.
    Padded,
    /// The bank example (same commands as the full lane).
    Bank,
}

#[derive(clap::Args, Debug, Clone, Serialize)]
struct RunArgs {
    /// The quick preset (< 3 min on 2 cores): C=64 only, 200 B, snapshots every 100, short periods, 5k creations.
    #[arg(long)]
    quick: bool,
    /// PostgreSQL to benchmark against (start one with scripts/pg.sh).
    #[arg(long, env = "REGENT_TEST_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:55450/postgres")]
    pg_url: String,
    /// The node binary (build it first: `cargo build --release`).
    #[arg(long, default_value = "target/release/regent")]
    regent_bin: PathBuf,
    /// JSON results (logs of the spawned processes go next to it).
    #[arg(long, default_value = "target/regent-bench/results.json")]
    out: PathBuf,
    #[arg(long, value_delimiter = ',')]
    lanes: Option<Vec<Lane>>,
    #[arg(long, value_delimiter = ',')]
    shapes: Option<Vec<Shape>>,
    /// Client concurrencies of the spread shape (the highest is also used by create and rate).
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Payload sizes in bytes (engine lane: the event's payload; full lane: OpenAccount.owner, so only creations
    /// carry it; the table shows the stored event size).
    #[arg(long, value_delimiter = ',')]
    payloads: Option<Vec<usize>>,
    /// Snapshot frequencies (0 = snapshots off).
    #[arg(long, value_delimiter = ',')]
    snapshots: Option<Vec<u64>>,
    #[arg(long)]
    entities: Option<usize>,
    #[arg(long)]
    commands_per_entity: Option<u64>,
    #[arg(long)]
    creations: Option<usize>,
    #[arg(long, default_value_t = 64)]
    hot_clients: usize,
    #[arg(long)]
    warmup_secs: Option<f64>,
    #[arg(long)]
    measure_secs: Option<f64>,
    /// Target rate of the rate shape, commands/s (default: half the full-lane target, echo ceiling ÷ 12).
    #[arg(long)]
    rate: Option<f64>,
    /// gRPC connections from the load generator (to the node, and to the echo server).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// PostgreSQL pool of the node (COS_DB_POOL_MAX_SIZE); default: the node's own default, 5 (two journal writers).
    #[arg(long, default_value_t = 5)]
    pool: usize,
    /// Channels from the node to the handler (COS_GRPC_CLIENT_POOL_SIZE).
    #[arg(long, default_value_t = 1)]
    handler_pool: usize,
    /// Runtime worker threads of the node only (TOKIO_WORKER_THREADS; default: one per core).
    #[arg(long)]
    node_worker_threads: Option<usize>,
    #[arg(long, value_enum, default_value = "padded")]
    engine_handler: EngineHandler,
    /// Seconds per baseline measurement.
    #[arg(long)]
    baseline_secs: Option<u64>,
    /// Entities created to measure RSS per resident entity.
    #[arg(long)]
    footprint_entities: Option<usize>,
    /// Pause before and after the measured period so that PostgreSQL publishes the backends' statistics
    /// (`xact_commit`): an idle backend may hold them up to 10 s (PGSTAT_IDLE_INTERVAL). Default 1.1 s (quick),
    /// 11 s (full). Write transactions per command (from transaction ids) are exact either way.
    #[arg(long)]
    quiesce_secs: Option<f64>,
    #[arg(long)]
    skip_baselines: bool,
    #[arg(long)]
    skip_footprint: bool,
}

/// The resolved plan.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    preset: &'static str,
    lanes: Vec<Lane>,
    shapes: Vec<Shape>,
    concurrency: Vec<usize>,
    payloads: Vec<usize>,
    snapshots: Vec<u64>,
    entities: usize,
    commands_per_entity: u64,
    creations: usize,
    hot_clients: usize,
    warmup_secs: f64,
    measure_secs: f64,
    baseline_secs: u64,
    quiesce_secs: f64,
    footprint_entities: usize,
    connections: usize,
    pool: usize,
    handler_pool: usize,
    node_worker_threads: Option<usize>,
    engine_handler: EngineHandler,
}

impl Plan {
    fn from(a: &RunArgs) -> Plan {
        let q = a.quick;
        Plan {
            preset: if q { "quick" } else { "full" },
            lanes: a.lanes.clone().unwrap_or(vec![Lane::Full, Lane::Engine]),
            shapes: a.shapes.clone().unwrap_or(vec![
                Shape::Spread,
                Shape::Serial,
                Shape::Hot,
                Shape::Create,
                Shape::Rate,
            ]),
            concurrency: a.concurrency.clone().unwrap_or(if q { vec![64] } else { vec![1, 16, 64] }),
            payloads: a.payloads.clone().unwrap_or(if q { vec![200] } else { vec![200, 2048] }),
            snapshots: a.snapshots.clone().unwrap_or(if q { vec![100] } else { vec![100, 0] }),
            entities: a.entities.unwrap_or(1000),
            commands_per_entity: a.commands_per_entity.unwrap_or(100),
            creations: a.creations.unwrap_or(if q { 5_000 } else { 100_000 }),
            hot_clients: a.hot_clients,
            warmup_secs: a.warmup_secs.unwrap_or(if q { 1.0 } else { 5.0 }),
            measure_secs: a.measure_secs.unwrap_or(if q { 4.0 } else { 20.0 }),
            baseline_secs: a.baseline_secs.unwrap_or(if q { 3 } else { 8 }),
            quiesce_secs: a.quiesce_secs.unwrap_or(if q { 1.1 } else { 11.0 }),
            footprint_entities: a.footprint_entities.unwrap_or(if q { 10_000 } else { 100_000 }),
            connections: a.connections,
            pool: a.pool,
            handler_pool: a.handler_pool,
            node_worker_threads: a.node_worker_threads,
            engine_handler: a.engine_handler,
        }
    }

    fn max_concurrency(&self) -> usize {
        self.concurrency.iter().copied().max().unwrap_or(64)
    }

    /// Every run, in order. Spread: the whole matrix; serial and hot: payloads × snapshots; create: payloads
    /// (one event per entity, snapshots never fire); rate: full lane only, first payload and snapshot setting.
    fn runs(&self) -> Vec<RunSpec> {
        let mut out = Vec::new();
        for &lane in &self.lanes {
            for &shape in &self.shapes {
                for (pi, &payload) in self.payloads.iter().enumerate() {
                    for (si, &snapshots) in self.snapshots.iter().enumerate() {
                        let spec = |clients, entities, per_entity| RunSpec {
                            lane,
                            shape,
                            clients,
                            entities,
                            per_entity,
                            payload,
                            snapshots,
                            rate: None,
                        };
                        match shape {
                            Shape::Spread => {
                                for &c in &self.concurrency {
                                    out.push(spec(c, self.entities, self.commands_per_entity));
                                }
                            }
                            Shape::Serial => out.push(spec(1, 1, u64::MAX)),
                            Shape::Hot => out.push(spec(self.hot_clients, 1, u64::MAX)),
                            Shape::Create if si == 0 => out.push(spec(self.max_concurrency(), self.creations, 1)),
                            Shape::Rate if lane == Lane::Full && pi == 0 && si == 0 => {
                                out.push(spec(self.max_concurrency(), self.entities, u64::MAX))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
struct RunSpec {
    lane: Lane,
    shape: Shape,
    clients: usize,
    entities: usize,
    #[serde(skip)]
    per_entity: u64,
    payload: usize,
    /// Snapshot frequency, 0 = off.
    snapshots: u64,
    rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Cpu {
    node_s: f64,
    handler_s: f64,
    postgres_s: f64,
    harness_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    #[serde(flatten)]
    spec: RunSpec,
    schema: String,
    commands: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    commands_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// `pg_stat_database.xact_commit` delta ÷ commands (see `--quiesce-secs`).
    commits_per_command: f64,
    /// Transaction ids assigned ÷ commands: transactions that wrote (exact).
    write_tx_per_command: f64,
    wal_bytes_per_command: f64,
    journal_rows: i64,
    event_bytes_avg: f64,
    snapshots_written: i64,
    cpu: Cpu,
    cpu_us_per_command: f64,
    node_ready_ms: Option<f64>,
    node_rss_bytes: Option<u64>,
    /// (what it is compared with, the reference figure, Regent ÷ reference)
    ratio: Option<(String, f64, f64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Footprint {
    entities: usize,
    ready_fresh_schema_ms: f64,
    ready_existing_schema_ms: f64,
    idle_rss_bytes: u64,
    idle_rss_restart_bytes: u64,
    rss_after_entities_bytes: u64,
    rss_per_entity_bytes: f64,
    creation_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    date_utc: String,
    git_commit: String,
    nproc: usize,
    cpu_model: String,
    mem_total: String,
    postgres: String,
    postgres_settings: Vec<(String, String)>,
    rustc: String,
    load_average_at_start: String,
}

#[derive(Debug, Clone, Serialize)]
struct Target_ {
    name: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    plan: Plan,
    pgbench: Vec<pg::PgbenchResult>,
    echo: Vec<echo::EchoResult>,
    floor_ms: Option<f64>,
    footprint: Option<Footprint>,
    runs: Vec<RunResult>,
    targets: Vec<Target_>,
    total_secs: f64,
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn proc_field(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with(key)).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// The commands of a lane: (create, update).
fn commands(lane: Lane, handler: EngineHandler, payload: usize) -> (Any, Any) {
    if lane == Lane::Full || handler == EngineHandler::Bank {
        (
            pack(&OpenAccount { owner: handler::noise_text(payload.max(1)), initial_balance: 0 }),
            pack(&Deposit { amount: 1 }),
        )
    } else {
        (
            Any { type_url: handler::CREATE.into(), value: vec![] },
            Any { type_url: handler::UPDATE.into(), value: vec![] },
        )
    }
}

struct Env {
    plan: Plan,
    args: RunArgs,
    pg: PgTarget,
    client: tokio_postgres::Client,
    postmaster: u32,
    ticks: f64,
    dir: PathBuf,
    handler: Option<(Proc, u16)>,
}

impl Env {
    fn node_env(&self, port: u16, schema: &str, snapshots: u64) -> Vec<(String, String)> {
        let handler_port = self.handler.as_ref().map(|h| h.1).unwrap_or(0);
        [
            ("COS_ADDRESS", "127.0.0.1".to_string()),
            ("COS_PORT", port.to_string()),
            ("REGENT_ADMIN_PORT", "0".into()),
            ("REGENT_STORE_BACKEND", "postgres".into()),
            ("COS_DB_HOST", self.pg.host.clone()),
            ("COS_DB_PORT", self.pg.port.to_string()),
            ("COS_DB_USER", self.pg.user.clone()),
            ("COS_DB_PASSWORD", self.pg.password.clone()),
            ("COS_DB_NAME", self.pg.database.clone()),
            ("COS_DB_SCHEMA", schema.into()),
            ("COS_DB_POOL_MAX_SIZE", self.plan.pool.to_string()),
            ("COS_WRITE_SIDE_HOST", "127.0.0.1".into()),
            ("COS_WRITE_SIDE_PORT", handler_port.to_string()),
            ("COS_GRPC_CLIENT_POOL_SIZE", self.plan.handler_pool.to_string()),
            ("COS_SNAPSHOT_FREQUENCY", snapshots.max(1).to_string()),
            ("COS_DISABLE_SNAPSHOT", (snapshots == 0).to_string()),
            ("REGENT_PASSIVATION_IDLE_SECS", "0".into()),
            ("LOG_LEVEL", "WARN".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.plan.node_worker_threads.map(|n| ("TOKIO_WORKER_THREADS".to_string(), n.to_string())))
        .collect()
    }

    /// Starts `regent start` on a free port; returns it, its endpoint and the time to SERVING.
    async fn start_node(&self, schema: &str, snapshots: u64, log: &str) -> anyhow::Result<(Proc, String, Duration)> {
        let port = procs::free_port()?;
        let since = Instant::now();
        let mut node = Proc::spawn(
            "node",
            &self.args.regent_bin,
            &["start"],
            &self.node_env(port, schema, snapshots),
            &self.dir.join(log),
        )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        match procs::wait_serving(&endpoint, NODE_SERVICE, since, &mut node.child, Duration::from_secs(60)).await {
            Ok(ready) => Ok((node, endpoint, ready)),
            Err(e) => {
                node.stop().await;
                Err(e.context(format!("node did not start; see {}", self.dir.join(log).display())))
            }
        }
    }

    async fn grpc_target(&self, endpoint: &str) -> anyhow::Result<Target> {
        let channels = echo::channels(endpoint, self.plan.connections).await?;
        Ok(Target::Grpc(Arc::new(channels.into_iter().map(ChiefOfStateServiceClient::new).collect())))
    }

    fn engine_config(&self, schema: &str, snapshots: u64) -> Config {
        let mut config = Config::default();
        config.store.backend = Backend::Postgres;
        let pg = &mut config.store.postgres;
        pg.host = self.pg.host.clone();
        pg.port = self.pg.port;
        pg.user = self.pg.user.clone();
        pg.password = self.pg.password.clone();
        pg.database = self.pg.database.clone();
        pg.schema = schema.into();
        pg.pool_max_size = self.plan.pool;
        config.entities.passivation_idle_secs = 0;
        config.snapshots.frequency = snapshots.max(1);
        config.snapshots.disabled = snapshots == 0;
        config
    }

    fn cpu(&self, node: Option<u32>) -> Cpu {
        let me = std::process::id();
        Cpu {
            node_s: node.map(|p| procs::cpu_secs(p, self.ticks)).unwrap_or(0.0),
            handler_s: self.handler.as_ref().map(|h| procs::cpu_secs(h.0.pid, self.ticks)).unwrap_or(0.0),
            postgres_s: procs::pg_cpu_secs(self.postmaster, self.ticks),
            harness_s: procs::cpu_secs(me, self.ticks),
        }
    }
}

/// Creates `ids` (not measured) with up to 64 clients.
async fn create_all(target: &Target, ids: &[String], create: &Any) -> (u64, Option<String>) {
    let clients = load::spread(ids, ids.len().clamp(1, 64), 1);
    let (_, r) = load::phase(target, clients, create.clone(), Duration::from_secs(3600), None).await;
    (r.errors, r.first_error)
}

async fn one_run(env: &Env, index: usize, spec: &RunSpec) -> anyhow::Result<RunResult> {
    let plan = &env.plan;
    let schema = format!("bench_r{index}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (create, update) = commands(spec.lane, plan.engine_handler, spec.payload);
    let mut node: Option<Proc> = None;
    let mut engine: Option<Engine> = None;
    let mut ready_ms = None;
    let target = match spec.lane {
        Lane::Full => {
            let (n, endpoint, ready) = env.start_node(&schema, spec.snapshots, &format!("node-{index}.log")).await?;
            ready_ms = Some(ready.as_secs_f64() * 1000.0);
            node = Some(n);
            env.grpc_target(&endpoint).await?
        }
        Lane::Engine => {
            let handler: Arc<dyn WriteSide> = match plan.engine_handler {
                EngineHandler::Padded => Arc::new(handler::PaddedHandler::new(spec.payload)),
                EngineHandler::Bank => Arc::new(BankHandler),
            };
            let e = Engine::start(&env.engine_config(&schema, spec.snapshots), handler, vec![])
                .await
                .map_err(|e| anyhow::anyhow!("engine: {e}"))?;
            let t = Target::Engine(e.handle());
            engine = Some(e);
            t
        }
    };
    let node_pid = node.as_ref().map(|n| n.pid);

    let prefix = format!("{}-{index}-", spec.lane as u8);
    let ids: Vec<String> = (0..spec.entities).map(|i| format!("{prefix}{i}")).collect();
    let (clients, command) = if spec.shape == Shape::Create {
        (load::spread(&ids, spec.clients, 1), create.clone())
    } else {
        let (errors, first) = create_all(&target, &ids, &create).await;
        if errors > 0 {
            eprintln!("  setup: {errors} creations failed: {}", first.unwrap_or_default());
        }
        (load::spread(&ids, spec.clients, spec.per_entity), update)
    };
    let warmup = Duration::from_secs_f64(plan.warmup_secs);
    let measure =
        if spec.shape == Shape::Create { Duration::from_secs(600) } else { Duration::from_secs_f64(plan.measure_secs) };
    let clients = if spec.shape == Shape::Create {
        // Warm up on other new entities, so that the measured period creates all of `ids`.
        let warm: Vec<String> = (0..spec.entities).map(|i| format!("{prefix}w{i}")).collect();
        load::phase(&target, load::spread(&warm, spec.clients, 1), command.clone(), warmup, None).await;
        clients
    } else {
        // The warm-up does not spend the measured period's budget (N × M commands): at the engine lane's rate the
        // full preset's 5 s warm-up alone would exhaust it.
        let budgets: std::collections::HashMap<usize, u64> = clients.iter().map(|c| (c.index, c.remaining)).collect();
        let mut warmed = load::phase(&target, clients, command.clone(), warmup, spec.rate).await.0;
        for client in &mut warmed {
            client.remaining = budgets[&client.index];
        }
        warmed
    };

    // Quiesce so that the backends publish their statistics, then measure.
    let quiesce = Duration::from_secs_f64(plan.quiesce_secs);
    tokio::time::sleep(quiesce).await;
    let s0 = pg::stats(&env.client).await?;
    let j0 = pg::journal_max(&env.client, &schema).await?;
    let snaps0 = pg::snapshot_count(&env.client, &schema).await?;
    let c0 = env.cpu(node_pid);
    let (_, r) = load::phase(&target, clients, command, measure, spec.rate).await;
    let c1 = env.cpu(node_pid);
    tokio::time::sleep(quiesce).await;
    let s1 = pg::stats(&env.client).await?;
    let (journal_rows, event_bytes_avg) = pg::journal_since(&env.client, &schema, j0).await?;
    let snaps1 = pg::snapshot_count(&env.client, &schema).await?;
    let node_rss_bytes = node_pid.and_then(procs::rss_bytes);

    if let Some(n) = node {
        n.stop().await;
    }
    if let Some(e) = engine {
        e.shutdown().await;
    }
    pg::drop_schema(&env.client, &schema).await;

    let done = r.ok.max(1) as f64;
    let secs = r.elapsed.as_secs_f64();
    let h = &r.histogram;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cpu = Cpu {
        node_s: c1.node_s - c0.node_s,
        handler_s: if spec.lane == Lane::Full { c1.handler_s - c0.handler_s } else { 0.0 },
        postgres_s: c1.postgres_s - c0.postgres_s,
        harness_s: c1.harness_s - c0.harness_s,
    };
    let cpu_total = cpu.node_s + cpu.handler_s + cpu.postgres_s + cpu.harness_s;
    Ok(RunResult {
        spec: spec.clone(),
        schema,
        commands: r.ok,
        errors: r.errors,
        first_error: r.first_error,
        secs,
        commands_per_sec: r.ok as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        commits_per_command: (s1.xact_commit - s0.xact_commit) as f64 / done,
        write_tx_per_command: (s1.next_xid - s0.next_xid) as f64 / done,
        wal_bytes_per_command: (s1.wal_bytes - s0.wal_bytes) / done,
        journal_rows,
        event_bytes_avg,
        snapshots_written: snaps1 - snaps0,
        cpu,
        cpu_us_per_command: cpu_total * 1e6 / done,
        node_ready_ms: ready_ms,
        node_rss_bytes,
        ratio: None,
    })
}

async fn footprint(env: &Env) -> anyhow::Result<Footprint> {
    let schema = format!("bench_fp_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut f = Footprint { entities: env.plan.footprint_entities, ..Default::default() };
    let (node, _, ready) = env.start_node(&schema, 100, "node-footprint-1.log").await?;
    f.ready_fresh_schema_ms = ready.as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.idle_rss_bytes = procs::rss_bytes(node.pid).unwrap_or(0);
    node.stop().await;
    let (node, endpoint, ready) = env.start_node(&schema, 100, "node-footprint-2.log").await?;
    f.ready_existing_schema_ms = ready.as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.idle_rss_restart_bytes = procs::rss_bytes(node.pid).unwrap_or(0);
    let target = env.grpc_target(&endpoint).await?;
    let ids: Vec<String> = (0..f.entities).map(|i| format!("fp-{i}")).collect();
    let (create, _) = commands(Lane::Full, env.plan.engine_handler, *env.plan.payloads.first().unwrap_or(&200));
    let (errors, first) = create_all(&target, &ids, &create).await;
    f.creation_errors = errors;
    if let Some(e) = first {
        eprintln!("  footprint: {errors} creations failed: {e}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.rss_after_entities_bytes = procs::rss_bytes(node.pid).unwrap_or(0);
    f.rss_per_entity_bytes =
        (f.rss_after_entities_bytes as f64 - f.idle_rss_restart_bytes as f64) / f.entities.max(1) as f64;
    node.stop().await;
    pg::drop_schema(&env.client, &schema).await;
    Ok(f)
}

async fn machine(client: &tokio_postgres::Client) -> Machine {
    let mut settings = Vec::new();
    for name in ["shared_buffers", "synchronous_commit", "fsync", "wal_sync_method", "max_wal_size", "commit_delay"] {
        settings.push((name.to_string(), pg::setting(client, name).await));
    }
    Machine {
        date_utc: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        git_commit: command_line("git", &["rev-parse", "--short=12", "HEAD"]),
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model: proc_field("/proc/cpuinfo", "model name"),
        mem_total: proc_field("/proc/meminfo", "MemTotal"),
        postgres: pg::version(client).await.unwrap_or_else(|_| "?".into()),
        postgres_settings: settings,
        rustc: command_line("rustc", &["--version"]),
        load_average_at_start: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
    }
}

async fn baselines(env: &Env, results: &mut Results) -> anyhow::Result<()> {
    let plan = &env.plan;
    let mut levels: Vec<usize> = vec![1];
    levels.extend(plan.concurrency.iter().copied());
    levels.push(plan.hot_clients);
    levels.sort();
    levels.dedup();
    match pg::pgbench_path() {
        None => eprintln!("pgbench not found: no PostgreSQL baseline"),
        Some(bin) => {
            let schema = "bench_pgbench";
            pg::pgbench_setup(&env.client, schema).await?;
            let bench = pg::Pgbench { bin: &bin, target: &env.pg, client: &env.client, schema, dir: &env.dir };
            for &payload in &plan.payloads {
                for &c in &levels {
                    let r = pg::pgbench(&bench, c, payload, plan.baseline_secs).await?;
                    eprintln!("  pgbench c={c} {payload} B: {:.0} tps, {:.2} ms", r.tps, r.latency_ms);
                    results.pgbench.push(r);
                }
            }
            pg::drop_schema(&env.client, schema).await;
        }
    }
    let port = procs::free_port()?;
    let me = std::env::current_exe()?;
    let mut server =
        Proc::spawn("echo-server", &me, &["echo-server", "--port", &port.to_string()], &[], &env.dir.join("echo.log"))?;
    let endpoint = format!("http://127.0.0.1:{port}");
    procs::wait_serving(&endpoint, "", Instant::now(), &mut server.child, Duration::from_secs(10)).await?;
    let channels = echo::channels(&endpoint, plan.connections).await?;
    for &c in &levels {
        let warmup = Duration::from_secs_f64(plan.warmup_secs.min(2.0));
        let r = echo::run(&channels, c, warmup, Duration::from_secs(plan.baseline_secs), server.pid, env.ticks).await;
        eprintln!("  echo c={c}: {:.0} calls/s, p50 {:.3} ms", r.calls_per_sec, r.p50_ms);
        results.echo.push(r);
    }
    drop(channels);
    server.stop().await;
    Ok(())
}

fn echo_at(results: &Results, c: usize) -> Option<&echo::EchoResult> {
    results.echo.iter().find(|e| e.clients == c).or_else(|| results.echo.iter().max_by_key(|e| e.clients))
}

fn pgbench_at(results: &Results, c: usize, payload: usize) -> Option<&pg::PgbenchResult> {
    let all = &results.pgbench;
    all.iter().find(|p| p.clients == c && p.payload == payload).or_else(|| all.iter().find(|p| p.clients == c))
}

fn ratio_for(results: &Results, r: &RunResult) -> Option<(String, f64, f64)> {
    let s = &r.spec;
    let (label, reference) = match (s.lane, s.shape) {
        (Lane::Full, Shape::Serial) => ("floor (3 echo p50 + 1 commit)".to_string(), 1000.0 / results.floor_ms?),
        (Lane::Full, _) => {
            let e = echo_at(results, s.clients)?;
            (format!("echo c={} ÷ 3", e.clients), e.calls_per_sec / 3.0)
        }
        (Lane::Engine, _) => {
            let p = pgbench_at(results, s.clients, s.payload)?;
            (format!("pgbench c={} {} B", p.clients, p.payload), p.tps)
        }
    };
    Some((label, reference, r.commands_per_sec / reference))
}

fn targets(results: &Results) -> Vec<Target_> {
    let mut out = Vec::new();
    let find = |lane: Lane, shape: Shape, c: Option<usize>| {
        results
            .runs
            .iter()
            .find(|r| r.spec.lane == lane && r.spec.shape == shape && c.is_none_or(|c| r.spec.clients == c))
    };
    if let (Some(r), Some(e)) = (find(Lane::Full, Shape::Spread, Some(64)), echo_at(results, 64)) {
        let reference = e.calls_per_sec / 3.0;
        out.push(Target_ {
            name: "full lane C=64, 1,000 entities".into(),
            goal: format!("≥ 0.5 × echo c={} ÷ 3 = {:.0} cmd/s", e.clients, 0.5 * reference),
            measured: format!("{:.0} cmd/s = {:.2} × (echo ÷ 3)", r.commands_per_sec, r.commands_per_sec / reference),
            met: Some(r.commands_per_sec >= 0.5 * reference),
        });
    }
    for r in results.runs.iter().filter(|r| r.spec.lane == Lane::Full && r.spec.shape == Shape::Rate) {
        out.push(Target_ {
            name: format!("full lane paced at {:.0} cmd/s, C={}", r.spec.rate.unwrap_or(0.0), r.spec.clients),
            goal: "p99 ≤ 10 ms".into(),
            measured: format!("p99 {:.2} ms ({:.0} cmd/s achieved)", r.p99_ms, r.commands_per_sec),
            met: Some(r.p99_ms <= 10.0),
        });
    }
    if let (Some(r), Some(p)) = (find(Lane::Engine, Shape::Spread, Some(64)), pgbench_at(results, 64, 200)) {
        out.push(Target_ {
            name: "engine lane C=64".into(),
            goal: format!("≥ 3 × pgbench c=64 one insert/commit = {:.0} cmd/s", 3.0 * p.tps),
            measured: format!("{:.0} cmd/s = {:.2} × pgbench", r.commands_per_sec, r.commands_per_sec / p.tps),
            met: Some(r.commands_per_sec >= 3.0 * p.tps),
        });
    }
    if let (Some(r), Some(floor)) = (find(Lane::Full, Shape::Serial, None), results.floor_ms) {
        out.push(Target_ {
            name: "serial (1 client, 1 entity), full lane".into(),
            goal: format!("≥ 0.8 × 1/floor = {:.0} cmd/s (floor {floor:.3} ms)", 0.8 * 1000.0 / floor),
            measured: format!(
                "{:.0} cmd/s, p50 {:.3} ms = {:.2} × floor rate",
                r.commands_per_sec,
                r.p50_ms,
                r.commands_per_sec * floor / 1000.0
            ),
            met: Some(r.commands_per_sec * floor / 1000.0 >= 0.8),
        });
    }
    if let Some(f) = &results.footprint {
        out.push(Target_ {
            name: "idle node RSS".into(),
            goal: "≤ 30 MB".into(),
            measured: format!("{:.1} MiB", f.idle_rss_bytes as f64 / 1048576.0),
            met: Some(f.idle_rss_bytes as f64 <= 30e6),
        });
        out.push(Target_ {
            name: "start to ready (SERVING)".into(),
            goal: "≤ 1 s".into(),
            measured: format!(
                "{:.0} ms (fresh schema), {:.0} ms (existing)",
                f.ready_fresh_schema_ms, f.ready_existing_schema_ms
            ),
            met: Some(f.ready_fresh_schema_ms.max(f.ready_existing_schema_ms) <= 1000.0),
        });
    }
    out
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = Plan::from(&args);
    let dir = args.out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    if plan.lanes.contains(&Lane::Full) && !args.regent_bin.exists() {
        anyhow::bail!(
            "{} not found: run `cargo build --release` first (or pass --regent-bin)",
            args.regent_bin.display()
        );
    }
    let pg = PgTarget::parse(&args.pg_url)?;
    let client = pg.connect(&args.pg_url).await?;
    let postmaster = pg::postmaster_pid(&client).await?;
    let machine = machine(&client).await;
    eprintln!(
        "regent-bench: {} preset, PostgreSQL {} (postmaster {postmaster}), commit {}",
        plan.preset, machine.postgres, machine.git_commit
    );
    let mut env = Env {
        plan: plan.clone(),
        args: args.clone(),
        pg,
        client,
        postmaster,
        ticks: procs::clock_ticks(),
        dir,
        handler: None,
    };
    let mut results = Results {
        machine,
        plan: plan.clone(),
        pgbench: vec![],
        echo: vec![],
        floor_ms: None,
        footprint: None,
        runs: vec![],
        targets: vec![],
        total_secs: 0.0,
    };

    if !args.skip_baselines {
        eprintln!("baselines");
        baselines(&env, &mut results).await?;
        if let (Some(e), Some(p)) = (echo_at(&results, 1), pgbench_at(&results, 1, 200)) {
            results.floor_ms = Some(3.0 * e.p50_ms + p.latency_ms);
        }
    }
    if plan.lanes.contains(&Lane::Full) {
        let port = procs::free_port()?;
        let handler = Proc::spawn(
            "handler",
            &args.regent_bin,
            &["example-handler", "--port", &port.to_string()],
            &[("LOG_LEVEL".into(), "WARN".into())],
            &env.dir.join("handler.log"),
        )?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.handler = Some((handler, port));
        if !args.skip_footprint {
            eprintln!("footprint ({} entities)", plan.footprint_entities);
            match footprint(&env).await {
                Ok(f) => results.footprint = Some(f),
                Err(e) => eprintln!("  footprint failed: {e:#}"),
            }
        }
    }
    // The rate shape runs at `--rate`, or at half the full-lane target (echo ceiling ÷ 12) and at half the rate the
    // closed loop reached at the same concurrency (when that differs).
    let mut specs = Vec::new();
    for spec in plan.runs() {
        if spec.shape != Shape::Rate {
            specs.push(spec);
            continue;
        }
        let target_rate = echo_at(&results, spec.clients).map(|e| e.calls_per_sec / 12.0).unwrap_or(1000.0);
        for rate in args.rate.map(|r| vec![r]).unwrap_or(vec![target_rate, 0.0]) {
            specs.push(RunSpec { rate: Some(rate), ..spec.clone() });
        }
    }
    let mut i = 0;
    while i < specs.len() {
        let mut spec = specs[i].clone();
        if spec.rate == Some(0.0) {
            // Half of what the closed loop reached (spread shape, same lane, concurrency, payload, snapshots).
            let closed = results.runs.iter().find(|r| {
                r.spec.lane == spec.lane
                    && r.spec.shape == Shape::Spread
                    && r.spec.clients == spec.clients
                    && r.spec.payload == spec.payload
                    && r.spec.snapshots == spec.snapshots
            });
            match closed {
                Some(r) => spec.rate = Some(r.commands_per_sec / 2.0),
                None => {
                    i += 1;
                    continue;
                }
            }
        }
        eprintln!(
            "run {}/{}: {:?} {:?} C={} entities={} payload={} snapshots={}",
            i + 1,
            specs.len(),
            spec.lane,
            spec.shape,
            spec.clients,
            spec.entities,
            spec.payload,
            spec.snapshots
        );
        match one_run(&env, i, &spec).await {
            Ok(mut r) => {
                r.ratio = ratio_for(&results, &r);
                eprintln!(
                    "  {:.0} cmd/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                    r.commands_per_sec, r.p50_ms, r.p99_ms, r.errors
                );
                if let Some(e) = &r.first_error {
                    eprintln!("  first error: {e}");
                }
                results.runs.push(r);
            }
            Err(e) => eprintln!("  run failed: {e:#}"),
        }
        i += 1;
    }
    if let Some((handler, _)) = env.handler.take() {
        handler.stop().await;
    }
    results.targets = targets(&results);
    results.total_secs = started.elapsed().as_secs_f64();
    println!("{}", report::render(&results));
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("results: {} ({:.0} s)", args.out.display(), results.total_secs);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::EchoServer { port }) => echo::serve(port).await,
        None => run(cli.run).await,
    }
}
