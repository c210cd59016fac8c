//! The storage conformance suite: every case is written once against `Arc<dyn Store>` and run on every backend
//! (an SQLite file in a temporary directory, and PostgreSQL in a fresh schema of the test server), so that both
//! keep exactly the same semantics.

mod common;

use bytes::Bytes;
use regent::config::{Backend as BackendKind, PostgresConfig, StoreConfig};
use regent::persistence::{self, Error, PersistedEvent, Snapshot, Store};
use std::sync::Arc;
use tempfile::TempDir;

use common::pg;

const NUM_SHARDS: u32 = 16;

/// Where a case's store lives; reopening the same backend finds the same data.
enum Backend {
    Sqlite(TempDir),
    Postgres(PostgresConfig),
}

impl Backend {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("temporary directory"))
    }

    fn postgres() -> Self {
        Self::Postgres(pg::config())
    }

    fn store_config(&self) -> StoreConfig {
        match self {
            Self::Sqlite(dir) => StoreConfig {
                backend: BackendKind::Sqlite,
                data_dir: dir.path().join("data"),
                ..StoreConfig::default()
            },
            Self::Postgres(config) => {
                StoreConfig { backend: BackendKind::Postgres, postgres: config.clone(), ..StoreConfig::default() }
            }
        }
    }

    async fn open_with(&self, num_shards: u32) -> persistence::Result<Arc<dyn Store>> {
        persistence::open(&self.store_config(), num_shards).await
    }

    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(NUM_SHARDS).await.expect("open the store")
    }
}

/// One `#[tokio::test]` per case and backend: `sqlite::<case>` and `postgres::<case>`.
macro_rules! conformance_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::sqlite()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::postgres()).await;
                }
            )*
        }
    };
}

conformance_suite!(
    empty_entity_has_revision_zero_and_no_events,
    append_then_read_back_in_order,
    empty_append_is_a_no_op,
    multi_event_append_is_atomic,
    existing_revision_is_a_conflict,
    read_events_after_filters,
    entities_are_isolated,
    snapshots_save_latest_and_upsert,
    retain_snapshots_keeps_the_newest,
    delete_events_up_to_compacts_the_journal,
    reopening_keeps_the_data,
    concurrent_opens_migrate_once,
    different_num_shards_is_misconfigured,
    concurrent_appends_of_one_revision_have_one_winner,
    large_payloads_round_trip,
);

fn event(entity_id: &str, revision: u64) -> PersistedEvent {
    PersistedEvent { revision, payload: Bytes::from(format!("{entity_id}@{revision}")) }
}

fn events(entity_id: &str, revisions: std::ops::RangeInclusive<u64>) -> Vec<PersistedEvent> {
    revisions.map(|revision| event(entity_id, revision)).collect()
}

fn snapshot(revision: u64, tag: &str) -> Snapshot {
    Snapshot { revision, payload: Bytes::from(format!("state@{revision}:{tag}")) }
}

#[track_caller]
fn assert_conflict(result: persistence::Result<()>, expected_entity: &str, expected_revision: u64) {
    match result {
        Err(Error::Conflict { entity_id, revision }) => {
            assert_eq!((entity_id.as_str(), revision), (expected_entity, expected_revision));
        }
        other => panic!("expected a conflict on {expected_entity}@{expected_revision}, got {other:?}"),
    }
}

async fn empty_entity_has_revision_zero_and_no_events(backend: Backend) {
    let store = backend.open().await;
    assert_eq!(store.highest_revision("nobody").await.unwrap(), 0);
    assert_eq!(store.read_events("nobody", 0).await.unwrap(), vec![]);
    assert_eq!(store.latest_snapshot("nobody").await.unwrap(), None);
    assert_eq!(store.retain_snapshots("nobody", 2).await.unwrap(), None);
}

async fn append_then_read_back_in_order(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 3, &events("a", 1..=3)).await.unwrap();
    store.append("a", 3, &events("a", 4..=4)).await.unwrap();
    store.append("a", 3, &events("a", 5..=9)).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 1..=9));
    assert_eq!(store.highest_revision("a").await.unwrap(), 9);
}

async fn empty_append_is_a_no_op(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 0, &[]).await.unwrap();
    assert_eq!(store.highest_revision("a").await.unwrap(), 0);
}

async fn multi_event_append_is_atomic(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &[event("a", 2)]).await.unwrap();
    // The batch's second event collides with the stored revision 2: nothing of the batch may remain.
    assert_conflict(store.append("a", 1, &events("a", 1..=3)).await, "a", 1);
    assert_eq!(store.read_events("a", 0).await.unwrap(), vec![event("a", 2)]);
    assert_eq!(store.highest_revision("a").await.unwrap(), 2);
}

