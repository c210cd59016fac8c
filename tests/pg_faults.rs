//! PostgreSQL-side faults (`shared/spec/reliability.md` §4.5, scenarios 8, 9, 10, 19 and 22), against real
//! `regent start` processes (a standalone node, and a 3-node cluster for 8 and 9), the list-append write
//! handler of `tests/support/history.rs` and, after every run, the §4.6 checker (journal + `GetState` + ownership
//! registry), whose result each test records with `support::report::ScenarioResult` (`target/reliability/<test>.json`).
//!
//! | # | test | database |
//! |---|---|---|
//! | 8 | `pg_restart_immediate_under_load`, `pg_restart_immediate_under_load_in_a_cluster` (3 nodes) | private server, `pg_ctl restart -m immediate` |
//! | 9 | `pg_down_for_a_while_under_load` (8 s), `pg_down_5_s_under_load_in_a_cluster`; `pg_down_30_s_under_load` (`#[ignore]`, the spec's 30 s) | private server, `pg_ctl stop` / `start` |
//! | 10 | `pg_terminate_backend_while_the_insert_waits`, `ambiguous_commit_reply_lost_after_commit`, `pg_link_blackholed_then_reset` | shared server; the last two through a TCP fault proxy |
//! | 19 | `client_cancels_mid_command` | shared server |
//! | 22 | `read_side_delivers_an_event_whose_transaction_commits_late` | shared server |
//!
//! The tests that restart or stop PostgreSQL start a private server (`tests/support/private_pg.rs`: `initdb` in a
//! temporary folder, a free port, fsync on), never the shared one. The store-level twin of 22 is
//! `events_after_never_skips_a_transaction_that_commits_late` in `tests/persistence_conformance.rs`.
//!
//! Run: `REGENT_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:55440/postgres cargo test --test pg_faults`
//! (needs the PostgreSQL binaries under `/usr/lib/postgresql/*/bin`, as `scripts/pg.sh` installs them).
//! The long outage: `... cargo test --test pg_faults -- --ignored --nocapture pg_down_30_s_under_load`.
//! `--nocapture` prints each run's figures (failure latencies, recovery time, RSS); `PG_FAULTS_DEBUG=1` also every
//! attempt that was not acked. Results and findings: `docs/reliability.md` ("PostgreSQL faults in detail").

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tonic::Code;

use regent::actors::shard_of;
use regent::config::PostgresConfig;

