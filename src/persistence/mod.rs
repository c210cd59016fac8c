//! Durable storage of entities: the journal (one row per event) and snapshots, behind the [`Journal`] and
//! [`SnapshotStore`] traits, with two backends:
//!
//! - [`postgres`]: PostgreSQL through deadpool-postgres, the production store shared by every node;
//! - [`sqlite`]: an embedded SQLite file under the data directory, so that a node runs with no database server.
//!
//! Payloads are opaque bytes: journal rows hold encoded `EventWrapper`s and snapshots encoded `StateWrapper`s,
//! exactly as Chief of State stores them. Both backends record the number of shards at first boot and refuse to
//! open with a different one. Both pass the same conformance suite (`tests/persistence_conformance.rs`).

pub mod batching;
mod migrations;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

use crate::config::{Backend, StoreConfig};

/// One journal row: the event at `revision` of an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEvent {
    /// The entity's revision this event produced (1-based, contiguous).
    pub revision: u64,
    /// An encoded `chief_of_state.v1.EventWrapper`.
    pub payload: Bytes,
}

/// One snapshot: the entity's state at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: u64,
    /// An encoded `chief_of_state.v1.StateWrapper`.
    pub payload: Bytes,
}

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Another writer already stored this revision of the entity (unique-key violation): the caller's view of
    /// the entity is stale and it must not acknowledge anything.
    #[error("concurrent write conflict: entity {entity_id:?} already has revision {revision}")]
    Conflict { entity_id: String, revision: u64 },
    /// In a cluster: this node may no longer write (its membership lease expired, or it was downed). Nothing of
    /// the write was stored; the node is about to stop.
    #[error("this node is fenced off the journal: {0}")]
    Fenced(String),
    /// The store cannot be reached (connection refused or lost, pool exhausted, database shutting down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is reachable but refused the configuration (e.g. a different number of shards).
    #[error("store misconfigured: {0}")]
    Misconfigured(String),
    /// Any other failure of the backend.
    #[error("store error: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The event journal.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Appends `events` of one entity atomically (all or none), in `shard`. Their revisions are contiguous and
    /// follow the entity's last stored revision; a revision that already exists fails the whole append with
    /// [`Error::Conflict`]. Returns only once the events are durable.
    async fn append(&self, entity_id: &str, shard: u32, events: &[PersistedEvent]) -> Result<()>;

    /// The entity's events with a revision greater than `after_revision`, in ascending order.
    async fn read_events(&self, entity_id: &str, after_revision: u64) -> Result<Vec<PersistedEvent>>;

    /// The entity's highest stored revision (0 when it has none).
    async fn highest_revision(&self, entity_id: &str) -> Result<u64>;

    /// Deletes the entity's events with a revision up to and including `revision` (journal compaction).
    ///
    /// Conflicts are detected on stored rows only: once every event of an entity is deleted,
    /// [`highest_revision`](Journal::highest_revision) returns 0 and those revisions could be appended again. Callers
    /// take the higher of it and the latest snapshot's revision, and compact only up to a snapshot they keep.
    async fn delete_events_up_to(&self, entity_id: &str, revision: u64) -> Result<()>;
}

/// The snapshot store.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores a snapshot (replacing one at the same revision).
    async fn save_snapshot(&self, entity_id: &str, snapshot: &Snapshot) -> Result<()>;

    /// The entity's snapshot with the highest revision.
    async fn latest_snapshot(&self, entity_id: &str) -> Result<Option<Snapshot>>;

    /// Keeps the entity's `keep` newest snapshots and deletes the others. Returns the revision of the oldest
    /// snapshot kept, if any.
    async fn retain_snapshots(&self, entity_id: &str, keep: usize) -> Result<Option<u64>>;
}

/// A read side's position in the event stream of one shard.
///
/// Rows are delivered in `(tx, ordering)` order. `tx` is a commit-safe key: the backend only hands out rows once
/// no row with a smaller key can still appear (PostgreSQL: the writing transaction's id, read only below the
/// oldest running transaction, so a transaction that commits late is never skipped; SQLite, whose writes are
/// serial: the ordering itself). `ordering` is the journal's global order, the offset CoS's manager API shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub tx: u64,
    pub ordering: u64,
}

/// One journal row as read sides see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// Where this row sits; a read side that handled it stores this cursor.
    pub cursor: Cursor,
    pub entity_id: String,
    pub revision: u64,
    /// An encoded `chief_of_state.v1.EventWrapper`.
    pub payload: Bytes,
}

/// The stored state of one read side in one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadSideOffset {
    /// The last row handled (`Cursor::default()` = none yet: start from the beginning of the journal).
    pub cursor: Cursor,
    pub paused: bool,
}