async fn existing_revision_is_a_conflict(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=2)).await.unwrap();
    let stale = vec![PersistedEvent { revision: 2, payload: Bytes::from_static(b"stale") }, event("a", 3)];
    assert_conflict(store.append("a", 1, &stale).await, "a", 2);
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 1..=2));
    // The store is still usable after the failed write.
    store.append("a", 1, &events("a", 3..=3)).await.unwrap();
    assert_eq!(store.highest_revision("a").await.unwrap(), 3);
}

async fn read_events_after_filters(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=5)).await.unwrap();
    assert_eq!(store.read_events("a", 2).await.unwrap(), events("a", 3..=5));
    assert_eq!(store.read_events("a", 4).await.unwrap(), events("a", 5..=5));
    assert_eq!(store.read_events("a", 5).await.unwrap(), vec![]);
    assert_eq!(store.read_events("a", 100).await.unwrap(), vec![]);
}

async fn entities_are_isolated(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=3)).await.unwrap();
    store.append("a1", 1, &events("a1", 1..=1)).await.unwrap();
    store.append("b", 2, &events("b", 1..=2)).await.unwrap();
    store.save_snapshot("a", &snapshot(3, "a")).await.unwrap();

    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 1..=3));
    assert_eq!(store.read_events("a1", 0).await.unwrap(), events("a1", 1..=1));
    assert_eq!(store.read_events("b", 0).await.unwrap(), events("b", 1..=2));
    assert_eq!(store.highest_revision("b").await.unwrap(), 2);
    assert_eq!(store.latest_snapshot("b").await.unwrap(), None);

    store.delete_events_up_to("b", 2).await.unwrap();
    store.retain_snapshots("b", 0).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 1..=3));
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(3, "a")));
}

async fn snapshots_save_latest_and_upsert(backend: Backend) {
    let store = backend.open().await;
    store.save_snapshot("a", &snapshot(10, "first")).await.unwrap();
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(10, "first")));

    store.save_snapshot("a", &snapshot(20, "first")).await.unwrap();
    store.save_snapshot("a", &snapshot(15, "first")).await.unwrap();
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(20, "first")));

    // Saving at an existing revision replaces it.
    store.save_snapshot("a", &snapshot(20, "second")).await.unwrap();
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(20, "second")));
}

async fn retain_snapshots_keeps_the_newest(backend: Backend) {
    let store = backend.open().await;
    for revision in [30, 10, 50, 20, 40] {
        store.save_snapshot("a", &snapshot(revision, "x")).await.unwrap();
    }
    assert_eq!(store.retain_snapshots("a", 2).await.unwrap(), Some(40));
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(50, "x")));
    // Only 40 and 50 remain: keeping more returns the oldest of those.
    assert_eq!(store.retain_snapshots("a", 10).await.unwrap(), Some(40));
    assert_eq!(store.retain_snapshots("a", 1).await.unwrap(), Some(50));
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(50, "x")));

    assert_eq!(store.retain_snapshots("a", 0).await.unwrap(), None);
    assert_eq!(store.latest_snapshot("a").await.unwrap(), None);
}

async fn delete_events_up_to_compacts_the_journal(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=5)).await.unwrap();
    store.delete_events_up_to("a", 3).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 4..=5));
    assert_eq!(store.highest_revision("a").await.unwrap(), 5);
    // Deleting again, or below what is left, changes nothing.
    store.delete_events_up_to("a", 2).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 4..=5));
    store.append("a", 1, &events("a", 6..=6)).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 4..=6));
}

async fn reopening_keeps_the_data(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=3)).await.unwrap();
    store.save_snapshot("a", &snapshot(3, "x")).await.unwrap();
    drop(store);

    for _ in 0..2 {
        // Migrations already applied are skipped: reopening is idempotent.
        let store = backend.open().await;
        assert_eq!(store.read_events("a", 0).await.unwrap(), events("a", 1..=3));
        assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot(3, "x")));
        assert_conflict(store.append("a", 1, &events("a", 3..=3)).await, "a", 3);
    }
}

async fn concurrent_opens_migrate_once(backend: Backend) {
    let opens = (0..4).map(|_| backend.open_with(NUM_SHARDS));
    let stores = futures::future::join_all(opens).await;
    let stores = stores.into_iter().collect::<persistence::Result<Vec<_>>>().expect("every open succeeds");
    stores[0].append("a", 1, &events("a", 1..=1)).await.unwrap();
    assert_eq!(stores[3].read_events("a", 0).await.unwrap(), events("a", 1..=1));
}

