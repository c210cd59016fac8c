//! SQLite backend: an embedded file, `<data_dir>/regent.db`, so that a node runs with no database server.
//!
//! One connection, in WAL mode with `synchronous=FULL` (a commit is on disk before the call returns), behind an
//! async mutex. Each operation takes the mutex without blocking the runtime, then runs on tokio's blocking pool
//! (`spawn_blocking`). The schema is the same as PostgreSQL's, applied by the numbered migrations of
//! `migrations/sqlite/`, and failures are classified in one place, [`map_error`].

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, ffi, params};
use std::path::Path;
use std::time::Duration;
use tokio::sync::Mutex;

use super::batching::{AppendRequest, BatchLimits, BatchWriter, Batcher};
use super::migrations::{self, Migration};
use super::*;

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "regent.db";

/// How long a statement waits for another process's lock on the file before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The journal and snapshots in an embedded SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Journal appends go through here: concurrent appends share one transaction (and one fsync).
    batcher: Batcher,
}

/// The journal writer behind the [`Batcher`].
struct JournalWriter {
    conn: Arc<Mutex<Connection>>,
}

/// Most events written in one journal transaction.
const MAX_BATCH_EVENTS: usize = 500;
/// Appends waiting for the writer before entities wait to enqueue (back-pressure).
const BATCH_QUEUE: usize = 4096;

impl SqliteStore {
    /// Creates `data_dir` and its database file if missing, applies pending migrations and checks that the
    /// database was initialised with `num_shards` shards (recording it on first boot).
    pub async fn open(data_dir: &Path, num_shards: u32) -> Result<Self> {
        let data_dir = data_dir.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&data_dir, num_shards))
            .await
            .map_err(|e| Error::Backend(format!("sqlite open task failed: {e}")))??;
        let conn = Arc::new(Mutex::new(conn));
        // One writer: SQLite writes are serial anyway; batching is what saves commits.
        let limits = BatchLimits { writers: 1, max_events: MAX_BATCH_EVENTS, queue: BATCH_QUEUE };
        let batcher = Batcher::spawn(Arc::new(JournalWriter { conn: conn.clone() }), limits);
        Ok(Self { conn, batcher })
    }

    /// Runs `op` on the connection, on the blocking pool.
    async fn with_conn<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        run(&self.conn, op).await
    }
}

/// Runs `op` on the connection, on the blocking pool.
async fn run<T, F>(conn: &Arc<Mutex<Connection>>, op: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    let mut conn = conn.clone().lock_owned().await;
    tokio::task::spawn_blocking(move || op(&mut conn))
        .await
        .map_err(|e| Error::Backend(format!("sqlite task failed: {e}")))?
}

/// Rows of one append, ready for the blocking task.
struct Rows {
    entity_id: String,
    shard: u32,
    rows: Vec<(i64, Bytes)>,
}

impl Rows {
    fn of(request: &AppendRequest) -> Result<Self> {
        let rows = request
            .events
            .iter()
            .map(|e| Ok((revision_to_sql(e.revision)?, e.payload.clone())))
            .collect::<Result<Vec<(i64, Bytes)>>>()?;
        Ok(Self { entity_id: request.entity_id.clone(), shard: request.shard, rows })
    }
}

/// Inserts `appends` in one transaction: all or none.
fn insert_all(conn: &mut Connection, appends: &[Rows]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_error)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO journal (entity_id, revision, shard, written_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(map_error)?;
        let written_at = now_millis();
        for append in appends {
            let first = append.rows.first().map_or(0, |(r, _)| *r as u64);
            for (revision, payload) in &append.rows {
                insert
                    .execute(params![append.entity_id, revision, append.shard, written_at, payload.as_ref()])
                    .map_err(|e| map_write_error(e, &append.entity_id, first))?;
            }
        }
    }
    tx.commit().map_err(map_error)
}

#[async_trait]
impl BatchWriter for JournalWriter {
    async fn write_batch(&self, batch: &[AppendRequest]) -> Result<()> {
        let appends = batch.iter().map(Rows::of).collect::<Result<Vec<_>>>()?;
        run(&self.conn, move |conn| insert_all(conn, &appends)).await
    }

    async fn write_one(&self, request: &AppendRequest) -> Result<()> {
        let append = [Rows::of(request)?];
        run(&self.conn, move |conn| insert_all(conn, &append)).await
    }
}

