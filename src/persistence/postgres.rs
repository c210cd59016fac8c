//! PostgreSQL backend: the production store, shared by every node of a cluster.
//!
//! Connections come from a deadpool-postgres pool whose connections all run with `search_path` set to the
//! configured schema, so the SQL below never names a schema. On open the store creates the schema if missing,
//! applies the numbered migrations of `migrations/postgres/` (serialised between nodes by an advisory lock), and
//! checks the number of shards recorded at first boot.
//!
//! Every query is a prepared statement cached per connection (`prepare_cached`); an append is one multi-row
//! `INSERT ... SELECT FROM unnest(...)`, hence one round trip and one transaction whatever the number of events.
//! Failures are classified in one place, [`map_error`].

use deadpool_postgres::{
    HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Timeouts, tokio_postgres,
};
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::batching::{AppendRequest, BatchLimits, BatchWriter, Batcher};
use super::migrations::{self, Migration};
use super::*;
use crate::cluster::MemberId;
use crate::config::PostgresConfig;

/// How long opening a new connection may take, and how long a caller waits for a free pooled connection, before
/// the store reports itself [`Error::Unavailable`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server ends a session left idle inside a transaction this long (`idle_in_transaction_session_timeout`).
/// Regent's transactions send their statements back to back; one idle for seconds belongs to a node that was cut
/// off or froze mid-transaction, and PostgreSQL, which only waits for the next statement, would keep its row locks
/// (`cluster_state`'s, that every membership change takes) for as long as TCP takes to notice, hours without
/// keepalives: every other member's membership change would wait behind it, the downing of that node included.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// A link to the server that silently drops packets is noticed by the client side too: data the server has not
/// acknowledged for this long ends the connection (`TCP_USER_TIMEOUT`), and an idle connection is probed
/// (keepalives after 10 s, every 2 s, 3 probes), instead of waiting for TCP's default of about 15 minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Most events written in one journal transaction.
const MAX_BATCH_EVENTS: usize = 500;
/// Appends waiting for a writer before entities wait to enqueue (back-pressure).
const BATCH_QUEUE: usize = 4096;

/// First key of the advisory lock that serialises migrations (the second is the hashed schema name), so that two
/// nodes booting at once do not both migrate the same schema.
const MIGRATION_LOCK_CLASS: i32 = 0x5245_4745; // "REGE"

/// The journal and snapshots in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Journal appends go through here: many entities' appends share one transaction under load.
    batcher: Batcher,
    /// In a cluster, the member whose lease and status fence read-side offset writes too.
    writer: Option<MemberId>,
}

/// The journal writer behind the [`Batcher`].
struct JournalWriter {
    pool: Pool,
    /// In a cluster, the member whose lease and status fence every write.
    writer: Option<MemberId>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("pool", &self.pool.status()).finish()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if missing, applies pending migrations and checks that the database was
    /// initialised with `num_shards` shards (recording it on first boot).
    ///
    /// The pool holds at most `pool_max_size` connections; a connection idle for longer than
    /// `pool_idle_timeout_ms` or older than `pool_max_lifetime_ms` is closed (0 disables either limit). deadpool
    /// keeps no minimum of idle connections, so `pool_min_idle` is not used: connections open on demand.
    pub async fn open(config: &PostgresConfig, num_shards: u32) -> Result<Self> {
        Self::open_as(config, num_shards, None).await
    }

    /// Creates the schema if missing and applies pending migrations (what [`open`](Self::open) does first),
    /// without starting anything: a cluster member needs the cluster tables before it can join.
    pub async fn prepare(config: &PostgresConfig, num_shards: u32) -> Result<()> {
        validate_identifier(&config.schema)?;
        let pool = build_pool(config)?;
        let mut client = pool.get().await.map_err(map_error)?;
        migrate(&mut client, &config.schema).await?;
        check_num_shards(&client, num_shards).await
    }

    /// [`open`](Self::open) for a cluster member: journal writes are fenced on `writer` (see
    /// [`crate::persistence::open_as`]).
    pub async fn open_as(config: &PostgresConfig, num_shards: u32, writer: Option<MemberId>) -> Result<Self> {
        validate_identifier(&config.schema)?;
        let pool = build_pool(config)?;
        let mut client = pool.get().await.map_err(map_error)?;
        migrate(&mut client, &config.schema).await?;
        check_num_shards(&client, num_shards).await?;
        drop(client);
        spawn_reaper(&pool, config);
        // Writers leave at least one connection of the pool to reads, snapshots and read sides.
        let limits = BatchLimits {
            writers: (config.pool_max_size / 2).clamp(1, 4),
            max_events: MAX_BATCH_EVENTS,
            queue: BATCH_QUEUE,
        };
        let batcher = Batcher::spawn(Arc::new(JournalWriter { pool: pool.clone(), writer: writer.clone() }), limits);
        Ok(Self { pool, batcher, writer })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(map_error)
    }
}