async fn different_num_shards_is_misconfigured(backend: Backend) {
    drop(backend.open().await);
    match backend.open_with(NUM_SHARDS / 2).await {
        Err(Error::Misconfigured(message)) => {
            assert!(message.contains(&NUM_SHARDS.to_string()), "{message}");
            assert!(message.contains(&(NUM_SHARDS / 2).to_string()), "{message}");
            assert!(message.contains("fixed for the life of a database"), "{message}");
        }
        Err(other) => panic!("expected Misconfigured, got {other:?}"),
        Ok(_) => panic!("expected Misconfigured, the store opened"),
    }
    // The recorded number is unchanged: the original configuration still opens.
    backend.open().await;
}

async fn concurrent_appends_of_one_revision_have_one_winner(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=1)).await.unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let store = store.clone();
        writers.spawn(async move {
            let payload = Bytes::from(format!("writer {writer}"));
            (payload.clone(), store.append("a", 1, &[PersistedEvent { revision: 2, payload }]).await)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = writers.join_next().await {
        match joined.expect("writer task") {
            (payload, Ok(())) => winners.push(payload),
            (_, result) => assert_conflict(result, "a", 2),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer stores revision 2");
    let stored = store.read_events("a", 1).await.unwrap();
    assert_eq!(stored, vec![PersistedEvent { revision: 2, payload: winners.remove(0) }]);
}

async fn large_payloads_round_trip(backend: Backend) {
    let store = backend.open().await;
    let big =
        Bytes::from((0..1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect::<Vec<_>>());
    let events = vec![
        PersistedEvent { revision: 1, payload: big.clone() },
        PersistedEvent { revision: 2, payload: big.slice(1..) },
    ];
    store.append("a", 1, &events).await.unwrap();
    assert_eq!(store.read_events("a", 0).await.unwrap(), events);
    let snapshot = Snapshot { revision: 2, payload: big };
    store.save_snapshot("a", &snapshot).await.unwrap();
    assert_eq!(store.latest_snapshot("a").await.unwrap(), Some(snapshot));
}

/// Cases that only PostgreSQL has: the schema is configuration spliced into SQL, and the server is remote.
mod postgres_only {
    use super::*;

    #[tokio::test]
    async fn invalid_schema_is_misconfigured() {
        for bad in ["bad;drop", "bad\"; DROP TABLE journal; --", "1abc", "", "a-b"] {
            let config = PostgresConfig { schema: bad.into(), ..pg::config() };
            match persistence::postgres::PostgresStore::open(&config, NUM_SHARDS).await {
                Err(Error::Misconfigured(message)) => assert!(message.contains(&format!("{bad:?}")), "{message}"),
                Err(other) => panic!("schema {bad:?}: expected Misconfigured, got {other:?}"),
                Ok(_) => panic!("schema {bad:?} was accepted"),
            }
        }
    }

    #[tokio::test]
    async fn mixed_case_schema_keeps_its_case() {
        let schema = format!("Regent_{}", &pg::unique_schema()[9..]);
        let backend = Backend::Postgres(PostgresConfig { schema, ..pg::config() });
        let store = backend.open().await;
        store.append("a", 1, &events("a", 1..=2)).await.unwrap();
        drop(store);
        assert_eq!(backend.open().await.read_events("a", 0).await.unwrap(), events("a", 1..=2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_connections_are_unavailable_then_replaced() {
        let config = pg::config();
        let store = Backend::Postgres(config.clone()).open().await;
        store.append("a", 1, &events("a", 1..=1)).await.unwrap();

        // Kill this store's sessions (and only them) from another connection, as a server restart would.
        let url = std::env::var(pg::DATABASE_URL_VAR).unwrap();
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("regent:{}", config.schema)],
            )
            .await
            .unwrap();
        assert!(killed >= 1, "the store had a session open");

        // A call may see the lost session (Unavailable, never Backend); the pool then opens a new one.
        let mut recovered = false;
        for _ in 0..10 {
            match store.highest_revision("a").await {
                Ok(revision) => {
                    assert_eq!(revision, 1);
                    recovered = true;
                    break;
                }
                Err(Error::Unavailable(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(other) => panic!("a lost connection must be Unavailable, got {other:?}"),
            }
        }
        assert!(recovered, "the store reconnects after losing its sessions");
        store.append("a", 1, &events("a", 2..=2)).await.unwrap();
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
        let config = PostgresConfig { host: "127.0.0.1".into(), port: 1, ..pg::config() };
        match persistence::postgres::PostgresStore::open(&config, NUM_SHARDS).await {
            Err(Error::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {:?}", other.map(|_| "a store")),
        }
    }
}
