//! `regent-peer-cqrs`: the engine-lane workload (docs/performance.md §2) on `cqrs-es` + `postgres-es`.
//!
//! A bank-account-like aggregate: `N` entities × `M` commands, each command emitting exactly one event whose new
//! state (balance, operation count, digest chain) depends on the prior state. `C` clients each own a disjoint share
//! of the entities (entity `i` → client `i mod C`) and go round-robin over their share, awaiting every ack, so there is
//! exactly one command in flight per client and never an optimistic-concurrency conflict (conflicts are still
//! counted and retried). The store is postgres-es's `PostgresEventRepository` on a sqlx pool of `--pool-size`
//! connections, over fresh tables (postgres-es's `init.sql` shape) in a fresh schema per run.
//!
//! The run: warm-up (time-bound, on separate entities), then the measured `N × M` commands to completion; latency
//! per command (the whole `CqrsFramework::execute`: load, handle, commit) goes to an HDR histogram. Before printing,
//! the events written are checked (count, no gaps, final balance = sum of deposits).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, DomainEvent};
use hdrhistogram::Histogram;
use postgres_es::{PostgresCqrs, PostgresEventRepository};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};

const PEER: &str = "cqrs-es 0.5.0 + postgres-es 0.5.0";

#[derive(Parser, Debug)]
#[command(name = "regent-peer-cqrs", about = "Engine-lane workload on cqrs-es + postgres-es (docs/performance.md §2)")]
struct Args {
    /// PostgreSQL to run against; a fresh schema is created (and dropped afterwards unless --keep-schema).
    #[arg(long)]
    database_url: String,
    /// Entities (N). Default 1000, or 100 with --quick.
    #[arg(long)]
    entities: Option<usize>,
    /// Commands per entity (M). Default 100, or 50 with --quick.
    #[arg(long)]
    commands_per_entity: Option<u64>,
    /// Client concurrency (C): clients each awaiting one command at a time, over disjoint entity shares.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Event payload size in bytes (the JSON stored in `events.payload`), e.g. 200 or 2048.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Snapshot every K events (postgres-es snapshot store); 0 = snapshots off (the pure event store).
    #[arg(long, default_value_t = 0)]
    snapshot_every: usize,
    /// Connection pool size.
    #[arg(long, default_value_t = 8)]
    pool_size: u32,
    /// Warm-up seconds. Default 5, or 1 with --quick.
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Scaled-down preset: 100 entities × 50 commands, 1 s warm-up (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Keep the run's schema (default: drop it at the end).
    #[arg(long)]
    keep_schema: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// The aggregate

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
    ops: u64,
    /// Hex digest chained over every applied deposit (so the state depends on the whole history).
    digest: String,
}

#[derive(Debug, Clone)]
enum AccountCommand {
    Deposit { amount: i64, memo: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: i64, balance: i64, ops: u64, digest: String, memo: String },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "Deposited".to_string()
    }
    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug)]
struct AccountError;

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("account error")
    }
}

impl std::error::Error for AccountError {}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let AccountCommand::Deposit { amount, memo } = command;
        let prior = u64::from_str_radix(&self.digest, 16).unwrap_or(0);
        let digest = fnv1a(prior ^ amount as u64, memo.as_bytes());
        let event = AccountEvent::Deposited {
            amount,
            balance: self.balance + amount,
            ops: self.ops + 1,
            digest: format!("{digest:016x}"),
            memo,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let AccountEvent::Deposited { balance, ops, digest, .. } = event;
        self.balance = balance;
        self.ops = ops;
        self.digest = digest;
    }
}

/// Memo length so that a typical event's stored JSON is `payload_bytes` long (within a few bytes: the numbers vary).
fn memo_len_for(payload_bytes: usize) -> usize {
    let typical = AccountEvent::Deposited {
        amount: 5,
        balance: 500,
        ops: 50,
        digest: format!("{:016x}", u64::MAX),
        memo: String::new(),
    };
    let compact = serde_json::to_vec(&typical).expect("serialize");
    // sqlx sends the JSON with a space after every ':' and ',' (no string here contains either), and the json column
    // keeps the text as sent.
    let spaces = compact.iter().filter(|b| matches!(b, b':' | b',')).count();
    payload_bytes.saturating_sub(compact.len() + spaces)
}