/// Accepts only a plain SQL identifier (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`), the one piece of configuration that is
/// spliced into SQL text.
pub(crate) fn validate_identifier(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid_start && valid_rest && name.len() <= 63 {
        Ok(())
    } else {
        Err(Error::Misconfigured(format!(
            "schema {name:?} is not a plain SQL identifier (a letter or underscore, then up to 62 letters, digits or \
             underscores)"
        )))
    }
}

pub(crate) fn build_pool(config: &PostgresConfig) -> Result<Pool> {
    let manager = Manager::from_config(
        connection_config(config),
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    let limits = ConnectionLimits::new(config);
    Pool::builder(manager)
        .max_size(config.pool_max_size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(POOL_WAIT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        })
        .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
            if limits.expired(*metrics) {
                Err(HookError::message("connection exceeded its idle timeout or lifetime"))
            } else {
                Ok(())
            }
        }))
        .build()
        .map_err(|e| Error::Misconfigured(format!("cannot build the PostgreSQL pool: {e}")))
}

/// The settings of one connection to the configured schema (`search_path` set to it), as the pool opens them;
/// the cluster's lease keeper opens its dedicated connection with these too.
pub(crate) fn connection_config(config: &PostgresConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .dbname(&config.database)
        // Tells an operator (and the tests) which schema a session serves; the server truncates it to 63 bytes.
        .application_name(format!("regent:{}", config.schema))
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        // The schema is a validated identifier; quoting keeps its case, as `CREATE SCHEMA "<schema>"` does.
        .options(format!(
            "-c search_path=\"{}\" -c idle_in_transaction_session_timeout={}",
            config.schema,
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        ));
    if !config.password.is_empty() {
        pg.password(&config.password);
    }
    pg
}

/// The pool's idle timeout and maximum lifetime, which deadpool enforces through hooks rather than settings.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    idle: Option<Duration>,
    lifetime: Option<Duration>,
}

impl ConnectionLimits {
    fn new(config: &PostgresConfig) -> Self {
        let limit = |ms| (ms > 0).then(|| Duration::from_millis(ms));
        Self { idle: limit(config.pool_idle_timeout_ms), lifetime: limit(config.pool_max_lifetime_ms) }
    }

    fn expired(&self, metrics: deadpool_postgres::Metrics) -> bool {
        self.idle.is_some_and(|idle| metrics.last_used() >= idle)
            || self.lifetime.is_some_and(|lifetime| metrics.age() >= lifetime)
    }
}

/// Closes idle or too old connections in the background (the `pre_recycle` hook only catches them when they are
/// next handed out). Stops when the store is dropped.
fn spawn_reaper(pool: &Pool, config: &PostgresConfig) {
    let limits = ConnectionLimits::new(config);
    let Some(period) = [limits.idle, limits.lifetime].into_iter().flatten().min() else { return };
    let weak = pool.weak();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval((period / 2).max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            pool.retain(|_, metrics| !limits.expired(metrics));
        }
    });
}

/// Creates the schema and applies the pending migrations, each in its own transaction holding the migration lock.
async fn migrate(client: &mut deadpool_postgres::Client, schema: &str) -> Result<()> {
    const LOCK: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
    let tx = client.transaction().await.map_err(map_error)?;
    tx.execute(LOCK, &[&MIGRATION_LOCK_CLASS, &schema]).await.map_err(map_error)?;
    // Checked first: `CREATE SCHEMA IF NOT EXISTS` requires the CREATE privilege even when the schema exists.
    let exists = tx.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await.map_err(map_error)?;
    if exists.is_none() {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\"")).await.map_err(map_error)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".regent_migrations (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)"
    ))
    .await
    .map_err(map_error)?;
    tx.commit().await.map_err(map_error)?;

    for Migration { version, name, sql } in migrations::POSTGRES.iter().copied() {
        let tx = client.transaction().await.map_err(map_error)?;
        tx.execute(LOCK, &[&MIGRATION_LOCK_CLASS, &schema]).await.map_err(map_error)?;
        let applied = tx
            .query_opt("SELECT 1 FROM regent_migrations WHERE version = $1", &[&version])
            .await
            .map_err(map_error)?
            .is_some();
        if applied {
            continue; // the transaction rolls back on drop, releasing the lock
        }
        tx.batch_execute(sql).await.map_err(|e| migration_error(name, e))?;
        tx.execute("INSERT INTO regent_migrations (version, applied_at) VALUES ($1, $2)", &[&version, &now_millis()])
            .await
            .map_err(map_error)?;
        tx.commit().await.map_err(map_error)?;
        tracing::info!(migration = name, schema, "applied postgres migration");
    }
    Ok(())
}

