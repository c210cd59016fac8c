//! The cluster's authority layer against a real PostgreSQL (a fresh schema per test): membership, leases, the
//! fencing predicate and the lease keeper. Short TTLs (300 ms) and polling, never a sleep that hopes.

mod common;

use regent::cluster::keeper::{Health, KeeperOptions, LeaseKeeper};
use regent::cluster::lease::LEADER;
use regent::cluster::membership::{MembershipStore, writer_valid_predicate};
use regent::cluster::{Error, MemberId, MemberStatus};
use regent::config::PostgresConfig;
use regent::persistence::postgres::PostgresStore;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TTL: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);
/// The longest any polled condition may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A fresh schema, migrated by opening the store on it, and a membership store on it.
async fn setup() -> (PostgresConfig, MembershipStore) {
    let config = common::pg::config();
    PostgresStore::open(&config, 4).await.expect("open the store (migrations)");
    let store = MembershipStore::connect(&config).expect("membership store");
    (config, store)
}

fn member(node: &str, incarnation: &str) -> MemberId {
    MemberId::new(node, incarnation)
}

/// Joins `ids` in order with a long lease, makes the first the leader and promotes them all.
async fn up(store: &MembershipStore, ids: &[&MemberId]) {
    for (i, id) in ids.iter().enumerate() {
        store.join(id, &format!("127.0.0.1:{}", 7000 + i), LONG).await.unwrap();
    }
    assert_eq!(store.leases().acquire(LEADER, ids[0], LONG).await.unwrap(), Some(1));
    assert_eq!(store.promote_joining(ids[0], ids.len()).await.unwrap().len(), ids.len());
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(store: &MembershipStore, id: &MemberId) -> MemberStatus {
    store.member(id).await.unwrap().expect("member row").status
}

#[tokio::test]
async fn join_renew_and_expire() {
    let (_, store) = setup().await;
    let a = member("a", "1");
    let version = store.version().await.unwrap();
    let joined = store.join(&a, "127.0.0.1:7000", TTL).await.unwrap();
    assert_eq!((joined.status, joined.up_number, joined.lease_valid), (MemberStatus::Joining, None, true));
    assert_eq!(store.version().await.unwrap(), version + 1, "joining is a membership change");

    // Joining again only renews: same row, no membership change.
    let again = store.join(&a, "127.0.0.1:7000", TTL).await.unwrap();
    assert_eq!(again.joined_at, joined.joined_at);
    assert_eq!(store.version().await.unwrap(), version + 1);

    assert_eq!(store.renew(&a, TTL).await.unwrap(), MemberStatus::Joining);
    eventually("the lease expires", || async { !store.member(&a).await.unwrap().unwrap().lease_valid }).await;
    // A renewal after expiry extends the lease again: only down or removed is final.
    assert_eq!(store.renew(&a, TTL).await.unwrap(), MemberStatus::Joining);
    assert!(store.member(&a).await.unwrap().unwrap().lease_valid);

    let members = store.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].address, "127.0.0.1:7000");

    assert!(matches!(store.renew(&member("ghost", "1"), TTL).await, Err(Error::UnknownMember(_))));
}

#[tokio::test]
async fn the_leader_promotes_joining_members_in_join_order() {
    let (_, store) = setup().await;
    let (a, b, c) = (member("a", "1"), member("b", "1"), member("c", "1"));
    for id in [&a, &b, &c] {
        store.join(id, "127.0.0.1:7000", LONG).await.unwrap();
    }
    // Not without the leader lease.
    assert!(store.promote_joining(&a, 1).await.unwrap().is_empty());
    assert_eq!(store.leases().acquire(LEADER, &a, LONG).await.unwrap(), Some(1));
    // Not by anyone but the lease holder, nor below min-nr-of-members.
    assert!(store.promote_joining(&b, 1).await.unwrap().is_empty());
    let version = store.version().await.unwrap();
    assert!(store.promote_joining(&a, 4).await.unwrap().is_empty());
    assert_eq!(store.version().await.unwrap(), version, "a refused promotion changes nothing");

    let promoted = store.promote_joining(&a, 3).await.unwrap();
    let ids: Vec<_> = promoted.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, [a.clone(), b.clone(), c.clone()]);
    assert!(promoted.iter().all(|m| m.status == MemberStatus::Up));
    let numbers: Vec<i64> = promoted.iter().map(|m| m.up_number.unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(store.version().await.unwrap(), version + 1);

    // While a member is unreachable, nobody is promoted (Akka's convergence).
    let d = member("d", "1");
    store.join(&d, "127.0.0.1:7003", LONG).await.unwrap();
    assert!(store.report(&b, &c, false).await.unwrap());
    assert!(!store.report(&b, &c, false).await.unwrap(), "the same observation again is no change");
    assert_eq!(store.unreachable_subjects().await.unwrap(), std::slice::from_ref(&c));
    assert!(store.promote_joining(&a, 1).await.unwrap().is_empty());
    assert!(store.report(&b, &c, true).await.unwrap());
    assert!(store.unreachable_subjects().await.unwrap().is_empty());
    let promoted = store.promote_joining(&a, 1).await.unwrap();
    assert_eq!(promoted.len(), 1);
    assert!(promoted[0].up_number.unwrap() > numbers[2]);

    // A joining member whose lease expired is not promoted.
    let e = member("e", "1");
    store.join(&e, "127.0.0.1:7004", TTL).await.unwrap();
    eventually("e's lease expires", || async { !store.member(&e).await.unwrap().unwrap().lease_valid }).await;
    assert!(store.promote_joining(&a, 1).await.unwrap().is_empty());
    assert_eq!(status(&store, &e).await, MemberStatus::Joining);
}