fn open_blocking(data_dir: &Path, num_shards: u32) -> Result<Connection> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Misconfigured(format!("cannot create the data directory {}: {e}", data_dir.display())))?;
    let path = data_dir.join(FILE_NAME);
    let mut conn = Connection::open(&path).map_err(map_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(map_error)?;
    // Switching a new file to WAL upgrades a read lock to an exclusive one. When two processes (or two opens) do
    // that at once, SQLite answers one of them SQLITE_BUSY at once instead of calling the busy handler (waiting
    // could deadlock), so that one retries until the busy timeout.
    let mode: String = retry_while_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)))
        .map_err(map_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Misconfigured(format!("{} cannot use WAL journaling (got {mode})", path.display())));
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(map_error)?;
    migrate(&mut conn)?;
    check_num_shards(&mut conn, num_shards)?;
    Ok(conn)
}

/// Applies the pending migrations, each in its own `BEGIN IMMEDIATE` transaction, which holds the file's write
/// lock so that two processes opening the same file do not both migrate it.
fn migrate(conn: &mut Connection) -> Result<()> {
    // In a transaction of its own too: outside one, the statement would read the schema first and then ask for
    // the write lock, which SQLite refuses at once (SQLITE_BUSY, no busy handler) when another open wrote between.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_error)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS regent_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(map_error)?;
    tx.commit().map_err(map_error)?;
    for Migration { version, name, sql } in migrations::SQLITE.iter().copied() {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_error)?;
        let applied = tx
            .query_row("SELECT 1 FROM regent_migrations WHERE version = ?1", [version], |_| Ok(()))
            .optional()
            .map_err(map_error)?
            .is_some();
        if applied {
            continue; // the transaction rolls back on drop
        }
        tx.execute_batch(sql).map_err(|e| match map_error(e) {
            Error::Backend(msg) => Error::Backend(format!("migration {name} failed: {msg}")),
            other => other,
        })?;
        tx.execute(
            "INSERT INTO regent_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_millis()],
        )
        .map_err(map_error)?;
        tx.commit().map_err(map_error)?;
        tracing::info!(migration = name, "applied sqlite migration");
    }
    Ok(())
}

/// Records `num_shards` on first boot, then fails unless the recorded number is `num_shards`.
fn check_num_shards(conn: &mut Connection, num_shards: u32) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_error)?;
    tx.execute(
        "INSERT INTO regent_settings (key, value) VALUES ('num_shards', ?1) ON CONFLICT (key) DO NOTHING",
        [num_shards.to_string()],
    )
    .map_err(map_error)?;
    let stored: String = tx
        .query_row("SELECT value FROM regent_settings WHERE key = 'num_shards'", [], |row| row.get(0))
        .map_err(map_error)?;
    tx.commit().map_err(map_error)?;
    if stored == num_shards.to_string() { Ok(()) } else { Err(shard_count_mismatch(&stored, num_shards)) }
}

/// Runs `op` again while SQLite answers `SQLITE_BUSY` without having waited (see [`open_blocking`]), for up to
/// [`BUSY_TIMEOUT`] in all.
fn retry_while_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(err)
                if err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// The one classification of SQLite failures: a file locked by another process for longer than the busy timeout,
/// or a file that cannot be opened, is [`Error::Unavailable`]; everything else is [`Error::Backend`]. (A
/// uniqueness violation on the journal's key is turned into [`Error::Conflict`] by [`map_write_error`].)
fn map_error(err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            Error::Unavailable(format!("sqlite: {err}"))
        }
        _ => Error::Backend(format!("sqlite: {err}")),
    }
}

/// Like [`map_error`], but a primary-key or unique violation means `revision` of `entity_id` is already stored.
fn map_write_error(err: rusqlite::Error, entity_id: &str, revision: u64) -> Error {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || e.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Error::Conflict { entity_id: entity_id.to_owned(), revision }
        }
        _ => map_error(err),
    }
}

#[async_trait]
impl Journal for SqliteStore {
    async fn append(&self, entity_id: &str, shard: u32, events: &[PersistedEvent]) -> Result<()> {
        self.batcher.append(entity_id, shard, events).await
    }

