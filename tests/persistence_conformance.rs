//! The storage conformance suite: every case is written once against `Arc<dyn Store>` and run on every backend
//! (an SQLite file in a temporary directory, and PostgreSQL in a fresh schema of the test server), so that both
//! keep exactly the same semantics.

mod common;

use bytes::Bytes;
use regent::config::{Backend as BackendKind, PostgresConfig, StoreConfig};
use regent::persistence::{self, Cursor, Error, JournalRow, PersistedEvent, ReadSideOffset, Snapshot, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    read_side_offsets_default_to_zero_and_unpaused,
    save_cursor_and_save_paused_keep_each_others_field,
    load_offsets_lists_shards_in_order,
    events_after_reads_one_shard_in_order,
    events_after_respects_after_and_limit,
    cursor_of_a_returned_row_resumes_right_after_it,
    multi_event_appends_come_back_in_revision_order,
    a_conflict_fails_only_its_own_append_among_concurrent_ones,
);

/// Appends of many entities are batched into shared transactions: one that conflicts must not take its
/// batch-mates down with it, and none of them may be partly written.
async fn a_conflict_fails_only_its_own_append_among_concurrent_ones(backend: Backend) {
    let store = backend.open().await;
    store.append("taken", 0, &events("taken", 1..=2)).await.unwrap();
    for round in 0..5 {
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..64 {
            let store = store.clone();
            writers.spawn(async move {
                if writer == 32 {
                    // Revision 2 exists: this append (2..=3) conflicts as a whole.
                    ("taken".to_string(), store.append("taken", 0, &events("taken", 2..=3)).await)
                } else {
                    let id = format!("r{round}-w{writer}");
                    let outcome = store.append(&id, writer % 4, &events(&id, 1..=2)).await;
                    (id, outcome)
                }
            });
        }
        while let Some(joined) = writers.join_next().await {
            let (id, outcome) = joined.expect("writer task");
            if id == "taken" {
                assert_conflict(outcome, "taken", 2);
            } else {
                outcome.unwrap_or_else(|e| panic!("{id} failed with its batch-mate's conflict: {e}"));
                assert_eq!(store.read_events(&id, 0).await.unwrap(), events(&id, 1..=2));
            }
        }
        assert_eq!(store.highest_revision("taken").await.unwrap(), 2, "nothing of the conflicting append is stored");
    }
}

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

/// How long a test waits for PostgreSQL to deliver committed rows to read sides (see [`settled_rows`]).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every row of `shard` (from the start of the journal), once `expected` rows are delivered.
///
/// PostgreSQL hands a committed row to read sides only once every transaction that was assigned an id before it has
/// finished, in the whole server: other tests, or anyone else using the test server, can hold a row back for a
/// moment. Once delivered, a row stays delivered, so the assertions that follow are exact. SQLite delivers at once.
async fn settled_rows(store: &dyn Store, shard: u32, expected: usize) -> Vec<JournalRow> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let rows = store.events_after(shard, Cursor::default(), usize::MAX).await.unwrap();
        if rows.len() >= expected {
            assert_eq!(rows.len(), expected, "shard {shard} holds more rows than expected: {rows:?}");
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard}: only {} of {expected} committed rows delivered after {DELIVERY_TIMEOUT:?} \
             (a long transaction on the test server?)",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `(entity_id, revision)` of rows, in order.
fn keys(rows: &[JournalRow]) -> Vec<(&str, u64)> {
    rows.iter().map(|row| (row.entity_id.as_str(), row.revision)).collect()
}

#[track_caller]
fn assert_strictly_increasing(rows: &[JournalRow]) {
    for pair in rows.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "cursors out of order: {pair:?}");
    }
}

fn cursor(tx: u64, ordering: u64) -> Cursor {
    Cursor { tx, ordering }
}

async fn read_side_offsets_default_to_zero_and_unpaused(backend: Backend) {
    let store = backend.open().await;
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), ReadSideOffset::default());
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), ReadSideOffset { cursor: cursor(0, 0), paused: false });
    assert_eq!(store.load_offsets("rs").await.unwrap(), vec![]);
}