fn migration_error(name: &str, err: tokio_postgres::Error) -> Error {
    match map_error(err) {
        Error::Backend(msg) => Error::Backend(format!("migration {name} failed: {msg}")),
        other => other,
    }
}

/// Records `num_shards` on first boot, then fails unless the recorded number is `num_shards`.
async fn check_num_shards(client: &deadpool_postgres::Client, num_shards: u32) -> Result<()> {
    client
        .execute(
            "INSERT INTO regent_settings (key, value) VALUES ('num_shards', $1) ON CONFLICT (key) DO NOTHING",
            &[&num_shards.to_string()],
        )
        .await
        .map_err(map_error)?;
    let row =
        client.query_one("SELECT value FROM regent_settings WHERE key = 'num_shards'", &[]).await.map_err(map_error)?;
    let stored: String = row.get(0);
    if stored == num_shards.to_string() { Ok(()) } else { Err(shard_count_mismatch(&stored, num_shards)) }
}

/// A failure of the pool or of PostgreSQL, before classification.
#[derive(Debug)]
pub(crate) enum Failure {
    Pool(PoolError),
    Postgres(tokio_postgres::Error),
}

impl From<PoolError> for Failure {
    fn from(err: PoolError) -> Self {
        Self::Pool(err)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Postgres(err)
    }
}

/// The one classification of PostgreSQL failures: lost or refused connections, an exhausted pool and a server
/// shutting down are [`Error::Unavailable`]; everything else is [`Error::Backend`]. (A unique violation on the
/// journal's key is turned into [`Error::Conflict`] by [`map_write_error`], which knows the write.)
pub(crate) fn map_error(err: impl Into<Failure>) -> Error {
    let err = match err.into() {
        Failure::Pool(PoolError::Backend(err)) => err,
        Failure::Pool(PoolError::Timeout(kind)) => {
            return Error::Unavailable(format!("PostgreSQL pool timed out ({kind:?})"));
        }
        Failure::Pool(PoolError::Closed) => return Error::Unavailable("PostgreSQL pool is closed".into()),
        Failure::Pool(err @ PoolError::PostCreateHook(_)) => return Error::Unavailable(err.to_string()),
        Failure::Pool(err @ PoolError::NoRuntimeSpecified) => return Error::Backend(err.to_string()),
        Failure::Postgres(err) => err,
    };
    let message = postgres_message(&err);
    match err.code() {
        Some(code) if is_unavailable(code) => Error::Unavailable(message),
        Some(_) => Error::Backend(message),
        None => {
            use std::error::Error as _;
            let io = err.source().is_some_and(|source| source.is::<std::io::Error>());
            // A connect timeout is a tokio-postgres error with neither SQLSTATE nor source.
            let timeout = err.source().is_none() && message.contains("timeout");
            if err.is_closed() || io || timeout { Error::Unavailable(message) } else { Error::Backend(message) }
        }
    }
}

/// Like [`map_error`], but a unique violation means another writer stored `revision` of `entity_id` first.
fn map_write_error(err: tokio_postgres::Error, entity_id: &str, revision: u64) -> Error {
    if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        Error::Conflict { entity_id: entity_id.to_owned(), revision }
    } else {
        map_error(err)
    }
}

/// SQLSTATE class 08 (connection exception), 57P01..57P03 (admin/crash shutdown, cannot connect now) and 53300
/// (too many connections).
fn is_unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
}

/// The server's message with its SQLSTATE, or the client error's.
fn postgres_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// A shard number as the `INT` the tables store.
fn shard_to_sql(shard: u32) -> Result<i32> {
    i32::try_from(shard).map_err(|_| Error::Backend(format!("shard {shard} is out of range")))
}

const INSERT_SQL: &str = "INSERT INTO journal (entity_id, revision, shard, written_at, payload) \
     SELECT e.entity_id, e.revision, e.shard, $1, e.payload \
     FROM unnest($2::TEXT[], $3::BIGINT[], $4::INT[], $5::BYTEA[]) AS e(entity_id, revision, shard, payload)";