use support::cluster::{Cluster, ClusterOptions, entity_in_shard, http_get};
use support::history::{Attempt, History, JournalEvent, Outcome, list_any, op_any, read_journal, read_journal_from};
use support::load::{ClusterClient, Load, LoadOptions, RetryPolicy};
use support::private_pg::PrivatePg;
use support::read_handler::{ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::report::ScenarioResult;

const NODE: &str = "n1";
const NUM_SHARDS: u32 = 16;
const PATIENCE: Duration = Duration::from_secs(30);
/// The cluster tests' lease: a member fences itself after TTL − margin without a renewal, and the last renewal may
/// be TTL/3 old when the database goes, so with 20 s an outage of about 10 s is survived (at the default 10 s,
/// about 5 s: a 5 s outage plus the time PostgreSQL takes to start would be too close).
const CLUSTER_LEASE_TTL: Duration = Duration::from_secs(20);

/// One attempt, no retry.
fn single(timeout: Duration) -> RetryPolicy {
    RetryPolicy { budget: Duration::ZERO, attempt_timeout: timeout, ..RetryPolicy::default() }
}

/// Options of a standalone node (no cluster: no lease to lose while the database is away).
fn standalone(mut options: ClusterOptions) -> ClusterOptions {
    options.num_shards = NUM_SHARDS;
    options.env.push(("REGENT_CLUSTER_ENABLED".into(), "false".into()));
    options
}

/// Starts `n1` on `pg` and waits until it is ready.
async fn start_node(cluster: &mut Cluster, pg: PostgresConfig) {
    cluster.pg = pg;
    let mut spec = cluster.spec(1);
    spec.advertised = spec.bind; // no node-to-node link to proxy
    cluster.launch(spec).await;
    cluster.wait_ready(NODE).await;
}

/// The node's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Checks, prints, records and asserts: the end of every run.
async fn finish(
    cluster: &mut Cluster,
    scenario: &str,
    test: &str,
    history: &History,
    journal: Vec<JournalEvent>,
    notes: Vec<String>,
) {
    if std::env::var_os("PG_FAULTS_DEBUG").is_some() {
        for a in history.attempts.iter().filter(|a| a.acked().is_none()) {
            eprintln!(
                "{} {} {:.1}→{:.1} {:?}",
                a.entity,
                a.op,
                support::history::ms(a.sent),
                support::history::ms(a.done),
                a.outcome
            );
        }
    }
    // Commands never acked whose op (one of their attempts') is in the journal anyway.
    let landed: BTreeSet<&str> = journal.iter().filter_map(|e| e.op.as_deref().ok()).collect();
    let unacked = history.commands().into_values().filter(|attempts| attempts.iter().all(|a| a.acked().is_none()));
    let (mut indeterminate, mut persisted) = (0, 0);
    for attempts in unacked {
        indeterminate += 1;
        persisted += usize::from(attempts.iter().any(|a| landed.contains(a.op.as_str())));
    }
    let mut notes = notes;
    notes.push(format!("{persisted} of the {indeterminate} commands never acked are in the journal (indeterminate)"));
    let report = cluster.check_journal(history, journal).await;
    let mut result = ScenarioResult::new(scenario, test, history, &report);
    for note in notes {
        eprintln!("{test}: {note}");
        result = result.note(note);
    }
    result.write();
    report.assert_ok();
}

/// Attempts answered OK among `attempts`.
fn acked(attempts: &[Attempt]) -> usize {
    attempts.iter().filter(|a| a.acked().is_some()).count()
}

// ---------------------------------------------------------------------------------------------------------------
// 8: pg_ctl restart -m immediate under load

/// Scenario 8. A crash-restart of PostgreSQL (`pg_ctl restart -m immediate`: no checkpoint, WAL recovery) under
/// 6 retrying clients over 24 entities. Commands in flight fail (the checker: no OK whose event is absent, every
/// acked event survived the crash); the pool recovers without restarting the node (attempts sent after the
/// server is back are acked); entities whose write failed recover from the journal (`GetState` = the journal's
/// fold, revisions contiguous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restart_immediate_under_load() {
    let private = PrivatePg::start().await;
    let mut cluster = Cluster::new(standalone(ClusterOptions::default())).await;
    start_node(&mut cluster, private.config()).await;
    let pid = cluster.pid(NODE);
    let load = Load::start(cluster.client(), LoadOptions::new(6, 24));
    load.wait_acks(100, PATIENCE).await;

    let crash = Instant::now();
    private.restart_immediate().await;
    let back = Instant::now();
    let probe = load.client.clone();
    let entity = load.options.entities[0].clone();
    // The first command accepted after the server is back: the pool replaced its dead connections.
    let recovered = support::eventually("a command acked after the restart", PATIENCE, || {
        let (probe, entity) = (probe.clone(), entity.clone());
        async move { probe.command(&entity, single(Duration::from_secs(4))).await.acked().is_some().then(Instant::now) }
    })
    .await;
    load.wait_acks(100, PATIENCE).await;
    let history = load.stop().await;
    cluster.assert_running(NODE);
    assert_eq!(cluster.pid(NODE), pid, "the node was not restarted");

    let during: Vec<Attempt> = history.attempts.iter().filter(|a| a.done >= crash && a.sent <= back).cloned().collect();
    let failed_during = during.len() - acked(&during);
    assert!(
        failed_during > 0,
        "no attempt failed while PostgreSQL restarted ({} attempts overlapped it): did the fault happen?\n{}",
        during.len(),
        history.summary()
    );
    let journal = read_journal_from(&private.connect().await, &cluster.pg.schema).await;
    let notes = vec![
        format!("restart took {} ms (pg_ctl -m immediate, until it accepts connections)", millis(back - crash)),
        format!("first ack {} ms after the server was back", millis(recovered.saturating_duration_since(back))),
        format!("{} attempts overlapped the restart: {} failed, {} acked", during.len(), failed_during, acked(&during)),
    ];
    finish(&mut cluster, "8", "pg_restart_immediate_under_load", &history, journal, notes).await;
    cluster.finish().await;
}