async fn save_cursor_and_save_paused_keep_each_others_field(backend: Backend) {
    let store = backend.open().await;
    let offset = |cursor, paused| ReadSideOffset { cursor, paused };

    // The cursor first, then the flag.
    store.save_cursor("rs", 3, cursor(7, 5)).await.unwrap();
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(7, 5), false));
    store.save_paused("rs", 3, true).await.unwrap();
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(7, 5), true));
    store.save_cursor("rs", 3, cursor(9, 2)).await.unwrap();
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(9, 2), true));
    store.save_paused("rs", 3, false).await.unwrap();
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(9, 2), false));

    // The flag first, then the cursor.
    store.save_paused("rs", 4, true).await.unwrap();
    assert_eq!(store.load_offset("rs", 4).await.unwrap(), offset(Cursor::default(), true));
    store.save_cursor("rs", 4, cursor(11, 10)).await.unwrap();
    assert_eq!(store.load_offset("rs", 4).await.unwrap(), offset(cursor(11, 10), true));

    // Saving again is idempotent; other read sides and shards are untouched.
    store.save_cursor("rs", 4, cursor(11, 10)).await.unwrap();
    store.save_paused("rs", 4, true).await.unwrap();
    assert_eq!(store.load_offset("rs", 4).await.unwrap(), offset(cursor(11, 10), true));
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(9, 2), false));
    assert_eq!(store.load_offset("other", 3).await.unwrap(), ReadSideOffset::default());
    assert_eq!(store.load_offset("rs", 5).await.unwrap(), ReadSideOffset::default());

    // Offsets are durable.
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.load_offset("rs", 3).await.unwrap(), offset(cursor(9, 2), false));
    assert_eq!(store.load_offset("rs", 4).await.unwrap(), offset(cursor(11, 10), true));
}

async fn load_offsets_lists_shards_in_order(backend: Backend) {
    let store = backend.open().await;
    for shard in [9, 2, 15, 0] {
        store.save_cursor("rs", shard, cursor(100 + u64::from(shard), u64::from(shard))).await.unwrap();
    }
    store.save_paused("rs", 2, true).await.unwrap();
    store.save_paused("rs", 11, true).await.unwrap();
    store.save_cursor("other", 5, cursor(1, 1)).await.unwrap();

    let expected = |shard: u32, paused| {
        let cursor = if shard == 11 { Cursor::default() } else { cursor(100 + u64::from(shard), u64::from(shard)) };
        (shard, ReadSideOffset { cursor, paused })
    };
    assert_eq!(
        store.load_offsets("rs").await.unwrap(),
        vec![expected(0, false), expected(2, true), expected(9, false), expected(11, true), expected(15, false)]
    );
    assert_eq!(
        store.load_offsets("other").await.unwrap(),
        vec![(5, ReadSideOffset { cursor: cursor(1, 1), paused: false })]
    );
    assert_eq!(store.load_offsets("nobody").await.unwrap(), vec![]);
}

async fn events_after_reads_one_shard_in_order(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 2, &events("a", 1..=3)).await.unwrap();
    store.append("b", 5, &events("b", 1..=2)).await.unwrap();
    store.append("c", 2, &events("c", 1..=1)).await.unwrap();
    store.append("a", 2, &events("a", 4..=5)).await.unwrap();

    let rows = settled_rows(&*store, 2, 6).await;
    assert_eq!(keys(&rows), [("a", 1), ("a", 2), ("a", 3), ("c", 1), ("a", 4), ("a", 5)]);
    for row in &rows {
        assert_eq!(row.payload, event(&row.entity_id, row.revision).payload, "{row:?}");
    }
    assert_strictly_increasing(&rows);

    let rows = settled_rows(&*store, 5, 2).await;
    assert_eq!(keys(&rows), [("b", 1), ("b", 2)]);
    assert_eq!(rows[1].payload, Bytes::from_static(b"b@2"));
    assert_eq!(store.events_after(7, Cursor::default(), 100).await.unwrap(), vec![]);
}