/// Stores a read side's offset for a shard (`$1` read side, `$2` shard, `$3` tx id, `$4` ordering, `$5` time).
const SAVE_CURSOR_SQL: &str = "INSERT INTO read_side_offsets (read_side_id, shard, tx_id, ordering, updated_at) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (read_side_id, shard) DO UPDATE \
     SET tx_id = EXCLUDED.tx_id, ordering = EXCLUDED.ordering, updated_at = EXCLUDED.updated_at";

/// [`SAVE_CURSOR_SQL`] fenced on the writer (`$6` node, `$7` incarnation) being allowed to write.
static FENCED_SAVE_CURSOR_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO read_side_offsets (read_side_id, shard, tx_id, ordering, updated_at) \
         SELECT $1, $2, $3, $4, $5 WHERE {} \
         ON CONFLICT (read_side_id, shard) DO UPDATE \
         SET tx_id = EXCLUDED.tx_id, ordering = EXCLUDED.ordering, updated_at = EXCLUDED.updated_at",
        crate::cluster::membership::writer_valid_predicate(6, 7)
    )
});

/// [`INSERT_SQL`] fenced on the writer (`$6` node, `$7` incarnation) being allowed to write.
static FENCED_INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{INSERT_SQL} WHERE {}", crate::cluster::membership::writer_valid_predicate(6, 7))
});

#[async_trait]
impl BatchWriter for JournalWriter {
    async fn write_batch(&self, batch: &[AppendRequest]) -> Result<()> {
        let rows = batch.iter().map(|r| r.events.len()).sum();
        let (mut ids, mut shards, mut revisions, mut payloads) =
            (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows));
        for request in batch {
            let shard = shard_to_sql(request.shard)?;
            for event in &request.events {
                ids.push(request.entity_id.as_str());
                shards.push(shard);
                revisions.push(revision_to_sql(event.revision)?);
                payloads.push(event.payload.as_ref());
            }
        }
        let client = self.pool.get().await.map_err(map_error)?;
        let first = &batch[0];
        let map = |e| map_write_error(e, &first.entity_id, first.events[0].revision);
        // One statement, so one implicit transaction: every append of the batch or none.
        let Some(writer) = &self.writer else {
            let insert = client.prepare_cached(INSERT_SQL).await.map_err(map_error)?;
            client.execute(&insert, &[&now_millis(), &ids, &revisions, &shards, &payloads]).await.map_err(map)?;
            return Ok(());
        };
        // In a cluster the statement inserts nothing unless the writer may still write: fewer rows than events
        // means fenced, and nothing of the batch was stored.
        let insert = client.prepare_cached(&FENCED_INSERT_SQL).await.map_err(map_error)?;
        let inserted = client
            .execute(&insert, &[&now_millis(), &ids, &revisions, &shards, &payloads, &writer.node, &writer.incarnation])
            .await
            .map_err(map)?;
        if inserted as usize != rows {
            return Err(Error::Fenced(format!(
                "member {writer} is not an up member with a valid lease any more; {rows} events not written"
            )));
        }
        Ok(())
    }

    async fn write_one(&self, request: &AppendRequest) -> Result<()> {
        self.write_batch(std::slice::from_ref(request)).await
    }
}

#[async_trait]
impl Journal for PostgresStore {
    async fn append(&self, entity_id: &str, shard: u32, events: &[PersistedEvent]) -> Result<()> {
        self.batcher.append(entity_id, shard, events).await
    }