/// Scenarios 8 and 9 on a 3-node cluster (lease TTL 20 s, the harness's tight failure detector: heartbeat 200 ms,
/// acceptable pause 1 s, SBR stable-after 2 s). A member that cannot renew its lease for TTL − margin stops and
/// exits by design; an outage well within that budget must leave every member up and a member of the cluster
/// (node-to-node failure detection does not depend on the database), its pool and lease keeper reconnected, the
/// fenced journal writes consistent. `outage`: `None` = `pg_ctl restart -m immediate`, `Some(d)` = crash, `d`
/// down, start.
async fn pg_fault_in_a_cluster(test: &str, scenario: &str, outage: Option<Duration>) {
    let private = PrivatePg::start().await;
    let mut options = ClusterOptions { num_shards: NUM_SHARDS, ..ClusterOptions::default() };
    options.env.push(("REGENT_CLUSTER_LEASE_TTL_MS".into(), CLUSTER_LEASE_TTL.as_millis().to_string()));
    let mut cluster = Cluster::new(options).await;
    cluster.pg = private.config();
    let first = cluster.spec(1);
    cluster.launch(first).await;
    cluster.wait_ready("n1").await;
    for k in 2..=3 {
        let spec = cluster.spec(k);
        cluster.launch(spec).await;
    }
    cluster.wait_ready("n2").await;
    cluster.wait_ready("n3").await;
    cluster.wait_formed(&["n1", "n2", "n3"]).await;
    let pids: Vec<u32> = ["n1", "n2", "n3"].iter().map(|n| cluster.pid(n)).collect();
    let load = Load::start(cluster.client(), LoadOptions::new(6, 24));
    load.wait_acks(100, PATIENCE).await;

    let crash = Instant::now();
    match outage {
        None => private.restart_immediate().await,
        Some(down) => {
            private.crash();
            tokio::time::sleep(down).await; // the fault's duration, not a wait for a condition
            private.start_again().await;
        }
    }
    let back = Instant::now();
    let probe = load.client.clone();
    let entity = load.options.entities[0].clone();
    let recovered = support::eventually("a command acked after the restart", PATIENCE, || {
        let (probe, entity) = (probe.clone(), entity.clone());
        async move { probe.command(&entity, single(Duration::from_secs(4))).await.acked().is_some().then(Instant::now) }
    })
    .await;
    load.wait_acks(150, PATIENCE).await;
    // Long enough after the fault for a member that missed its renewals to have fenced itself, or for the
    // split-brain resolver to have downed a member it found unreachable.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(back.elapsed())).await;
    let history = load.stop().await;
    for (name, pid) in ["n1", "n2", "n3"].iter().zip(&pids) {
        cluster.assert_running(name);
        assert_eq!(cluster.pid(name), *pid, "{name} was not restarted");
    }
    cluster.wait_formed(&["n1", "n2", "n3"]).await;
    // The nodes kept pinging each other: the database's absence is no reason to suspect a peer.
    for node in ["n1", "n2", "n3"] {
        let log = cluster.log_tail(node, 100_000);
        let suspicions: Vec<&str> = log.lines().filter(|line| line.contains("member unreachable")).collect();
        assert!(suspicions.is_empty(), "{node} suspected its peers during the database fault: {suspicions:#?}");
    }
    for node in ["n1", "n2", "n3"] {
        assert!(history.acked().any(|a| a.node == node && a.sent > back), "no ack through {node} after the restart");
    }
    let during: Vec<Attempt> = history.attempts.iter().filter(|a| a.done >= crash && a.sent <= back).cloned().collect();
    let journal = read_journal_from(&private.connect().await, &cluster.pg.schema).await;
    let notes = vec![
        format!(
            "3 nodes, lease TTL 20 s; {} took {} ms",
            outage.map_or("restart".to_string(), |d| format!("crash + {} ms down + start", millis(d))),
            millis(back - crash)
        ),
        format!(
            "first ack {} ms after the server was back; every member stayed up",
            millis(recovered.saturating_duration_since(back))
        ),
        format!(
            "{} attempts overlapped the restart: {} failed, {} acked",
            during.len(),
            during.len() - acked(&during),
            acked(&during)
        ),
    ];
    finish(&mut cluster, scenario, test, &history, journal, notes).await;
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restart_immediate_under_load_in_a_cluster() {
    pg_fault_in_a_cluster("pg_restart_immediate_under_load_in_a_cluster", "8", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_down_5_s_under_load_in_a_cluster() {
    pg_fault_in_a_cluster("pg_down_5_s_under_load_in_a_cluster", "9", Some(Duration::from_secs(5))).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 9: PostgreSQL down for a while

/// Scenario 9, with an outage of `outage`: PostgreSQL stopped (`pg_ctl stop -m fast`) under load, then started
/// again. While it is down, commands fail fast (probes, one attempt each, fail well within the ask timeout, never
/// OK), a burst of 200 concurrent commands fails fast too, and the node's memory stays bounded; once it is back the
/// node serves again without a restart and a read side delivers every journal event, per entity in order, from
/// its stored offsets.
async fn pg_down_under_load(test: &str, outage: Duration) {
    let private = PrivatePg::start().await;
    let mut reader = ReadHandler::start().await;
    // A slow read handler lags behind the load: when the database goes, read sides hold rows read and not handled.
    reader.set_delay(Duration::from_millis(20));
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("rs", reader.port())]);
    let mut options = standalone(ClusterOptions::default());
    options.env.push(("COS_READ_SIDE_ENABLED".into(), "true".into()));
    options.env.push(("COS_READ_SIDE_CONFIG".into(), yaml.path_str()));
    let mut cluster = Cluster::new(options).await;
    start_node(&mut cluster, private.config()).await;
    let pid = cluster.pid(NODE);
    let load = Load::start(cluster.client(), LoadOptions::new(6, 24));
    load.wait_acks(100, PATIENCE).await;
    let rss_before = rss_kib(pid);

    private.stop();
    let down = Instant::now();
    // Shares the load's history and op ids.
    let probe = load.client.clone();
    let mut probes: Vec<(Duration, Attempt)> = Vec::new();
    let mut rss_max = rss_before;
    let mut burst: Option<(Duration, usize, usize)> = None;
    let mut k = 0;
    while down.elapsed() < outage {
        // Alternately an entity in memory (the handler runs, the append fails) and a new one (recovery fails).
        let entity = if k % 2 == 0 { load.options.entities[k % 24].clone() } else { format!("fresh-{k}") };
        k += 1;
        let started = Instant::now();
        let attempt = probe.command(&entity, single(Duration::from_secs(20))).await;
        probes.push((started.elapsed(), attempt));
        rss_max = rss_max.max(rss_kib(pid));
        if burst.is_none() && down.elapsed() >= outage / 2 {
            let started = Instant::now();
            let outcomes = futures::future::join_all((0..200).map(|i| {
                let (probe, entity) = (probe.clone(), format!("burst-{}", i % 50));
                async move { probe.command(&entity, single(Duration::from_secs(20))).await }
            }))
            .await;
            let ok = outcomes.iter().filter(|a| a.acked().is_some()).count();
            burst = Some((started.elapsed(), outcomes.len(), ok));
            rss_max = rss_max.max(rss_kib(pid));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    private.start_again().await;
    let back = Instant::now();
    let entity = load.options.entities[1].clone();
    let recovered = support::eventually("a command acked after PostgreSQL is back", PATIENCE, || {
        let (probe, entity) = (probe.clone(), entity.clone());
        async move { probe.command(&entity, single(Duration::from_secs(4))).await.acked().is_some().then(Instant::now) }
    })
    .await;
    load.wait_acks(100, PATIENCE).await;
    let history = load.stop().await;
    cluster.assert_running(NODE);
    assert_eq!(cluster.pid(NODE), pid, "the node was not restarted");
    let rss_after = rss_kib(pid);

    // Failures while the server was down: none OK, all fast once the first ones went through.
    let acked_down: Vec<&Attempt> = probes.iter().map(|(_, a)| a).filter(|a| a.acked().is_some()).collect();
    assert!(acked_down.is_empty(), "commands acked while PostgreSQL was down: {acked_down:#?}");
    let (burst_took, burst_count, burst_ok) = burst.expect("the burst ran");
    assert_eq!(burst_ok, 0, "burst commands acked while PostgreSQL was down");
    let mut latencies: Vec<Duration> = probes.iter().skip(2).map(|(took, _)| *took).collect();
    latencies.sort();
    let slowest = latencies.last().copied().unwrap_or_default();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    // The ask timeout is 5 s and the pool's wait timeout 10 s: a failure within 3 s did not wait for either.
    assert!(slowest < Duration::from_secs(3), "slow failures while PostgreSQL was down: {latencies:?}");
    let codes: BTreeSet<String> = probes
        .iter()
        .filter_map(|(_, a)| match &a.outcome {
            Outcome::Failed { code, .. } => Some(format!("{code:?}")),
            Outcome::Acked { .. } => None,
        })
        .collect();
    assert_eq!(codes, BTreeSet::from(["Unavailable".to_string()]), "the probes' codes");
    // Bounded memory: the outage must not make the node hoard requests (generous: allocator noise is not growth).
    let growth = rss_max.saturating_sub(rss_before);
    assert!(growth < 100 * 1024, "RSS grew by {growth} KiB during the outage ({rss_before} → {rss_max} KiB)");

    // The read side catches up with the whole journal, per entity in order.
    let db = private.connect().await;
    let journal = read_journal_from(&db, &cluster.pg.schema).await;
    let expected: BTreeMap<String, u32> = journal.iter().fold(BTreeMap::new(), |mut last, e| {
        last.insert(e.entity.clone(), e.revision as u32);
        last
    });
    let log = reader.log.clone();
    support::eventually("the read side delivered every journal event", PATIENCE, || {
        let (log, expected) = (log.clone(), expected.clone());
        async move {
            let delivered = log.delivered("rs");
            expected
                .iter()
                .all(|(entity, last)| {
                    let seen: BTreeSet<u32> =
                        delivered.iter().filter(|c| &c.entity_id == entity).map(|c| c.revision).collect();
                    seen == (1..=*last).collect()
                })
                .then_some(())
        }
    })
    .await;
    let delivered = reader.log.delivered("rs");
    for entity in expected.keys() {
        let revisions = reader.log.revisions("rs", entity);
        let mut first_seen = Vec::new();
        for r in &revisions {
            if !first_seen.contains(r) {
                first_seen.push(*r);
            }
        }
        assert!(first_seen.windows(2).all(|w| w[1] == w[0] + 1), "{entity}: read side order {revisions:?}");
    }
    let duplicates = delivered.len().saturating_sub(journal.len());
    let mut counts: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for call in &delivered {
        *counts.entry((call.entity_id.clone(), call.revision)).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    // I4: duplicates only after restarts, and the node did not restart: an event handled OK whose offset could
    // not be stored is stored once the database is back, not handled again.
    assert!(repeated.is_empty(), "events delivered more than once without a restart: {repeated:?}");
    reader.stop().await;

    let notes = vec![
        format!(
            "outage {} ms, {} probes: all UNAVAILABLE, median {} ms, slowest {} ms",
            millis(outage),
            probes.len(),
            millis(median),
            millis(slowest)
        ),
        format!("burst of {burst_count} concurrent commands mid-outage: all failed, in {} ms", millis(burst_took)),
        format!(
            "RSS {} MiB before, {} MiB max during, {} MiB after",
            rss_before / 1024,
            rss_max / 1024,
            rss_after / 1024
        ),
        format!("first ack {} ms after the server was back", millis(recovered.saturating_duration_since(back))),
        format!(
            "read side: {} events delivered for {} journal rows ({duplicates} redelivered)",
            delivered.len(),
            journal.len()
        ),
    ];
    finish(&mut cluster, "9", test, &history, journal, notes).await;
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_down_for_a_while_under_load() {
    pg_down_under_load("pg_down_for_a_while_under_load", Duration::from_secs(8)).await;
}

/// The spec's 30 s outage (`--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 s outage; run with --ignored"]
async fn pg_down_30_s_under_load() {
    pg_down_under_load("pg_down_30_s_under_load", Duration::from_secs(30)).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 10: the writer's connection dies between INSERT and the COMMIT acknowledgement

/// Writes `n` acked commands to `entity`, one after the other.
async fn warm_up(client: &ClusterClient, entity: &str, n: usize) {
    for _ in 0..n {
        let attempt = client.command(entity, RetryPolicy::default()).await;
        assert!(attempt.acked().is_some(), "warm-up command on {entity}: {:?}", attempt.outcome);
    }
}

/// The backend pid of the node's session that runs an `INSERT INTO journal` waiting on a lock, if any.
async fn waiting_insert(db: &tokio_postgres::Client, schema: &str) -> Option<i32> {
    let rows = db
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO journal%'",
            &[&format!("regent:{schema}")],
        )
        .await
        .expect("read pg_stat_activity");
    rows.first().map(|row| row.get(0))
}

/// Scenario 10, the transaction that does not commit: the node's journal INSERT is issued and waits on a table
/// lock held by a test session; the test terminates that backend (`pg_terminate_backend`) before anything
/// commits. The caller gets an error (UNAVAILABLE), the event is not in the journal, and the entity, which cannot
/// know that, reloads from the journal and serves the next command at the right revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_terminate_backend_while_the_insert_waits() {
    let mut cluster = Cluster::new(standalone(ClusterOptions::default())).await;
    let pg = support::pg::fresh_postgres_config();
    start_node(&mut cluster, pg.clone()).await;
    let client = cluster.client();
    let entity = "terminated".to_string();
    warm_up(&client, &entity, 3).await;

    let mut locker = support::pg::connect().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE \"{}\".journal IN EXCLUSIVE MODE", pg.schema)).await.unwrap();
    let pending = {
        let (client, entity) = (client.clone(), entity.clone());
        tokio::spawn(async move { client.command(&entity, single(Duration::from_secs(20))).await })
    };
    let admin = support::pg::connect().await;
    let pid = support::eventually("the node's INSERT waits on the lock", PATIENCE, || {
        let (admin, schema) = (&admin, pg.schema.clone());
        async move { waiting_insert(admin, &schema).await }
    })
    .await;
    let terminated: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(terminated, "pg_terminate_backend({pid})");
    let attempt = pending.await.unwrap();
    lock.rollback().await.unwrap();
    match &attempt.outcome {
        Outcome::Failed { code: Code::Unavailable, .. } => {}
        other => panic!("the caller of the terminated write got {other:?}, expected UNAVAILABLE"),
    }
    let journal = read_journal(&pg.schema).await;
    assert!(
        journal.iter().all(|e| e.op.as_deref() != Ok(attempt.op.as_str())),
        "the terminated transaction's event is in the journal"
    );

    // Not wedged: the next command is acked at revision 4, on the journal's state.
    let next = client.command(&entity, RetryPolicy::default()).await;
    assert_eq!(next.acked().map(|(revision, state)| (revision, state.len())), Some((4, 4)), "{:?}", next.outcome);
    let history = client.history();
    let journal = read_journal(&pg.schema).await;
    let notes = vec![format!("terminated backend {pid} while its INSERT waited; caller got {:?}", attempt.outcome)];
    finish(&mut cluster, "10", "pg_terminate_backend_while_the_insert_waits", &history, journal, notes).await;
    cluster.finish().await;
}

/// Scenario 10, the ambiguous commit: the node reaches PostgreSQL through a TCP fault proxy that holds the
/// server's replies; the node's INSERT commits (the test sees the row through its own connection) but the
/// acknowledgement never arrives: the proxy resets every connection. The caller gets an error, yet the event is in
/// the journal (the command is indeterminate: a client retry would apply it twice unless the handler is
/// idempotent, as this one is); the entity reloads and its state is the journal's fold, the "failed" op included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_commit_reply_lost_after_commit() {
    let mut cluster = Cluster::new(standalone(ClusterOptions::default())).await;
    let pg = start_node_behind_proxy(&mut cluster).await;
    let client = cluster.client();
    let entity = "ambiguous".to_string();
    warm_up(&client, &entity, 3).await;

    cluster.proxy.hold_replies("pg");
    let pending = {
        let (client, entity) = (client.clone(), entity.clone());
        tokio::spawn(async move { client.command(&entity, single(Duration::from_secs(20))).await })
    };
    // The row is committed: the test's own connection (not through the proxy) sees it.
    let schema = pg.schema.clone();
    support::eventually("the held command's event committed", PATIENCE, || {
        let schema = schema.clone();
        async move { (read_journal(&schema).await.len() == 4).then_some(()) }
    })
    .await;
    cluster.proxy.reset_connections("pg");
    cluster.proxy.heal();
    let attempt = pending.await.unwrap();
    assert!(attempt.acked().is_none(), "the command whose acknowledgement was lost was acked: {:?}", attempt.outcome);
    let journal = read_journal(&pg.schema).await;
    assert_eq!(journal[3].op.as_deref(), Ok(attempt.op.as_str()), "the failed command's event is revision 4");

    // The entity reloads: the next command lands at revision 5 on a state holding the "failed" op.
    let next = client.command(&entity, RetryPolicy::default()).await;
    let (revision, state) = next.acked().unwrap_or_else(|| panic!("next command: {:?}", next.outcome));
    assert_eq!(revision, 5);
    assert!(state.contains(&attempt.op), "the reloaded state {state:?} lacks {}", attempt.op);
    let history = client.history();
    let journal = read_journal(&pg.schema).await;
    let notes = vec![format!(
        "INSERT committed, reply held, connections reset: caller got {:?}; the event is at revision 4",
        attempt.outcome
    )];
    finish(&mut cluster, "10", "ambiguous_commit_reply_lost_after_commit", &history, journal, notes).await;
    cluster.finish().await;
}

/// A standalone node reaching the shared test server through the cluster's fault proxy (link `pg`).
async fn start_node_behind_proxy(cluster: &mut Cluster) -> PostgresConfig {
    let pg = support::pg::fresh_postgres_config();
    let upstream: SocketAddr = tokio::net::lookup_host((pg.host.as_str(), pg.port))
        .await
        .expect("resolve the test server")
        .next()
        .expect("an address for the test server");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let link = cluster.proxy.add_link("pg", localhost, SocketAddr::new(localhost, 0), upstream).await.unwrap();
    let via_proxy = PostgresConfig { host: link.ip().to_string(), port: link.port(), ..pg.clone() };
    start_node(cluster, via_proxy).await;
    pg
}

/// Scenario 10, the link variant: the node↔PostgreSQL link is blackholed (the proxy holds every byte, both ways,
/// as a partition does) for 8 s under load, then every connection is reset (as TCP keepalive or a retransmission
/// timeout would end them) and the link heals. Nothing sent during the cut is acked; the node serves again
/// without a restart; the history checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_link_blackholed_then_reset() {
    let mut cluster = Cluster::new(standalone(ClusterOptions::default())).await;
    let pg = start_node_behind_proxy(&mut cluster).await;
    let pid = cluster.pid(NODE);
    let load = Load::start(cluster.client(), LoadOptions::new(6, 24));
    load.wait_acks(100, PATIENCE).await;
    let rss_before = rss_kib(pid);

    cluster.proxy.block_all_to("pg");
    let cut = Instant::now();
    let mut rss_max = rss_before;
    while cut.elapsed() < Duration::from_secs(8) {
        rss_max = rss_max.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.proxy.reset_connections("pg");
    cluster.proxy.heal();
    let healed = Instant::now();
    let probe = load.client.clone();
    let entity = load.options.entities[0].clone();
    let recovered = support::eventually("a command acked after the link healed", PATIENCE, || {
        let (probe, entity) = (probe.clone(), entity.clone());
        async move { probe.command(&entity, single(Duration::from_secs(4))).await.acked().is_some().then(Instant::now) }
    })
    .await;
    load.wait_acks(100, PATIENCE).await;
    let history = load.stop().await;
    cluster.assert_running(NODE);
    assert_eq!(cluster.pid(NODE), pid, "the node was not restarted");

    // Every attempt sent during the cut and answered before the heal failed.
    let during: Vec<Attempt> = history.attempts.iter().filter(|a| a.sent >= cut && a.done <= healed).cloned().collect();
    assert_eq!(acked(&during), 0, "acked while the link was cut:\n{}", history.summary());
    assert!(!during.is_empty(), "no attempt completed during the cut");
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for a in &during {
        if let Outcome::Failed { code, message, .. } = &a.outcome {
            let mut message = message.clone();
            message.truncate(40);
            *codes.entry(format!("{code:?} {message}")).or_default() += 1;
        }
    }
    let journal = read_journal(&pg.schema).await;
    let notes = vec![
        format!("link cut 8 s: {} attempts answered during the cut, none OK: {codes:?}", during.len()),
        format!("RSS {} MiB before, {} MiB max during", rss_before / 1024, rss_max / 1024),
        format!("first ack {} ms after the reset and heal", millis(recovered.saturating_duration_since(healed))),
    ];
    finish(&mut cluster, "10", "pg_link_blackholed_then_reset", &history, journal, notes).await;
    cluster.finish().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 19: clients cancel mid-command

/// Whether any leaf of a `/actors` tree is marked passivating (a message buffered in a shard for it).
fn passivating_entities(tree: &serde_json::Value, out: &mut Vec<String>) {
    match tree {
        serde_json::Value::Array(items) => items.iter().for_each(|item| passivating_entities(item, out)),
        serde_json::Value::Object(object) => {
            if object.get("passivating").and_then(serde_json::Value::as_bool) == Some(true) {
                out.push(object.get("entity_id").map(ToString::to_string).unwrap_or_default());
            }
            object.values().for_each(|value| passivating_entities(value, out));
        }
        _ => {}
    }
}

/// Scenario 19: 4 entities, each taking 200 commands from clients that give up after 1 ms (the handler takes
/// 20 ms a call, so most are cancelled mid-command: some before the node sees them, some with the entity busy,
/// some after the write). Half cancel on the client side (the call is dropped: HTTP/2 RST_STREAM), half carry a
/// `grpc-timeout` the server enforces (1 ms, or 25 ms to land inside the handler call). Cancelled commands may persist (indeterminate); afterwards every
/// entity serves the next command, nothing is left buffered for it (`/actors`), and the history checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancels_mid_command() {
    let options = ClusterOptions { handler_delay: Duration::from_millis(20), ..ClusterOptions::default() };
    let mut cluster = Cluster::new(standalone(options)).await;
    let pg = support::pg::fresh_postgres_config();
    start_node(&mut cluster, pg.clone()).await;
    let client = cluster.client();
    let entities: Vec<String> = (0..4).map(|i| format!("cancel-{i}")).collect();
    for entity in &entities {
        warm_up(&client, entity, 1).await;
    }

    // Client-side cancellation: a 1 ms deadline on the call future.
    let dropped = futures::future::join_all(
        (0..400).map(|i| client.command(&entities[i % entities.len()], single(Duration::from_millis(1)))),
    )
    .await;
    // Server-side deadline: `grpc-timeout` of 1 ms or 25 ms (mid-handler-call), no client-side timeout.
    let target = cluster.target(NODE);
    let mut deadline_attempts = Vec::new();
    // One stream of 100 per entity, one request at a time: a burst of 400 would mostly expire before reaching the
    // service; one at a time, the 25 ms deadline lands while the entity is in its 20 ms handler call or writing.
    let streams = futures::future::join_all(entities.iter().enumerate().map(|(k, entity)| {
        let mut grpc = target.client.clone();
        let entity = entity.clone();
        async move {
            let mut outcomes = Vec::new();
            for j in 0..100 {
                let i = k * 100 + j;
                let op = format!("deadline-{i}");
                let mut request = tonic::Request::new(regent::proto::chief_of_state::v1::ProcessCommandRequest {
                    entity_id: entity.clone(),
                    command: Some(op_any(&op)),
                });
                request.set_timeout(Duration::from_millis(if i % 2 == 0 { 1 } else { 25 }));
                let sent = Instant::now();
                let reply = grpc.process_command(request).await;
                outcomes.push((entity.clone(), op, sent, Instant::now(), reply));
            }
            outcomes
        }
    }))
    .await;
    let sent_all = streams.into_iter().flatten();
    for (i, (entity, op, sent, done, reply)) in sent_all.enumerate() {
        let outcome = match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                Outcome::Acked {
                    revision: reply.meta.map(|m| m.revision_number).unwrap_or_default(),
                    state: support::history::decode_list(reply.state.as_ref()).unwrap_or_default(),
                }
            }
            Err(status) => Outcome::Failed {
                code: status.code(),
                message: status.message().to_string(),
                retryable: support::load::retryable(&status),
            },
        };
        deadline_attempts.push(Attempt {
            command: 1_000_000 + i as u64,
            entity,
            op,
            node: NODE.into(),
            sent,
            done,
            outcome,
        });
    }

    // Not wedged: every entity takes a normal command (behind whatever it still had queued).
    for entity in &entities {
        let attempt = client.command(entity, RetryPolicy::default()).await;
        assert!(attempt.acked().is_some(), "{entity} is wedged after the cancellations: {:?}", attempt.outcome);
    }
    // Nothing left buffered in a shard for an entity.
    let admin = cluster.spec_of(NODE).admin;
    let (code, body) = http_get(admin, "/actors").await.expect("GET /actors");
    assert_eq!(code, 200, "{body}");
    let mut stuck = Vec::new();
    passivating_entities(&serde_json::from_str(&body).expect("/actors is JSON"), &mut stuck);
    assert!(stuck.is_empty(), "entities still passivating with buffered messages: {stuck:?}");

    let mut history = client.history();
    history.attempts.extend(deadline_attempts.iter().cloned());
    let journal = read_journal(&pg.schema).await;
    let landed: BTreeSet<&str> = journal.iter().filter_map(|e| e.op.as_deref().ok()).collect();
    let cancelled = |attempts: &[Attempt]| {
        let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.acked().is_none()).collect();
        let persisted = failed.iter().filter(|a| landed.contains(a.op.as_str())).count();
        let mut codes = BTreeMap::new();
        for a in &failed {
            if let Outcome::Failed { code, .. } = &a.outcome {
                *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            }
        }
        (attempts.len(), failed.len(), persisted, codes)
    };
    let (sent_a, failed_a, persisted_a, codes_a) = cancelled(&dropped);
    let (sent_b, failed_b, persisted_b, codes_b) = cancelled(&deadline_attempts);
    assert!(failed_a + failed_b > 0, "no command was cancelled");
    let notes = vec![
        format!(
            "client-side 1 ms cancel: {sent_a} sent, {failed_a} cancelled {codes_a:?}, {persisted_a} of them persisted"
        ),
        format!(
            "grpc-timeout 1 ms / 25 ms: {sent_b} sent, {failed_b} failed {codes_b:?}, {persisted_b} of them persisted"
        ),
    ];
    finish(&mut cluster, "19", "client_cancels_mid_command", &history, journal, notes).await;
    cluster.finish().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 22: the read-side gap