    async fn read_events(&self, entity_id: &str, after_revision: u64) -> Result<Vec<PersistedEvent>> {
        let entity_id = entity_id.to_owned();
        let after = revision_to_sql(after_revision)?;
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT revision, payload FROM journal WHERE entity_id = ?1 AND revision > ?2 ORDER BY revision",
                )
                .map_err(map_error)?;
            let rows = select
                .query_map(params![entity_id, after], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)))
                .map_err(map_error)?;
            rows.map(|row| {
                let (revision, payload) = row.map_err(map_error)?;
                Ok(PersistedEvent { revision: revision_from_sql(revision)?, payload: Bytes::from(payload) })
            })
            .collect()
        })
        .await
    }

    async fn highest_revision(&self, entity_id: &str) -> Result<u64> {
        let entity_id = entity_id.to_owned();
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached("SELECT COALESCE(MAX(revision), 0) FROM journal WHERE entity_id = ?1")
                .map_err(map_error)?;
            revision_from_sql(select.query_row([entity_id], |row| row.get(0)).map_err(map_error)?)
        })
        .await
    }

    async fn delete_events_up_to(&self, entity_id: &str, revision: u64) -> Result<()> {
        let entity_id = entity_id.to_owned();
        let up_to = revision_to_sql(revision)?;
        self.with_conn(move |conn| {
            let mut delete = conn
                .prepare_cached("DELETE FROM journal WHERE entity_id = ?1 AND revision <= ?2")
                .map_err(map_error)?;
            delete.execute(params![entity_id, up_to]).map_err(map_error)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, entity_id: &str, snapshot: &Snapshot) -> Result<()> {
        let entity_id = entity_id.to_owned();
        let revision = revision_to_sql(snapshot.revision)?;
        let payload = snapshot.payload.clone();
        self.with_conn(move |conn| {
            let mut upsert = conn
                .prepare_cached(
                    "INSERT INTO snapshots (entity_id, revision, written_at, payload) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (entity_id, revision) \
                     DO UPDATE SET written_at = excluded.written_at, payload = excluded.payload",
                )
                .map_err(map_error)?;
            upsert.execute(params![entity_id, revision, now_millis(), payload.as_ref()]).map_err(map_error)?;
            Ok(())
        })
        .await
    }

    async fn latest_snapshot(&self, entity_id: &str) -> Result<Option<Snapshot>> {
        let entity_id = entity_id.to_owned();
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT revision, payload FROM snapshots WHERE entity_id = ?1 ORDER BY revision DESC LIMIT 1",
                )
                .map_err(map_error)?;
            let row = select
                .query_row([entity_id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)))
                .optional()
                .map_err(map_error)?;
            row.map(|(revision, payload)| {
                Ok(Snapshot { revision: revision_from_sql(revision)?, payload: Bytes::from(payload) })
            })
            .transpose()
        })
        .await
    }

    async fn retain_snapshots(&self, entity_id: &str, keep: usize) -> Result<Option<u64>> {
        let entity_id = entity_id.to_owned();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_error)?;
            let oldest_kept: Option<i64> = tx
                .prepare_cached(
                    "SELECT MIN(revision) FROM \
                     (SELECT revision FROM snapshots WHERE entity_id = ?1 ORDER BY revision DESC LIMIT ?2)",
                )
                .and_then(|mut select| select.query_row(params![entity_id, keep], |row| row.get(0)))
                .map_err(map_error)?;
            // With nothing kept (keep = 0 or no snapshot), ?2 is NULL and every snapshot of the entity goes.
            tx.prepare_cached("DELETE FROM snapshots WHERE entity_id = ?1 AND (?2 IS NULL OR revision < ?2)")
                .and_then(|mut delete| delete.execute(params![entity_id, oldest_kept]))
                .map_err(map_error)?;
            tx.commit().map_err(map_error)?;
            oldest_kept.map(revision_from_sql).transpose()
        })
        .await
    }
}