#[tokio::test]
async fn an_unreachable_member_stays_unreachable_until_every_observer_sees_it_again() {
    let (_, store) = setup().await;
    let (a, b, c) = (member("a", "1"), member("b", "1"), member("c", "1"));
    up(&store, &[&a, &b, &c]).await;
    store.report(&a, &c, false).await.unwrap();
    store.report(&b, &c, false).await.unwrap();
    store.report(&a, &c, true).await.unwrap();
    assert_eq!(store.unreachable_subjects().await.unwrap(), std::slice::from_ref(&c));
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.unreachable(), std::slice::from_ref(&c));
    assert_eq!(snapshot.version, store.version().await.unwrap());
    store.report(&b, &c, true).await.unwrap();
    assert!(store.unreachable_subjects().await.unwrap().is_empty());
    // Observations of or by a downed member do not count.
    store.report(&a, &c, false).await.unwrap();
    let version = store.version().await.unwrap();
    assert!(store.down(std::slice::from_ref(&c), version, &a).await.unwrap());
    assert!(store.unreachable_subjects().await.unwrap().is_empty());
}

#[tokio::test]
async fn down_is_a_compare_and_set_on_the_version_by_the_leader() {
    let (_, store) = setup().await;
    let (a, b, c) = (member("a", "1"), member("b", "1"), member("c", "1"));
    up(&store, &[&a, &b, &c]).await;

    // Two concurrent decisions taken on the same view: exactly one applies.
    let version = store.version().await.unwrap();
    let (first, second) = tokio::join!(
        store.down(std::slice::from_ref(&b), version, &a),
        store.down(std::slice::from_ref(&c), version, &a)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first ^ second, "exactly one downer wins: {first} {second}");
    let (downed, kept) = if first { (&b, &c) } else { (&c, &b) };
    assert_eq!(status(&store, downed).await, MemberStatus::Down);
    assert_eq!(status(&store, kept).await, MemberStatus::Up);
    assert_eq!(store.version().await.unwrap(), version + 1);

    // A stale version loses.
    assert!(!store.down(std::slice::from_ref(kept), version, &a).await.unwrap());
    // A member without the leader lease loses, even with the current version.
    let version = store.version().await.unwrap();
    assert!(!store.down(std::slice::from_ref(&a), version, kept).await.unwrap());
    assert_eq!(store.version().await.unwrap(), version, "a refused decision changes nothing");
    // A downed member learns it at its next renewal, and can never rejoin.
    assert_eq!(store.renew(downed, TTL).await.unwrap(), MemberStatus::Down);
    assert!(matches!(store.join(downed, "x", TTL).await, Err(Error::Tombstoned(_, MemberStatus::Down))));
    // Down → removed.
    assert!(store.remove(downed).await.unwrap());
    assert_eq!(store.renew(downed, TTL).await.unwrap(), MemberStatus::Removed);

    // The leader may down itself (this side loses).
    let version = store.version().await.unwrap();
    assert!(store.down(&[a.clone(), kept.clone()], version, &a).await.unwrap());
    assert_eq!(status(&store, &a).await, MemberStatus::Down);
    // ... and a downed leader decides nothing more.
    let version = store.version().await.unwrap();
    assert!(!store.down(std::slice::from_ref(kept), version, &a).await.unwrap());
}