/// Scenario 22, end to end: a test session inserts event n (entity `late`, revision 1) in shard S and keeps its
/// transaction open for 3 s while the node commits n+1..n+100 (100 commands on entities of shard S). A read side
/// must not pass n: nothing of shard S after n is delivered while it is open, and once it commits, n is delivered,
/// then the 100, each once. The store-level twin is
/// `persistence_conformance::events_after_never_skips_a_transaction_that_commits_late`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_side_delivers_an_event_whose_transaction_commits_late() {
    const SHARD: u32 = 5;
    let mut reader = ReadHandler::start().await;
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("gap", reader.port())]);
    let mut options = standalone(ClusterOptions::default());
    options.env.push(("COS_READ_SIDE_ENABLED".into(), "true".into()));
    options.env.push(("COS_READ_SIDE_CONFIG".into(), yaml.path_str()));
    let mut cluster = Cluster::new(options).await;
    let pg = support::pg::fresh_postgres_config();
    start_node(&mut cluster, pg.clone()).await;
    let client = cluster.client();
    let early = entity_in_shard("early", SHARD, NUM_SHARDS);
    warm_up(&client, &early, 1).await;
    let log = reader.log.clone();
    support::eventually("the first event delivered", PATIENCE, || {
        let (log, early) = (log.clone(), early.clone());
        async move { log.has_delivered("gap", &early, 1).then_some(()) }
    })
    .await;

    // Event n: written by another session, in a transaction left open.
    let late = entity_in_shard("late", SHARD, NUM_SHARDS);
    let late_op = "op-late".to_string();
    let wrapper = regent::proto::chief_of_state::v1::EventWrapper {
        event: Some(op_any(&late_op)),
        resulting_state: Some(list_any(std::slice::from_ref(&late_op))),
        meta: Some(regent::proto::chief_of_state::v1::MetaData {
            entity_id: late.clone(),
            revision_number: 1,
            ..Default::default()
        }),
    };
    let mut session = support::pg::connect().await;
    let tx = session.transaction().await.unwrap();
    let late_ordering: i64 = tx
        .query_one(
            &format!(
                "INSERT INTO \"{}\".journal (entity_id, revision, shard, written_at, payload) \
                 VALUES ($1, 1, $2, 0, $3) RETURNING ordering",
                pg.schema
            ),
            &[&late, &(SHARD as i32), &prost::Message::encode_to_vec(&wrapper)],
        )
        .await
        .unwrap()
        .get(0);
    let opened = Instant::now();

    // n+1..n+100 commit meanwhile, on 10 entities of the same shard.
    let others: Vec<String> = (0..10).map(|i| entity_in_shard(&format!("after{i}"), SHARD, NUM_SHARDS)).collect();
    futures::future::join_all(others.iter().map(|entity| warm_up(&client, entity, 10))).await;
    let journal = read_journal(&pg.schema).await;
    assert_eq!(journal.len(), 101, "early@1 and the 100 later events are committed");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(opened.elapsed())).await;
    let delivered_while_open = reader.log.delivered("gap").len();
    assert_eq!(delivered_while_open, 1, "the read side went past the open transaction's event");
    tx.commit().await.unwrap();
    let held = opened.elapsed();

    support::eventually("every event delivered", PATIENCE, || {
        let log = log.clone();
        async move { (log.delivered("gap").len() >= 102).then_some(()) }
    })
    .await;
    let delivered = reader.log.delivered("gap");
    let order: Vec<(String, u32)> = delivered.iter().map(|c| (c.entity_id.clone(), c.revision)).collect();
    assert_eq!(order.len(), 102, "each event once: {order:?}");
    assert_eq!(order[1], (late.clone(), 1), "event n right after n-1: {order:?}");
    for entity in &others {
        assert_eq!(reader.log.revisions("gap", entity), (1..=10).collect::<Vec<u32>>(), "{entity}");
    }
    assert!(shard_of(&late, NUM_SHARDS) == SHARD && others.iter().all(|e| shard_of(e, NUM_SHARDS) == SHARD));
    reader.stop().await;

    // The raw session is a writer outside Regent: its op is in the history as an unacknowledged attempt.
    let mut history = client.history();
    history.attempts.push(Attempt {
        command: 9_999_999,
        entity: late.clone(),
        op: late_op,
        node: "test-session".into(),
        sent: opened,
        done: opened,
        outcome: Outcome::Failed { code: Code::Unknown, message: "written by a test session".into(), retryable: false },
    });
    let journal = read_journal(&pg.schema).await;
    let notes = vec![format!(
        "transaction with ordering {late_ordering} held {} ms while 100 later events committed; delivered while \
         open: {delivered_while_open} (n-1 only); after commit: n, then the 100, each once",
        millis(held)
    )];
    finish(&mut cluster, "22", "read_side_delivers_an_event_whose_transaction_commits_late", &history, journal, notes)
        .await;
    cluster.finish().await;
}