async fn events_after_respects_after_and_limit(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 1, &events("a", 1..=2)).await.unwrap();
    store.append("b", 1, &events("b", 1..=1)).await.unwrap();
    store.append("a", 1, &events("a", 3..=5)).await.unwrap();
    let all = settled_rows(&*store, 1, 6).await;

    let after = |i: usize| all[i].cursor;
    assert_eq!(store.events_after(1, Cursor::default(), 2).await.unwrap(), all[..2]);
    assert_eq!(store.events_after(1, after(1), 3).await.unwrap(), all[2..5]);
    assert_eq!(store.events_after(1, after(1), 100).await.unwrap(), all[2..]);
    assert_eq!(store.events_after(1, after(4), 100).await.unwrap(), all[5..]);
    assert_eq!(store.events_after(1, after(5), 100).await.unwrap(), vec![]);
    assert_eq!(store.events_after(1, Cursor::default(), 0).await.unwrap(), vec![]);
    // A cursor beyond everything stored returns nothing.
    let beyond = Cursor { tx: u64::from(u32::MAX) << 16, ordering: u64::from(u32::MAX) << 16 };
    assert_eq!(store.events_after(1, beyond, 100).await.unwrap(), vec![]);
}

async fn cursor_of_a_returned_row_resumes_right_after_it(backend: Backend) {
    let store = backend.open().await;
    for (entity, shard) in [("a", 4), ("b", 4), ("x", 8), ("c", 4), ("b", 4)] {
        let next = store.highest_revision(entity).await.unwrap() + 1;
        store.append(entity, shard, &events(entity, next..=next + 1)).await.unwrap();
    }
    let all = settled_rows(&*store, 4, 8).await;

    // A read side pages through the shard two rows at a time, storing the cursor of the last row it handled.
    let mut handled = Vec::new();
    loop {
        let offset = store.load_offset("rs", 4).await.unwrap();
        let page = store.events_after(4, offset.cursor, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        store.save_cursor("rs", 4, last.cursor).await.unwrap();
        handled.extend(page);
    }
    assert_eq!(handled, all, "every row exactly once, in order");
    assert_eq!(store.load_offset("rs", 4).await.unwrap().cursor, all[7].cursor);

    // Resuming from any row's cursor yields exactly the rows after it.
    for (i, row) in all.iter().enumerate() {
        assert_eq!(store.events_after(4, row.cursor, 100).await.unwrap(), all[i + 1..], "after row {i}");
    }

    // New rows come after the stored cursor.
    store.append("a", 4, &events("a", 3..=3)).await.unwrap();
    let all = settled_rows(&*store, 4, 9).await;
    let offset = store.load_offset("rs", 4).await.unwrap();
    assert_eq!(keys(&store.events_after(4, offset.cursor, 100).await.unwrap()), [("a", 3)]);
    assert_eq!(all[8].entity_id, "a");
}

async fn multi_event_appends_come_back_in_revision_order(backend: Backend) {
    let store = backend.open().await;
    store.append("a", 9, &events("a", 1..=5)).await.unwrap();
    store.append("b", 9, &events("b", 1..=3)).await.unwrap();
    store.append("a", 9, &events("a", 6..=7)).await.unwrap();
    let rows = settled_rows(&*store, 9, 10).await;
    let expected = [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("b", 1), ("b", 2), ("b", 3), ("a", 6), ("a", 7)];
    assert_eq!(keys(&rows), expected);
    assert_strictly_increasing(&rows);
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

    /// A raw session on the test server, in `schema`, beside the store's pool.
    async fn raw_session(schema: &str) -> tokio_postgres::Client {
        let url = std::env::var(pg::DATABASE_URL_VAR).unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("SET search_path TO \"{schema}\"")).await.unwrap();
        client
    }

    /// One poll of a read side: the rows after its stored cursor, whose last cursor it then stores (as if it had
    /// handled them all).
    async fn poll_read_side(store: &dyn Store, read_side_id: &str, shard: u32) -> Vec<JournalRow> {
        let offset = store.load_offset(read_side_id, shard).await.unwrap();
        let rows = store.events_after(shard, offset.cursor, 100).await.unwrap();
        if let Some(last) = rows.last() {
            store.save_cursor(read_side_id, shard, last.cursor).await.unwrap();
        }
        rows
    }

    /// The gap: a transaction draws its `ordering` first but commits after later writers. Read sides must not move
    /// past it while it is open, and must get its row once it commits.
    ///
    /// A plain `ordering > offset` reader fails this test: while `late` is open, the store's three rows are
    /// committed and their orderings are above the reader's offset (the `plain` session below checks that they
    /// are visible to such a query), so it would return them (the first assertion in the loop fails) and store
    /// the ordering of `after@3`, which is above `late`'s; once `late` commits, `ordering > offset` never returns
    /// it (the reader's last assertion fails too).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_after_never_skips_a_transaction_that_commits_late() {
        const SHARD: u32 = 6;
        let config = pg::config();
        let store = Backend::Postgres(config.clone()).open().await;

        // A read side handles the shard's first row and stores its cursor.
        store.append("early", SHARD, &events("early", 1..=1)).await.unwrap();
        let early = settled_rows(&*store, SHARD, 1).await;
        assert_eq!(keys(&poll_read_side(&*store, "rs", SHARD).await), [("early", 1)]);

        // Another session inserts a row and keeps its transaction open: its ordering is drawn now.
        let mut late_session = raw_session(&config.schema).await;
        let late_tx = late_session.transaction().await.unwrap();
        let late_ordering: i64 = late_tx
            .query_one(
                "INSERT INTO journal (entity_id, revision, shard, written_at, payload) \
                 VALUES ('late', 1, $1, 0, $2) RETURNING ordering",
                &[&i32::try_from(SHARD).unwrap(), &b"late@1".as_slice()],
            )
            .await
            .unwrap()
            .get(0);

        // The store appends after it and commits first.
        store.append("after", SHARD, &events("after", 1..=3)).await.unwrap();

        // What a plain `ordering > offset` reader would see now: the three committed rows, past `late`.
        let plain = raw_session(&config.schema).await;
        let early_ordering = i64::try_from(early[0].cursor.ordering).unwrap();
        let visible: Vec<i64> = plain
            .query(
                "SELECT ordering FROM journal WHERE shard = $1 AND ordering > $2 ORDER BY ordering",
                &[&i32::try_from(SHARD).unwrap(), &early_ordering],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(visible.len(), 3, "the store's rows are committed and visible by ordering");
        assert!(visible.iter().all(|&ordering| ordering > late_ordering), "{visible:?} vs late {late_ordering}");

        // While `late` is open, read sides get nothing past `early`, however often they poll.
        for _ in 0..10 {
            assert_eq!(store.events_after(SHARD, Cursor::default(), 100).await.unwrap(), early);
            assert_eq!(poll_read_side(&*store, "rs", SHARD).await, vec![]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.load_offset("rs", SHARD).await.unwrap().cursor, early[0].cursor);

        late_tx.commit().await.unwrap();

        // From the start, every row, `late` before the rows written after it began.
        let all = settled_rows(&*store, SHARD, 5).await;
        assert_eq!(keys(&all), [("early", 1), ("late", 1), ("after", 1), ("after", 2), ("after", 3)]);
        assert_eq!(all[1].payload, Bytes::from_static(b"late@1"));
        assert_eq!(all[1].cursor.ordering, u64::try_from(late_ordering).unwrap());
        assert!(all[2..].iter().all(|row| row.cursor.ordering > all[1].cursor.ordering), "{all:?}");

        // The read side that stored its cursor earlier resumes with `late`, then the rest, each once.
        let mut handled = Vec::new();
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while handled.len() < 4 && Instant::now() < deadline {
            handled.extend(poll_read_side(&*store, "rs", SHARD).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(handled, all[1..]);
        assert_eq!(poll_read_side(&*store, "rs", SHARD).await, vec![]);
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