/// xorshift64*: cheap, deterministic per client; memos are random alphanumerics so TOAST compression gains little.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn memo(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::with_capacity(len);
        let mut word = 0u64;
        for i in 0..len {
            if i % 8 == 0 {
                word = self.next();
            }
            s.push(ALPHABET[(word & 0xff) as usize % ALPHABET.len()] as char);
            word >>= 8;
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The load

struct ClientResult {
    hist: Histogram<u64>,
    commands: u64,
    conflicts: u64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// One client: `rounds` rounds over its entities, one command in flight, stopping early at `stop` if given.
async fn client(
    cqrs: Arc<PostgresCqrs<Account>>,
    ids: Vec<String>,
    rounds: u64,
    stop: Option<Instant>,
    memo_len: usize,
    seed: u64,
) -> Result<ClientResult, String> {
    let mut rng = Rng(seed | 1);
    let mut r = ClientResult { hist: new_hist(), commands: 0, conflicts: 0 };
    'outer: for _ in 0..rounds {
        for id in &ids {
            if stop.is_some_and(|s| Instant::now() >= s) {
                break 'outer;
            }
            let command = AccountCommand::Deposit { amount: (rng.next() % 9 + 1) as i64, memo: rng.memo(memo_len) };
            let t0 = Instant::now();
            loop {
                match cqrs.execute(id, command.clone()).await {
                    Ok(()) => break,
                    Err(AggregateError::AggregateConflict) => r.conflicts += 1,
                    Err(e) => return Err(format!("execute on {id}: {e}")),
                }
            }
            r.hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            r.commands += 1;
        }
    }
    Ok(r)
}

/// Runs `shares.len()` clients concurrently; returns the merged result and the wall time.
async fn run_clients(
    cqrs: &Arc<PostgresCqrs<Account>>,
    shares: Vec<Vec<String>>,
    rounds: u64,
    stop: Option<Instant>,
    memo_len: usize,
) -> Result<(ClientResult, Duration), String> {
    let t0 = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, ids)| {
            let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1);
            tokio::spawn(client(cqrs.clone(), ids, rounds, stop, memo_len, seed))
        })
        .collect();
    let mut total = ClientResult { hist: new_hist(), commands: 0, conflicts: 0 };
    for t in tasks {
        let r = t.await.map_err(|e| format!("client task: {e}"))??;
        total.hist.add(&r.hist).map_err(|e| format!("histogram: {e}"))?;
        total.commands += r.commands;
        total.conflicts += r.conflicts;
    }
    Ok((total, t0.elapsed()))
}

/// Entity `i` of `n` (named `{prefix}-{i}`) goes to client `i mod c`.
fn partition(prefix: &str, n: usize, c: usize) -> Vec<Vec<String>> {
    let mut shares = vec![Vec::new(); c];
    for i in 0..n {
        shares[i % c].push(format!("{prefix}-{i:06}"));
    }
    shares
}

async fn framework(
    url: &str,
    pool_size: u32,
    schema: &str,
    snapshot_every: usize,
) -> Result<(Arc<PostgresCqrs<Account>>, PgPool), String> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .min_connections(pool_size)
        .connect(url)
        .await
        .map_err(|e| format!("connect pool: {e}"))?;
    // Open every connection before the clock starts.
    let mut held = Vec::new();
    for _ in 0..pool_size {
        held.push(pool.acquire().await.map_err(|e| format!("acquire: {e}"))?);
    }
    drop(held);
    let repo = PostgresEventRepository::new(pool.clone())
        .with_tables(&format!("{schema}.events"), &format!("{schema}.snapshots"));
    let store = if snapshot_every == 0 {
        PersistedEventStore::new_event_store(repo)
    } else {
        PersistedEventStore::new_snapshot_store(repo, snapshot_every)
    };
    Ok((Arc::new(CqrsFramework::new(store, vec![], ())), pool))
}

// ---------------------------------------------------------------------------------------------------------------
// Database set-up and readings