// ---------------------------------------------------------------------------------------------------------------
// the harness's own test (no PostgreSQL)

/// The proxy faults this file adds: `hold_replies` lets requests reach the server and holds its answers;
/// `reset_connections` closes the open connections (held bytes dropped) and leaves later ones alone.
#[tokio::test]
async fn fault_proxy_holds_replies_and_resets_connections() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let listener = tokio::net::TcpListener::bind((localhost, 0)).await.unwrap();
    let server = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buffer).await {
                    seen.lock().unwrap().extend_from_slice(&buffer[..n]);
                    if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut proxy = support::fault_proxy::FaultProxy::new();
    let link = proxy.add_link("srv", localhost, SocketAddr::new(localhost, 0), server).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(link).await.unwrap();
    let mut buffer = [0u8; 16];
    client.write_all(b"a").await.unwrap();
    assert_eq!(client.read(&mut buffer).await.unwrap(), 1);

    proxy.hold_replies("srv");
    client.write_all(b"b").await.unwrap();
    support::eventually("the request reaches the server", Duration::from_secs(5), || {
        let received = received.clone();
        async move { (received.lock().unwrap().as_slice() == b"ab").then_some(()) }
    })
    .await;
    let silent = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buffer)).await;
    assert!(silent.is_err(), "the reply came through: {silent:?}");

    proxy.reset_connections("srv");
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the connection was not closed: {closed:?}");

    proxy.heal();
    let mut later = tokio::net::TcpStream::connect(link).await.unwrap();
    later.write_all(b"c").await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), later.read(&mut buffer)).await;
    assert!(matches!(echoed, Ok(Ok(1))), "a later connection flows: {echoed:?}");
}