#[tokio::test]
async fn a_leader_whose_lease_expired_cannot_down() {
    let (_, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    up(&store, &[&a, &b]).await;
    assert!(store.leases().release(LEADER, &a).await.unwrap());
    let version = store.version().await.unwrap();
    assert!(!store.down(std::slice::from_ref(&b), version, &a).await.unwrap());
    // b takes the lease over.
    assert_eq!(store.leases().acquire(LEADER, &b, LONG).await.unwrap(), Some(2));
    assert!(store.down(std::slice::from_ref(&a), version, &b).await.unwrap());
}

#[tokio::test]
async fn graceful_leave() {
    let (_, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    up(&store, &[&a, &b]).await;
    assert!(store.leave(&b).await.unwrap());
    assert!(!store.leave(&b).await.unwrap(), "already leaving");
    assert!(store.is_writer_valid(&b).await.unwrap(), "a leaving member still writes while handing off");
    assert!(store.exiting(&b).await.unwrap());
    assert!(!store.is_writer_valid(&b).await.unwrap());
    assert!(store.remove(&b).await.unwrap());
    assert_eq!(status(&store, &b).await, MemberStatus::Removed);
    assert!(matches!(
        store.set_status(&b, MemberStatus::Removed, MemberStatus::Up).await,
        Err(Error::InvalidTransition { .. })
    ));
}

#[tokio::test]
async fn a_new_incarnation_removes_the_old_one() {
    let (_, store) = setup().await;
    let (old, other) = (member("a", "1"), member("b", "1"));
    up(&store, &[&old, &other]).await;
    let new = member("a", "2");
    store.join(&new, "127.0.0.1:7000", LONG).await.unwrap();
    assert!(store.is_writer_valid(&old).await.unwrap());
    assert_eq!(store.down_old_incarnations("a", "2").await.unwrap(), std::slice::from_ref(&old));
    assert!(store.down_old_incarnations("a", "2").await.unwrap().is_empty(), "idempotent");
    assert_eq!(status(&store, &old).await, MemberStatus::Removed);
    assert_eq!(status(&store, &new).await, MemberStatus::Joining);
    assert_eq!(status(&store, &other).await, MemberStatus::Up);
    assert!(!store.is_writer_valid(&old).await.unwrap());
    assert_eq!(store.renew(&old, TTL).await.unwrap(), MemberStatus::Removed);
}

#[tokio::test]
async fn leases_acquire_renew_expire_steal_and_release() {
    let (_, store) = setup().await;
    let leases = store.leases();
    let (a, b) = (member("a", "1"), member("b", "1"));
    const NAME: &str = "singleton:coordinator";

    assert_eq!(leases.holder(NAME).await.unwrap(), None);
    assert_eq!(leases.acquire(NAME, &a, TTL).await.unwrap(), Some(1));
    // Renewal by the holder keeps the epoch.
    assert_eq!(leases.acquire(NAME, &a, TTL).await.unwrap(), Some(1));
    assert_eq!(leases.acquire(NAME, &b, TTL).await.unwrap(), None, "held by a");
    let holder = leases.holder(NAME).await.unwrap().unwrap();
    assert_eq!((holder.holder, holder.epoch), (a.clone(), 1));

    // Expired: the holder may take it back with the same epoch (nobody held it in between) ...
    eventually("the lease expires", || async { leases.holder(NAME).await.unwrap().is_none() }).await;
    assert_eq!(leases.acquire(NAME, &a, TTL).await.unwrap(), Some(1));
    // ... and anyone may take it over once it expires again, with the next epoch.
    eventually("the lease expires", || async { leases.holder(NAME).await.unwrap().is_none() }).await;
    assert_eq!(leases.acquire(NAME, &b, LONG).await.unwrap(), Some(2));
    assert_eq!(leases.acquire(NAME, &a, TTL).await.unwrap(), None);

    // Release: only by the holder, and the lease is free at once.
    assert!(!leases.release(NAME, &a).await.unwrap());
    assert!(leases.release(NAME, &b).await.unwrap());
    assert!(!leases.release(NAME, &b).await.unwrap(), "already released");
    assert_eq!(leases.holder(NAME).await.unwrap(), None);
    assert_eq!(leases.acquire(NAME, &a, LONG).await.unwrap(), Some(3));

    // Leases are independent.
    assert_eq!(leases.acquire(LEADER, &b, LONG).await.unwrap(), Some(1));
}

#[tokio::test]
async fn concurrent_acquirers_get_one_lease() {
    let (_, store) = setup().await;
    let leases = store.leases();
    let contenders: Vec<MemberId> = (0..8).map(|i| member(&format!("n{i}"), "1")).collect();
    let results = futures::future::join_all(contenders.iter().map(|c| leases.acquire(LEADER, c, LONG))).await;
    let winners = results.into_iter().map(|r| r.unwrap()).filter(Option::is_some).count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn the_fencing_predicate_follows_status_and_lease() {
    let (config, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    assert!(!store.is_writer_valid(&a).await.unwrap(), "unknown member");
    store.join(&a, "127.0.0.1:7000", LONG).await.unwrap();
    assert!(!store.is_writer_valid(&a).await.unwrap(), "joining");
    store.leases().acquire(LEADER, &a, LONG).await.unwrap();
    store.promote_joining(&a, 1).await.unwrap();
    assert!(store.is_writer_valid(&a).await.unwrap(), "up");

    // Up but with an expired lease.
    store.join(&b, "127.0.0.1:7001", LONG).await.unwrap();
    store.promote_joining(&a, 1).await.unwrap();
    assert!(store.is_writer_valid(&b).await.unwrap());
    store.renew(&b, TTL).await.unwrap();
    eventually("b's lease expires", || async { !store.is_writer_valid(&b).await.unwrap() }).await;
    assert_eq!(status(&store, &b).await, MemberStatus::Up);

    // Down.
    let version = store.version().await.unwrap();
    store.down(std::slice::from_ref(&a), version, &a).await.unwrap();
    assert!(!store.is_writer_valid(&a).await.unwrap(), "down");

    // As the journal batch uses it: the insert writes nothing once the writer is fenced.
    let c = member("c", "1");
    store.join(&c, "127.0.0.1:7002", LONG).await.unwrap();
    store.set_status(&c, MemberStatus::Joining, MemberStatus::Up).await.unwrap();
    let (client, connection) = config_connect(&config).await;
    client.batch_execute("CREATE TABLE fenced_writes (value INT)").await.unwrap();
    let insert = format!(
        "INSERT INTO fenced_writes SELECT v FROM unnest($1::INT[]) AS v WHERE {}",
        writer_valid_predicate(2, 3)
    );
    let values: Vec<i32> = vec![1, 2, 3];
    assert_eq!(client.execute(&insert, &[&values, &c.node, &c.incarnation]).await.unwrap(), 3);
    assert!(store.leave(&c).await.unwrap());
    assert_eq!(client.execute(&insert, &[&values, &c.node, &c.incarnation]).await.unwrap(), 3, "leaving");
    assert!(store.exiting(&c).await.unwrap());
    assert_eq!(client.execute(&insert, &[&values, &c.node, &c.incarnation]).await.unwrap(), 0, "exiting");
    drop(client);
    connection.abort();
}

/// A plain connection to the test schema.
async fn config_connect(config: &PostgresConfig) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .dbname(&config.database)
        .options(format!("-c search_path={}", config.schema));
    if !config.password.is_empty() {
        pg.password(&config.password);
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.expect("connect");
    (client, tokio::spawn(async move { drop(connection.await) }))
}

/// The backends of the keeper connected as `name`.
async fn keeper_pids(client: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    let rows = client.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", &[&name]).await.unwrap();
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

async fn fenced(health: &mut watch::Receiver<Health>) -> String {
    let health = tokio::time::timeout(PATIENCE, health.wait_for(Health::is_fenced)).await.expect("fenced in time");
    match &*health.expect("keeper alive") {
        Health::Fenced { reason } => reason.clone(),
        Health::Healthy => unreachable!(),
    }
}

/// Joins `id` and starts its keeper with a 300 ms TTL through `postgres` (the test server, or a proxy to it).
async fn keeper(store: &MembershipStore, postgres: &PostgresConfig, id: &MemberId) -> LeaseKeeper {
    store.join(id, "127.0.0.1:7000", TTL).await.unwrap();
    LeaseKeeper::start(postgres, id.clone(), KeeperOptions::new(TTL)).await.expect("keeper starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_keeps_the_lease_valid() {
    let (config, store) = setup().await;
    let a = member("a", "1");
    let keeper = keeper(&store, &config, &a).await;
    let health = keeper.health();
    // Several TTLs: the lease never lapses.
    for _ in 0..10 {
        tokio::time::sleep(TTL / 3).await;
        assert_eq!(*health.borrow(), Health::Healthy);
        assert!(store.member(&a).await.unwrap().unwrap().lease_valid);
    }
    keeper.stop().await;
    assert!(health.borrow().is_fenced(), "a stopped keeper no longer vouches for the node");
    eventually("the lease lapses once the keeper stops", || async {
        !store.member(&a).await.unwrap().unwrap().lease_valid
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_fences_a_downed_member() {
    let (config, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    up(&store, &[&a]).await;
    let keeper = keeper(&store, &config, &b).await;
    let mut health = keeper.health();
    store.promote_joining(&a, 1).await.unwrap();
    let version = store.version().await.unwrap();
    assert!(store.down(std::slice::from_ref(&b), version, &a).await.unwrap());
    let reason = fenced(&mut health).await;
    assert!(reason.contains("is down"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_fences_a_member_whose_row_is_gone() {
    let (config, store) = setup().await;
    let a = member("a", "1");
    let keeper = keeper(&store, &config, &a).await;
    let mut health = keeper.health();
    let (client, connection) = config_connect(&config).await;
    client.execute("DELETE FROM cluster_members WHERE node = 'a'", &[]).await.unwrap();
    let reason = fenced(&mut health).await;
    assert!(reason.contains("no membership row"), "{reason}");
    connection.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_does_not_start_for_a_member_that_did_not_join_or_was_downed() {
    let (config, store) = setup().await;
    let a = member("a", "1");
    let options = KeeperOptions::new(TTL);
    assert!(matches!(LeaseKeeper::start(&config, a.clone(), options).await, Err(Error::UnknownMember(_))));
    up(&store, &[&a]).await;
    let version = store.version().await.unwrap();
    store.down(std::slice::from_ref(&a), version, &a).await.unwrap();
    assert!(matches!(LeaseKeeper::start(&config, a, options).await, Err(Error::Tombstoned(_, MemberStatus::Down))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_reconnects_after_its_backend_is_terminated() {
    let (config, store) = setup().await;
    let a = member("a", "1");
    let keeper = keeper(&store, &config, &a).await;
    let health = keeper.health();
    let (client, connection) = config_connect(&config).await;
    let name = format!("regent-keeper:{}", config.schema);
    let before = keeper_pids(&client, &name).await;
    assert_eq!(before.len(), 1, "one dedicated connection");
    let terminated: bool = client.query_one("SELECT pg_terminate_backend($1)", &[&before[0]]).await.unwrap().get(0);
    assert!(terminated);
    eventually("the keeper reconnects", || async {
        let now = keeper_pids(&client, &name).await;
        now.len() == 1 && now[0] != before[0]
    })
    .await;
    // Still healthy over several TTLs.
    for _ in 0..6 {
        tokio::time::sleep(TTL / 3).await;
        assert_eq!(*health.borrow(), Health::Healthy);
    }
    assert!(store.member(&a).await.unwrap().unwrap().lease_valid);
    connection.abort();
    drop(keeper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_fences_itself_when_the_database_is_unreachable() {
    let (config, store) = setup().await;
    let a = member("a", "1");
    let proxy = Proxy::start(&config).await;
    let through_proxy = PostgresConfig { host: "127.0.0.1".into(), port: proxy.port, ..config.clone() };
    let keeper = keeper(&store, &through_proxy, &a).await;
    let mut health = keeper.health();
    tokio::time::sleep(TTL).await;
    assert_eq!(*health.borrow(), Health::Healthy);

    // Blackhole: the renewals hang, the reconnections too. The keeper must fence on its own clock, before the
    // lease can expire in the database (TTL − margin after the last renewal sent).
    let cut_at = tokio::time::Instant::now();
    proxy.blackhole();
    let reason = fenced(&mut health).await;
    let took = cut_at.elapsed();
    assert!(reason.contains("no lease renewal"), "{reason}");
    // At most TTL − margin (250 ms) after the last renewal, itself before the cut; the slack is for a busy machine.
    assert!(took < TTL + Duration::from_millis(100), "fenced {took:?} after the cut, within about one TTL");
    // Meanwhile the database still considered the lease valid, or only just expired: the node stopped first.
    eventually("the lease expires in the database", || async { !store.member(&a).await.unwrap().unwrap().lease_valid })
        .await;
}

/// A TCP proxy to the test server that can blackhole every connection: bytes stop flowing both ways and new
/// connections are accepted but never forwarded, as with a network partition (no reset, no error).
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(config: &PostgresConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = format!("{}:{}", config.host, config.port);
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let cut = cut_rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let is_cut = *cut.borrow();
                    if is_cut {
                        return hold(client).await; // forward nothing
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(pipe(client_read, server_write, cut.clone()), pipe(server_read, client_write, cut));
                });
            }
        });
        Self { port, cut, task }
    }

    fn blackhole(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => Some(read),
            _ = cut.changed() => None,
        };
        let is_cut = *cut.borrow();
        if is_cut {
            return hold((from, to)).await;
        }
        let n = match read {
            None => continue,
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Keeps `sockets` open forever, forwarding nothing.
async fn hold<T>(sockets: T) {
    std::future::pending::<()>().await;
    drop(sockets);
}

/// The journal of a cluster member stores events only while the member may write: once it is downed (or its
/// lease expired), its appends fail as fenced and store nothing, batch-mates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_writes_are_fenced_on_the_writers_membership() {
    use regent::persistence::{Journal, PersistedEvent};
    let (config, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    up(&store, &[&a, &b]).await;
    let journal = PostgresStore::open_as(&config, 4, Some(b.clone())).await.unwrap();
    let event = |revision: u64| PersistedEvent { revision, payload: bytes::Bytes::from(format!("e{revision}")) };
    journal.append("x", 0, &[event(1)]).await.expect("an up member writes");

    let version = store.version().await.unwrap();
    assert!(store.down(std::slice::from_ref(&b), version, &a).await.unwrap());
    let appends = (0..4).map(|i| {
        let journal = journal.clone();
        let event = event(2);
        async move { journal.append(&format!("y{i}"), 0, &[event]).await }
    });
    for outcome in futures::future::join_all(appends).await {
        assert!(
            matches!(outcome, Err(regent::persistence::Error::Fenced(_))),
            "a downed member is fenced: {outcome:?}"
        );
    }
    assert!(matches!(journal.append("x", 0, &[event(2)]).await, Err(regent::persistence::Error::Fenced(_))));
    assert_eq!(journal.read_events("x", 0).await.unwrap(), vec![event(1)], "nothing of a fenced write is stored");
    for i in 0..4 {
        assert!(journal.read_events(&format!("y{i}"), 0).await.unwrap().is_empty());
    }

    // A member whose lease expired is fenced as well, without anyone downing it.
    let c = member("c", "1");
    store.join(&c, "127.0.0.1:7100", TTL).await.unwrap();
    store.promote_joining(&a, 1).await.unwrap();
    let journal = PostgresStore::open_as(&config, 4, Some(c.clone())).await.unwrap();
    journal.append("z", 0, &[event(1)]).await.expect("c writes while its lease is valid");
    tokio::time::sleep(TTL * 2).await;
    assert!(matches!(journal.append("z", 0, &[event(2)]).await, Err(regent::persistence::Error::Fenced(_))));
}

/// Read-side offsets are fenced like the journal: a processor of a downed member (a zombie resuming after a
/// freeze) cannot move a shard's offset back under the shard's new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_side_offsets_are_fenced_on_the_writers_membership() {
    use regent::persistence::{Cursor, ReadSideStore};
    let (config, store) = setup().await;
    let (a, b) = (member("a", "1"), member("b", "1"));
    up(&store, &[&a, &b]).await;
    let old_owner = PostgresStore::open_as(&config, 4, Some(b.clone())).await.unwrap();
    let new_owner = PostgresStore::open_as(&config, 4, Some(a.clone())).await.unwrap();
    let at = |n: u64| Cursor { tx: n, ordering: n };
    old_owner.save_cursor("rs", 2, at(5)).await.expect("an up member stores offsets");

    let version = store.version().await.unwrap();
    assert!(store.down(std::slice::from_ref(&b), version, &a).await.unwrap());
    new_owner.save_cursor("rs", 2, at(9)).await.expect("the new owner goes on");
    let late = old_owner.save_cursor("rs", 2, at(6)).await;
    assert!(matches!(late, Err(regent::persistence::Error::Fenced(_))), "a downed member is fenced: {late:?}");
    assert_eq!(new_owner.load_offset("rs", 2).await.unwrap().cursor, at(9), "the late write stored nothing");
}