async fn create_schema(conn: &mut PgConnection, schema: &str) -> Result<(), String> {
    // The shape of postgres-es's `db/init.sql` (events + snapshots), in a schema of the run's own.
    let ddl = [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.events (
                aggregate_type text NOT NULL,
                aggregate_id text NOT NULL,
                sequence bigint CHECK (sequence >= 0) NOT NULL,
                event_type text NOT NULL,
                event_version text NOT NULL,
                payload json NOT NULL,
                metadata json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence))"
        ),
        format!(
            "CREATE TABLE {schema}.snapshots (
                aggregate_type text NOT NULL,
                aggregate_id text NOT NULL,
                last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
                current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
                payload json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))"
        ),
    ];
    for stmt in &ddl {
        sqlx::query(stmt).execute(&mut *conn).await.map_err(|e| format!("{stmt}: {e}"))?;
    }
    Ok(())
}

/// `xact_commit` of this database and the current WAL position.
async fn pg_reading(url: &str) -> Result<(i64, String), String> {
    let mut conn = PgConnection::connect(url).await.map_err(|e| format!("connect: {e}"))?;
    let row = sqlx::query(
        "SELECT xact_commit, pg_current_wal_lsn()::text AS lsn FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("pg_stat_database: {e}"))?;
    let out = (row.get::<i64, _>("xact_commit"), row.get::<String, _>("lsn"));
    conn.close().await.ok();
    Ok(out)
}

async fn wal_diff(conn: &mut PgConnection, end: &str, start: &str) -> Result<i64, String> {
    sqlx::query("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint")
        .bind(end)
        .bind(start)
        .fetch_one(conn)
        .await
        .map(|r| r.get::<i64, _>(0))
        .map_err(|e| format!("pg_wal_lsn_diff: {e}"))
}

struct Check {
    rows: i64,
    entities: i64,
    bad_streams: i64,
    bad_balances: i64,
    avg_payload: f64,
}

/// Checks the measured entities' streams: `m` events each, sequences 1..=m, final balance = sum of deposits.
async fn check(conn: &mut PgConnection, schema: &str, m: u64) -> Result<Check, String> {
    let stats = sqlx::query(&format!(
        "SELECT count(*) AS rows, count(DISTINCT aggregate_id) AS entities,
                coalesce(avg(octet_length(payload::text)), 0)::float8 AS avg_payload
           FROM {schema}.events WHERE aggregate_id LIKE 'm-%'"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| format!("check: {e}"))?;
    let bad_streams: i64 = sqlx::query(&format!(
        "SELECT count(*) FROM (SELECT aggregate_id FROM {schema}.events WHERE aggregate_id LIKE 'm-%'
           GROUP BY aggregate_id
           HAVING count(*) <> $1 OR max(sequence) <> $1 OR min(sequence) <> 1) t"
    ))
    .bind(m as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| format!("check streams: {e}"))?
    .get(0);
    let bad_balances: i64 = sqlx::query(&format!(
        "SELECT count(*) FROM (
           SELECT aggregate_id,
                  sum((payload->'Deposited'->>'amount')::bigint) AS total,
                  max((payload->'Deposited'->>'balance')::bigint) FILTER (WHERE sequence = $1) AS last
             FROM {schema}.events WHERE aggregate_id LIKE 'm-%' GROUP BY aggregate_id) t
         WHERE last IS DISTINCT FROM total"
    ))
    .bind(m as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| format!("check balances: {e}"))?
    .get(0);
    Ok(Check {
        rows: stats.get("rows"),
        entities: stats.get("entities"),
        bad_streams,
        bad_balances,
        avg_payload: stats.get("avg_payload"),
    })
}

// ---------------------------------------------------------------------------------------------------------------

async fn run(args: Args) -> Result<(), String> {
    let n = args.entities.unwrap_or(if args.quick { 100 } else { 1000 });
    let m = args.commands_per_entity.unwrap_or(if args.quick { 50 } else { 100 });
    let warmup = Duration::from_secs_f64(args.warmup_secs.unwrap_or(if args.quick { 1.0 } else { 5.0 }));
    let c = args.concurrency.max(1);
    if n == 0 || m == 0 {
        return Err("--entities and --commands-per-entity must be > 0".into());
    }
    let memo_len = memo_len_for(args.payload_bytes);
    let url = args.database_url.as_str();

    let schema = format!("peer_cqrs_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
    create_schema(&mut admin, &schema).await?;
    eprintln!(
        "regent-peer-cqrs: schema {schema}; N={n} M={m} C={c} payload={}B snapshots={} pool={} warm-up {:.1}s",
        args.payload_bytes,
        if args.snapshot_every == 0 { "off".to_string() } else { format!("every {}", args.snapshot_every) },
        args.pool_size,
        warmup.as_secs_f64()
    );

    let result = measure(&args, url, &schema, n, m, c, warmup, memo_len, &mut admin).await;
    if !args.keep_schema {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("drop schema: {e}"))?;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    url: &str,
    schema: &str,
    n: usize,
    m: u64,
    c: usize,
    warmup: Duration,
    memo_len: usize,
    admin: &mut PgConnection,
) -> Result<(), String> {
    // Warm-up: the same shape on separate entities, stopped at the deadline.
    if !warmup.is_zero() {
        let (cqrs, pool) = framework(url, args.pool_size, schema, args.snapshot_every).await?;
        let stop = Instant::now() + warmup;
        let (w, _) = run_clients(&cqrs, partition("w", n, c), m, Some(stop), memo_len).await?;
        eprintln!("regent-peer-cqrs: warm-up {} commands", w.commands);
        drop(cqrs);
        pool.close().await; // the backends' statistics are flushed as they exit
    }
    // A fresh pool for the measured phase, so pg_stat_database counts only it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (commits0, lsn0) = pg_reading(url).await?;
    let (cqrs, pool) = framework(url, args.pool_size, schema, args.snapshot_every).await?;
    let (r, elapsed) = run_clients(&cqrs, partition("m", n, c), m, None, memo_len).await?;
    drop(cqrs);
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (commits1, lsn1) = pg_reading(url).await?;
    let wal = wal_diff(admin, &lsn1, &lsn0).await?;

    let chk = check(admin, schema, m).await?;
    let expected = n as u64 * m;
    if r.commands != expected || chk.rows as u64 != expected || chk.entities as usize != n {
        return Err(format!(
            "check failed: {} commands acked, {} rows for {} entities; expected {expected} rows for {n}",
            r.commands, chk.rows, chk.entities
        ));
    }
    if chk.bad_streams != 0 || chk.bad_balances != 0 {
        return Err(format!(
            "check failed: {} streams with gaps, {} wrong final balances",
            chk.bad_streams, chk.bad_balances
        ));
    }

    let secs = elapsed.as_secs_f64();
    let cps = r.commands as f64 / secs;
    let p = |q: f64| r.hist.value_at_quantile(q);
    let commits = commits1 - commits0;
    println!(
        "{PEER}: N={n} M={m} C={c} payload={}B snapshots={}: {} commands in {secs:.2}s = {cps:.0} cmd/s, \
         p50 {} µs p99 {} µs p99.9 {} µs, max {} µs; {:.2} commits/cmd, {:.0} WAL B/cmd, {} conflicts",
        args.payload_bytes,
        args.snapshot_every,
        r.commands,
        p(0.5),
        p(0.99),
        p(0.999),
        r.hist.max(),
        commits as f64 / r.commands as f64,
        wal as f64 / r.commands as f64,
        r.conflicts
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "peer": PEER,
            "entities": n,
            "commands_per_entity": m,
            "concurrency": c,
            "payload_bytes": args.payload_bytes,
            "commands": r.commands,
            "seconds": secs,
            "commands_per_sec": cps,
            "p50_us": p(0.5),
            "p99_us": p(0.99),
            "p999_us": p(0.999),
            "max_us": r.hist.max(),
            "mean_us": r.hist.mean(),
            "snapshot_every": args.snapshot_every,
            "pool_size": args.pool_size,
            "warmup_seconds": warmup.as_secs_f64(),
            "conflicts": r.conflicts,
            "xact_commits": commits,
            "wal_bytes": wal,
            "avg_payload_bytes_stored": chk.avg_payload,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("regent-peer-cqrs: {e}");
        std::process::exit(1);
    }
}