/// SQLite's writes are serial and `ordering` is an AUTOINCREMENT rowid, so rows become visible in `ordering` order
/// and the cursor's `tx` is the ordering itself (see migration 0004): polling `ordering > after.ordering` never
/// skips a row.
#[async_trait]
impl ReadSideStore for SqliteStore {
    async fn events_after(&self, shard: u32, after: Cursor, limit: usize) -> Result<Vec<JournalRow>> {
        let after = position_to_sql(after.ordering)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT ordering, entity_id, revision, payload FROM journal \
                     WHERE shard = ?1 AND ordering > ?2 ORDER BY ordering LIMIT ?3",
                )
                .map_err(map_error)?;
            let rows = select
                .query_map(params![shard, after, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .map_err(map_error)?;
            rows.map(|row| {
                let (ordering, entity_id, revision, payload) = row.map_err(map_error)?;
                Ok(JournalRow {
                    cursor: cursor_from_sql(ordering, ordering)?,
                    entity_id,
                    revision: revision_from_sql(revision)?,
                    payload: Bytes::from(payload),
                })
            })
            .collect()
        })
        .await
    }

    async fn load_offset(&self, read_side_id: &str, shard: u32) -> Result<ReadSideOffset> {
        let read_side_id = read_side_id.to_owned();
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT tx_id, ordering, paused FROM read_side_offsets WHERE read_side_id = ?1 AND shard = ?2",
                )
                .map_err(map_error)?;
            let row = select.query_row(params![read_side_id, shard], offset_columns).optional().map_err(map_error)?;
            row.map(offset_from_columns).transpose().map(Option::unwrap_or_default)
        })
        .await
    }

    async fn load_offsets(&self, read_side_id: &str) -> Result<Vec<(u32, ReadSideOffset)>> {
        let read_side_id = read_side_id.to_owned();
        self.with_conn(move |conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT tx_id, ordering, paused, shard FROM read_side_offsets WHERE read_side_id = ?1 \
                     ORDER BY shard",
                )
                .map_err(map_error)?;
            let rows = select
                .query_map([read_side_id], |row| Ok((row.get::<_, u32>(3)?, offset_columns(row)?)))
                .map_err(map_error)?;
            rows.map(|row| {
                let (shard, columns) = row.map_err(map_error)?;
                Ok((shard, offset_from_columns(columns)?))
            })
            .collect()
        })
        .await
    }

    async fn save_cursor(&self, read_side_id: &str, shard: u32, cursor: Cursor) -> Result<()> {
        let read_side_id = read_side_id.to_owned();
        let (tx, ordering) = cursor_to_sql(cursor)?;
        self.with_conn(move |conn| {
            let mut upsert = conn
                .prepare_cached(
                    "INSERT INTO read_side_offsets (read_side_id, shard, tx_id, ordering, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (read_side_id, shard) DO UPDATE \
                     SET tx_id = excluded.tx_id, ordering = excluded.ordering, updated_at = excluded.updated_at",
                )
                .map_err(map_error)?;
            upsert.execute(params![read_side_id, shard, tx, ordering, now_millis()]).map_err(map_error)?;
            Ok(())
        })
        .await
    }

    async fn save_paused(&self, read_side_id: &str, shard: u32, paused: bool) -> Result<()> {
        let read_side_id = read_side_id.to_owned();
        self.with_conn(move |conn| {
            let mut upsert = conn
                .prepare_cached(
                    "INSERT INTO read_side_offsets (read_side_id, shard, paused, updated_at) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (read_side_id, shard) DO UPDATE \
                     SET paused = excluded.paused, updated_at = excluded.updated_at",
                )
                .map_err(map_error)?;
            upsert.execute(params![read_side_id, shard, paused, now_millis()]).map_err(map_error)?;
            Ok(())
        })
        .await
    }
}

/// The `tx_id, ordering, paused` columns of a `read_side_offsets` row.
fn offset_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64, bool)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn offset_from_columns((tx, ordering, paused): (i64, i64, bool)) -> Result<ReadSideOffset> {
    Ok(ReadSideOffset { cursor: cursor_from_sql(tx, ordering)?, paused })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes that open a new file at once race to switch it to WAL and to migrate it; SQLite answers some of
    /// those races `SQLITE_BUSY` without waiting. Every open must still succeed (CI saw "database is locked").
    #[test]
    fn concurrent_first_opens_of_a_new_file_all_succeed() {
        for _ in 0..30 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let opens: Vec<_> = (0..4)
                .map(|_| {
                    let data_dir = dir.path().join("data");
                    std::thread::spawn(move || open_blocking(&data_dir, 16).map(drop))
                })
                .collect();
            for open in opens {
                open.join().expect("the open thread").expect("every open succeeds");
            }
        }
    }
}