    async fn read_events(&self, entity_id: &str, after_revision: u64) -> Result<Vec<PersistedEvent>> {
        let after = revision_to_sql(after_revision)?;
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT revision, payload FROM journal WHERE entity_id = $1 AND revision > $2 ORDER BY revision",
            )
            .await
            .map_err(map_error)?;
        let rows = client.query(&select, &[&entity_id, &after]).await.map_err(map_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(PersistedEvent {
                    revision: revision_from_sql(row.try_get(0).map_err(map_error)?)?,
                    payload: Bytes::from(row.try_get::<_, Vec<u8>>(1).map_err(map_error)?),
                })
            })
            .collect()
    }

    async fn highest_revision(&self, entity_id: &str) -> Result<u64> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT COALESCE(MAX(revision), 0) FROM journal WHERE entity_id = $1")
            .await
            .map_err(map_error)?;
        let row = client.query_one(&select, &[&entity_id]).await.map_err(map_error)?;
        revision_from_sql(row.try_get(0).map_err(map_error)?)
    }

    async fn delete_events_up_to(&self, entity_id: &str, revision: u64) -> Result<()> {
        let up_to = revision_to_sql(revision)?;
        let client = self.client().await?;
        let delete = client
            .prepare_cached("DELETE FROM journal WHERE entity_id = $1 AND revision <= $2")
            .await
            .map_err(map_error)?;
        client.execute(&delete, &[&entity_id, &up_to]).await.map_err(map_error)?;
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn save_snapshot(&self, entity_id: &str, snapshot: &Snapshot) -> Result<()> {
        let revision = revision_to_sql(snapshot.revision)?;
        let client = self.client().await?;
        let upsert = client
            .prepare_cached(
                "INSERT INTO snapshots (entity_id, revision, written_at, payload) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (entity_id, revision) DO UPDATE SET written_at = EXCLUDED.written_at, payload = EXCLUDED.payload",
            )
            .await
            .map_err(map_error)?;
        client
            .execute(&upsert, &[&entity_id, &revision, &now_millis(), &snapshot.payload.as_ref()])
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn latest_snapshot(&self, entity_id: &str) -> Result<Option<Snapshot>> {
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT revision, payload FROM snapshots WHERE entity_id = $1 ORDER BY revision DESC LIMIT 1",
            )
            .await
            .map_err(map_error)?;
        let Some(row) = client.query_opt(&select, &[&entity_id]).await.map_err(map_error)? else { return Ok(None) };
        Ok(Some(Snapshot {
            revision: revision_from_sql(row.try_get(0).map_err(map_error)?)?,
            payload: Bytes::from(row.try_get::<_, Vec<u8>>(1).map_err(map_error)?),
        }))
    }

    async fn retain_snapshots(&self, entity_id: &str, keep: usize) -> Result<Option<u64>> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // One statement: the DELETE in the WITH clause runs even though the outer query does not read it.
        let retain = client
            .prepare_cached(
                "WITH kept AS ( \
                     SELECT revision FROM snapshots WHERE entity_id = $1 ORDER BY revision DESC LIMIT $2 \
                 ), deleted AS ( \
                     DELETE FROM snapshots WHERE entity_id = $1 AND revision NOT IN (SELECT revision FROM kept) \
                 ) \
                 SELECT MIN(revision) FROM kept",
            )
            .await
            .map_err(map_error)?;
        let row = client.query_one(&retain, &[&entity_id, &keep]).await.map_err(map_error)?;
        row.try_get::<_, Option<i64>>(0).map_err(map_error)?.map(revision_from_sql).transpose()
    }
}

/// Read sides poll the journal by `(tx_id, ordering)`, where `tx_id` is the id of the transaction that wrote the
/// row (migration 0004), and only below the oldest transaction still running.
///
/// Identity values (`ordering`) are drawn at insert time, not at commit: a transaction that inserted first can
/// commit after a later one, so a reader polling `ordering > offset` may pass a row that is not yet visible and
/// never come back for it. Filtering on `tx_id < pg_snapshot_xmin(pg_current_snapshot())` closes that gap: every
/// transaction with an id below the snapshot's xmin has finished (committed, so its rows are visible to the same
/// snapshot, or aborted), and every transaction that starts writing later gets a larger id. Hence no row with a key
/// below the returned ones can still appear, and a stored cursor never passes a row that commits late.
///
/// The price is latency: a row is delivered only once every transaction that was assigned an id before it has
/// finished, in the whole server (every database shares the id counter). A long transaction that writes anything
/// anywhere on the server, an idle-in-transaction session or a forgotten prepared transaction holds every read
/// side back until it ends. Read-only transactions are not assigned an id and do not count.
#[async_trait]
impl ReadSideStore for PostgresStore {
    async fn events_after(&self, shard: u32, after: Cursor, limit: usize) -> Result<Vec<JournalRow>> {
        let shard = shard_to_sql(shard)?;
        let (after_tx, after_ordering) = cursor_to_sql(after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // pg_current_snapshot() is the statement's own snapshot, the one that decides which rows are visible.
        let select = client
            .prepare_cached(
                "SELECT tx_id, ordering, entity_id, revision, payload FROM journal \
                 WHERE shard = $1 AND (tx_id, ordering) > ($2, $3) \
                 AND tx_id < (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint \
                 ORDER BY tx_id, ordering LIMIT $4",
            )
            .await
            .map_err(map_error)?;
        let rows = client.query(&select, &[&shard, &after_tx, &after_ordering, &limit]).await.map_err(map_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(JournalRow {
                    cursor: cursor_from_sql(row.try_get(0).map_err(map_error)?, row.try_get(1).map_err(map_error)?)?,
                    entity_id: row.try_get(2).map_err(map_error)?,
                    revision: revision_from_sql(row.try_get(3).map_err(map_error)?)?,
                    payload: Bytes::from(row.try_get::<_, Vec<u8>>(4).map_err(map_error)?),
                })
            })
            .collect()
    }