/// Offsets and pause flags of read sides, and the journal as read sides read it.
#[async_trait]
pub trait ReadSideStore: Send + Sync + 'static {
    /// Up to `limit` rows of `shard` after `after`, in cursor order, never skipping a row that commits late.
    ///
    /// A committed row may be held back for a while: PostgreSQL returns it only once every transaction that was
    /// assigned an id before it has finished, anywhere on the server, so a long-running writing transaction delays
    /// every read side until it ends. A row, once returned, is returned again by every later call with the same
    /// `after` (until journal compaction deletes it).
    async fn events_after(&self, shard: u32, after: Cursor, limit: usize) -> Result<Vec<JournalRow>>;

    /// The stored offset of `read_side_id` in `shard` (default when none is stored).
    async fn load_offset(&self, read_side_id: &str, shard: u32) -> Result<ReadSideOffset>;

    /// The stored offsets of `read_side_id` in every shard that has one, by shard.
    async fn load_offsets(&self, read_side_id: &str) -> Result<Vec<(u32, ReadSideOffset)>>;

    /// Stores the cursor of `read_side_id` in `shard`, keeping its pause flag.
    async fn save_cursor(&self, read_side_id: &str, shard: u32, cursor: Cursor) -> Result<()>;

    /// Stores the pause flag of `read_side_id` in `shard`, keeping its cursor.
    async fn save_paused(&self, read_side_id: &str, shard: u32, paused: bool) -> Result<()>;
}

/// Per-shard signals that new events were appended on this node, so that read sides wake at once instead of
/// waiting for their next poll.
pub struct JournalSignals {
    senders: Vec<tokio::sync::watch::Sender<u64>>,
}

impl JournalSignals {
    pub fn new(num_shards: u32) -> Self {
        Self { senders: (0..num_shards).map(|_| tokio::sync::watch::channel(0).0).collect() }
    }

    /// Signals that `shard` has new events.
    pub fn notify(&self, shard: u32) {
        if let Some(sender) = self.senders.get(shard as usize) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees every later [`notify`](Self::notify) of `shard`.
    pub fn subscribe(&self, shard: u32) -> tokio::sync::watch::Receiver<u64> {
        self.senders[shard as usize].subscribe()
    }
}

/// A whole backend: journal, snapshots and read-side offsets in one store.
pub trait Store: Journal + SnapshotStore + ReadSideStore {}

impl<T: Journal + SnapshotStore + ReadSideStore> Store for T {}

/// The current time in epoch milliseconds, as stored in `written_at` columns.
fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A revision as the signed 64-bit integer both databases store.
fn revision_to_sql(revision: u64) -> Result<i64> {
    i64::try_from(revision).map_err(|_| Error::Backend(format!("revision {revision} is out of the storable range")))
}

/// A stored revision back as a `u64` (the columns never hold negative values).
fn revision_from_sql(revision: i64) -> Result<u64> {
    u64::try_from(revision).map_err(|_| Error::Backend(format!("stored revision {revision} is negative")))
}

/// A journal position (an ordering or a transaction id of a [`Cursor`]) as the signed 64-bit integer both
/// databases store.
fn position_to_sql(position: u64) -> Result<i64> {
    i64::try_from(position).map_err(|_| Error::Backend(format!("position {position} is out of the storable range")))
}

/// A stored position back as a `u64` (the columns never hold negative values).
fn position_from_sql(position: i64) -> Result<u64> {
    u64::try_from(position).map_err(|_| Error::Backend(format!("stored position {position} is negative")))
}

/// A [`Cursor`] as the `(tx_id, ordering)` pair both databases store.
fn cursor_to_sql(cursor: Cursor) -> Result<(i64, i64)> {
    Ok((position_to_sql(cursor.tx)?, position_to_sql(cursor.ordering)?))
}

/// A stored `(tx_id, ordering)` pair back as a [`Cursor`].
fn cursor_from_sql(tx: i64, ordering: i64) -> Result<Cursor> {
    Ok(Cursor { tx: position_from_sql(tx)?, ordering: position_from_sql(ordering)? })
}

/// The message of [`Error::Misconfigured`] when a database was initialised with another number of shards.
fn shard_count_mismatch(stored: &str, configured: u32) -> Error {
    Error::Misconfigured(format!(
        "the database was initialised with {stored} shards but {configured} are configured: \
         the shard count is fixed for the life of a database"
    ))
}

/// Opens (creating and migrating as needed) the configured backend, checking the recorded number of shards.
pub async fn open(config: &StoreConfig, num_shards: u32) -> Result<Arc<dyn Store>> {
    open_as(config, num_shards, None).await
}

/// [`open`], for a cluster member: every journal write and read-side offset write of this store is fenced on
/// `writer` still being a member allowed to write ([`crate::cluster::membership::writer_valid_predicate`]); a
/// fenced write stores nothing and fails with [`Error::Fenced`]. PostgreSQL only (a cluster needs it).
pub async fn open_as(
    config: &StoreConfig,
    num_shards: u32,
    writer: Option<crate::cluster::MemberId>,
) -> Result<Arc<dyn Store>> {
    Ok(match config.backend {
        Backend::Postgres => Arc::new(postgres::PostgresStore::open_as(&config.postgres, num_shards, writer).await?),
        Backend::Sqlite => Arc::new(sqlite::SqliteStore::open(&config.data_dir, num_shards).await?),
    })
}