    async fn load_offset(&self, read_side_id: &str, shard: u32) -> Result<ReadSideOffset> {
        let shard = shard_to_sql(shard)?;
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT tx_id, ordering, paused FROM read_side_offsets WHERE read_side_id = $1 AND shard = $2",
            )
            .await
            .map_err(map_error)?;
        let Some(row) = client.query_opt(&select, &[&read_side_id, &shard]).await.map_err(map_error)? else {
            return Ok(ReadSideOffset::default());
        };
        offset_from_row(&row)
    }

    async fn load_offsets(&self, read_side_id: &str) -> Result<Vec<(u32, ReadSideOffset)>> {
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT tx_id, ordering, paused, shard FROM read_side_offsets WHERE read_side_id = $1 ORDER BY shard",
            )
            .await
            .map_err(map_error)?;
        let rows = client.query(&select, &[&read_side_id]).await.map_err(map_error)?;
        rows.iter()
            .map(|row| {
                let shard: i32 = row.try_get(3).map_err(map_error)?;
                let shard =
                    u32::try_from(shard).map_err(|_| Error::Backend(format!("stored shard {shard} is negative")))?;
                Ok((shard, offset_from_row(row)?))
            })
            .collect()
    }

    async fn save_cursor(&self, read_side_id: &str, shard: u32, cursor: Cursor) -> Result<()> {
        let shard = shard_to_sql(shard)?;
        let (tx, ordering) = cursor_to_sql(cursor)?;
        let client = self.client().await?;
        let Some(writer) = &self.writer else {
            let upsert = client.prepare_cached(SAVE_CURSOR_SQL).await.map_err(map_error)?;
            client
                .execute(&upsert, &[&read_side_id, &shard, &tx, &ordering, &now_millis()])
                .await
                .map_err(map_error)?;
            return Ok(());
        };
        // In a cluster, as for the journal: a member that was downed, froze past its lease or is cut off stores no
        // offset (its processor's late write would move the offset back under the shard's new owner).
        let upsert = client.prepare_cached(&FENCED_SAVE_CURSOR_SQL).await.map_err(map_error)?;
        let stored = client
            .execute(
                &upsert,
                &[&read_side_id, &shard, &tx, &ordering, &now_millis(), &writer.node, &writer.incarnation],
            )
            .await
            .map_err(map_error)?;
        if stored == 0 {
            return Err(Error::Fenced(format!(
                "member {writer} is not an up member with a valid lease any more; offset of {read_side_id} shard \
                 {shard} not stored"
            )));
        }
        Ok(())
    }

    async fn save_paused(&self, read_side_id: &str, shard: u32, paused: bool) -> Result<()> {
        let shard = shard_to_sql(shard)?;
        let client = self.client().await?;
        let upsert = client
            .prepare_cached(
                "INSERT INTO read_side_offsets (read_side_id, shard, paused, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (read_side_id, shard) DO UPDATE \
                 SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at",
            )
            .await
            .map_err(map_error)?;
        client.execute(&upsert, &[&read_side_id, &shard, &paused, &now_millis()]).await.map_err(map_error)?;
        Ok(())
    }
}

/// A `read_side_offsets` row whose first columns are `tx_id, ordering, paused`.
fn offset_from_row(row: &tokio_postgres::Row) -> Result<ReadSideOffset> {
    Ok(ReadSideOffset {
        cursor: cursor_from_sql(row.try_get(0).map_err(map_error)?, row.try_get(1).map_err(map_error)?)?,
        paused: row.try_get(2).map_err(map_error)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_are_accepted() {
        for name in ["public", "regent", "_x", "Regent_2", &"a".repeat(63)] {
            assert!(validate_identifier(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn anything_else_is_rejected() {
        for name in ["", "1abc", "bad;drop", "a b", "a\"b", "a-b", "é", &"a".repeat(64)] {
            assert!(matches!(validate_identifier(name), Err(Error::Misconfigured(_))), "{name}");
        }
    }
}
