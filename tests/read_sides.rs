//! Read sides against a real node, a real PostgreSQL and a real (scriptable) read handler on loopback: spec §1.5,
//! §1.6, §2.5, §3.5 and decisions 3 and 6. Delivery (every event, per-entity order, metadata, offsets), a SIGKILL
//! of a real `regent` process mid-delivery, each failure policy, the manager API (pause, resume, restart, skip, by
//! shard, errors), `autoStart = false`, the `regent readside` CLI, and the manager left out when read sides are off.
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`); each test gets its own
//! schema.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;

use regent::actors::shard_of;
use regent::config::PostgresConfig;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::read_side_manager_service_client::ReadSideManagerServiceClient;
use regent::proto::chief_of_state::v1::*;
use regent::proto::regent::v1::read_side_admin_service_client::ReadSideAdminServiceClient;
use regent::proto::regent::v1::{ListReadSidesRequest, ReadSideShardStatus};

use support::handler::{TestHandler, appended, command, list};
use support::read_handler::{Answer, ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::{TestNode, entity, eventually, pg, regent_cli};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// A node with read sides enabled (configured through a `COS_READ_SIDE_CONFIG` YAML file) and a read handler.
struct Rig {
    t: TestNode,
    reader: ReadHandler,
    _yaml: ReadSidesYaml,
}

impl Rig {
    /// `num_shards` shards; `read_sides` gets the read handler's port.
    async fn start(num_shards: u32, read_sides: impl FnOnce(u16) -> Vec<ReadSideSpec>) -> Rig {
        Self::start_with(num_shards, read_sides, |_| {}).await
    }

    /// [`start`](Self::start), with `tweak` adjusting the node's configuration last.
    async fn start_with(
        num_shards: u32,
        read_sides: impl FnOnce(u16) -> Vec<ReadSideSpec>,
        tweak: impl FnOnce(&mut regent::config::Config),
    ) -> Rig {
        let reader = ReadHandler::start().await;
        let yaml = ReadSidesYaml::write(&read_sides(reader.port()));
        let path = yaml.path_str();
        let t = TestNode::start(|c| {
            c.entities.num_shards = num_shards;
            c.read_side.enabled = true;
            c.read_side.config = path;
            tweak(c);
        })
        .await;
        Rig { t, reader, _yaml: yaml }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.t.node().local_addr())).unwrap().connect().await.unwrap()
    }

    async fn manager(&self) -> ReadSideManagerServiceClient<Channel> {
        ReadSideManagerServiceClient::new(self.channel().await)
    }

    async fn admin(&self) -> ReadSideAdminServiceClient<Channel> {
        ReadSideAdminServiceClient::new(self.channel().await)
    }

    fn url(&self) -> String {
        format!("http://{}", self.t.node().local_addr())
    }

    /// Appends `item` to `entity_id`; returns the new revision.
    async fn append(&self, entity_id: &str, item: &str) -> u32 {
        let reply = self.t.process(entity_id, command("Append", item)).await.expect("ProcessCommand");
        reply.meta.expect("meta").revision_number
    }

    /// `ListReadSides(read_side_id)`, by shard.
    async fn statuses(&self, read_side_id: &str) -> Vec<ReadSideShardStatus> {
        let mut shards = self
            .admin()
            .await
            .list_read_sides(ListReadSidesRequest { read_side_id: read_side_id.into() })
            .await
            .expect("ListReadSides")
            .into_inner()
            .shards;
        shards.sort_by_key(|s| s.shard);
        shards
    }

    async fn status(&self, read_side_id: &str, shard: u32) -> ReadSideShardStatus {
        self.statuses(read_side_id).await.into_iter().find(|s| s.shard == shard).expect("a status for the shard")
    }

    /// Waits until `read_side_id` in `shard` reports `status`; returns the report.
    async fn wait_status(
        &self,
        read_side_id: &str,
        shard: u32,
        status: &str,
        timeout: Duration,
    ) -> ReadSideShardStatus {
        eventually(&format!("{read_side_id} shard {shard} is {status}"), timeout, || async {
            Some(self.status(read_side_id, shard).await).filter(|s| s.status == status)
        })
        .await
    }

    /// Waits until the read handler got `revisions` of `entity_id` for `read_side_id` (exactly, in this order).
    async fn wait_revisions(&self, read_side_id: &str, entity_id: &str, revisions: &[u32]) {
        let what = format!("{read_side_id} delivered {entity_id} revisions {revisions:?}");
        eventually(&what, WAIT, || async {
            let got = self.reader.log.revisions(read_side_id, entity_id);
            assert!(
                revisions.starts_with(&got),
                "{read_side_id}: {entity_id} delivered as {got:?}, expected (a prefix of) {revisions:?}"
            );
            (got == revisions).then_some(())
        })
        .await;
    }

    async fn journal(&self) -> Vec<Row> {
        journal(&self.t.config.store.postgres.schema).await
    }

    /// The journal ordering of one event.
    async fn ordering(&self, entity_id: &str, revision: u32) -> u64 {
        self.journal()
            .await
            .into_iter()
            .find(|r| r.entity_id == entity_id && r.revision == i64::from(revision))
            .expect("the event is in the journal")
            .ordering as u64
    }

    async fn shutdown(mut self) {
        self.t.shutdown().await;
        self.reader.stop().await;
    }
}

/// One journal row: ordering, transaction key, entity, revision and shard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    ordering: i64,
    tx: i64,
    entity_id: String,
    revision: i64,
    shard: i64,
}

impl Row {
    /// The row's read-side cursor `(tx_id, ordering)`: the order read sides deliver a shard in.
    fn cursor(&self) -> (i64, i64) {
        (self.tx, self.ordering)
    }
}

/// Every journal row of `schema`, in cursor order.
async fn journal(schema: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT ordering, tx_id, entity_id, revision::bigint, shard::bigint FROM \"{schema}\".journal \
         ORDER BY tx_id, ordering"
    );
    pg::connect()
        .await
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| Row { ordering: r.get(0), tx: r.get(1), entity_id: r.get(2), revision: r.get(3), shard: r.get(4) })
        .collect()
}

/// The stored cursors `(tx_id, ordering)` of `read_side_id` by shard, read from the database.
async fn stored_cursors(schema: &str, read_side_id: &str) -> HashMap<i64, (i64, i64)> {
    let sql =
        format!("SELECT shard::bigint, tx_id, ordering FROM \"{schema}\".read_side_offsets WHERE read_side_id = $1");
    pg::connect()
        .await
        .query(&sql, &[&read_side_id])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// A fresh entity id in `shard` (of `num_shards`).
fn entity_in_shard(prefix: &str, shard: u32, num_shards: u32) -> String {
    loop {
        let id = entity(prefix);
        if shard_of(&id, num_shards) == shard {
            return id;
        }
    }
}

/// Two fresh entities in different shards.
fn two_shards(num_shards: u32) -> (String, String) {
    let x = entity("x");
    let sx = shard_of(&x, num_shards);
    (x, entity_in_shard("y", (sx + 1) % num_shards, num_shards))
}

/// Asserts `regent readside <args> --node url` exits 0; returns its stdout.
async fn readside_ok(url: &str, args: &[&str]) -> String {
    let mut all = vec!["readside"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--node", url]);
    let (code, stdout, stderr) = regent_cli(&all).await;
    assert_eq!(code, 0, "regent {all:?} failed: stdout {stdout:?}, stderr {stderr:?}");
    stdout
}

// ---------------------------------------------------------------------------------------------------------------
// delivery

/// 1,000 commands over 50 entities: every event reaches the handler once, in journal order per shard (so in
/// revision order per entity), with the read side id, event, resulting state, meta and the entity/tag metadata;
/// the offsets end at the last journal row of each shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_in_order_with_metadata_and_offsets() {
    const SHARDS: u32 = 16;
    const ENTITIES: usize = 50;
    const PER_ENTITY: u32 = 20;
    let rig = Rig::start(SHARDS, |port| vec![ReadSideSpec::new("projection", port)]).await;
    let entities: Vec<String> = (0..ENTITIES).map(|_| entity("acct")).collect();

    let mut writers = Vec::new();
    for id in entities.clone() {
        let client = rig.t.client.clone();
        writers.push(tokio::spawn(async move {
            for k in 1..=PER_ENTITY {
                let request =
                    ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", &k.to_string())) };
                let reply = client.clone().process_command(request).await.expect("ProcessCommand").into_inner();
                assert_eq!(reply.meta.unwrap().revision_number, k);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = ENTITIES * PER_ENTITY as usize;
    eventually("every event delivered", Duration::from_secs(90), || async {
        (rig.reader.log.delivered("projection").len() >= total).then_some(())
    })
    .await;

    let calls = rig.reader.log.calls("projection");
    assert_eq!(calls.len(), total, "no failure, so no redelivery: each event exactly once");
    assert!(calls.iter().all(|c| c.successful()));
    for id in &entities {
        let revisions = rig.reader.log.revisions("projection", id);
        assert_eq!(revisions, (1..=PER_ENTITY).collect::<Vec<_>>(), "{id}: revisions in order, no gap, no duplicate");
    }
    for call in &calls {
        let shard = shard_of(&call.entity_id, SHARDS);
        assert_eq!(call.read_side_id, "projection");
        assert_eq!(call.request.read_side_id, "projection");
        assert_eq!(call.header_entity_id.as_deref(), Some(call.entity_id.as_str()), "x-cos-entity-id");
        assert_eq!(call.header_event_tag.as_deref(), Some(shard.to_string().as_str()), "x-cos-event-tag = shard");
        let meta = call.request.meta.as_ref().expect("meta");
        assert!(meta.revision_date.is_some(), "meta.revision_date");
        let r = call.revision;
        assert_eq!(call.request.event.as_ref(), Some(&appended(&r.to_string())), "event of revision {r}");
        let items: Vec<String> = (1..=r).map(|k| k.to_string()).collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        assert_eq!(call.request.state.as_ref(), Some(&list(&items)), "resulting state of revision {r}");
    }

    // Per shard, the handler saw exactly the shard's journal, in cursor order.
    let journal = rig.journal().await;
    assert_eq!(journal.len(), total);
    for shard in 0..SHARDS {
        let expected: Vec<(String, i64)> =
            journal.iter().filter(|r| r.shard == i64::from(shard)).map(|r| (r.entity_id.clone(), r.revision)).collect();
        let seen: Vec<(String, i64)> = calls
            .iter()
            .filter(|c| c.header_event_tag.as_deref() == Some(shard.to_string().as_str()))
            .map(|c| (c.entity_id.clone(), i64::from(c.revision)))
            .collect();
        assert_eq!(seen, expected, "shard {shard}: delivered in journal order");
    }

    // Offsets (stored after each successful call) end at the last row of each shard.
    let expected: Vec<ReadSideOffset> = (0..SHARDS)
        .map(|shard| ReadSideOffset {
            cluster_shard_number: u64::from(shard),
            offset: journal.iter().rfind(|r| r.shard == i64::from(shard)).map_or(0, |r| r.ordering as u64),
        })
        .collect();
    let mut manager = rig.manager().await;
    eventually("offsets at the end of every shard", WAIT, || {
        let mut manager = manager.clone();
        let expected = expected.clone();
        async move {
            let request = GetLatestOffsetRequest { read_side_id: "projection".into() };
            let offsets = manager.get_latest_offset(request).await.expect("GetLatestOffset").into_inner().offsets;
            (offsets == expected).then_some(())
        }
    })
    .await;
    // The last offset is the highest ordering of the shard too, unless transactions committed out of order.
    let max_ordering = |shard: u32| journal.iter().filter(|r| r.shard == i64::from(shard)).map(|r| r.ordering).max();
    for offset in &expected {
        if let Some(max) = max_ordering(offset.cluster_shard_number as u32)
            && max as u64 != offset.offset
        {
            eprintln!(
                "note: shard {} ends at ordering {} but its highest ordering is {max}",
                offset.cluster_shard_number, offset.offset
            );
        }
    }
    let shard = shard_of(&entities[0], SHARDS);
    let by_shard = manager
        .get_latest_offset_by_shard(GetLatestOffsetByShardRequest {
            read_side_id: "projection".into(),
            cluster_shard_number: u64::from(shard),
        })
        .await
        .expect("GetLatestOffsetByShard")
        .into_inner()
        .offsets;
    assert_eq!(by_shard.as_ref(), Some(&expected[shard as usize]));

    let statuses = rig.statuses("projection").await;
    assert_eq!(statuses.len(), SHARDS as usize);
    assert!(statuses.iter().all(|s| s.status == "RUNNING" && s.error.is_empty() && s.failures == 0), "{statuses:?}");
    assert_eq!(statuses.iter().map(|s| s.delivered).sum::<u64>(), total as u64);
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// SIGKILL of a real `regent` process mid-delivery

/// A `regent start` process, killed (SIGKILL) when dropped.
struct RegentProcess {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl RegentProcess {
    fn spawn(envs: &[(String, String)]) -> RegentProcess {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_regent"));
        command
            .arg("start")
            .env("COS_PORT", port.to_string())
            .env("COS_ADDRESS", "127.0.0.1")
            .env("REGENT_ADMIN_PORT", "0")
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn regent start");
        RegentProcess { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Polls the gRPC health service until it answers SERVING.
    async fn wait_serving(&mut self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("regent exited ({status}) before serving:\n{}", self.output());
            }
            if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await {
                let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
                if reply.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "regent did not serve within 30 s:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for RegentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn regent_env(pg: &PostgresConfig, write_port: u16, yaml: &ReadSidesYaml, shards: u32) -> Vec<(String, String)> {
    let mut env = vec![
        ("REGENT_STORE_BACKEND", "postgres".to_string()),
        ("COS_DB_HOST", pg.host.clone()),
        ("COS_DB_PORT", pg.port.to_string()),
        ("COS_DB_USER", pg.user.clone()),
        ("COS_DB_NAME", pg.database.clone()),
        ("COS_DB_SCHEMA", pg.schema.clone()),
        ("COS_WRITE_SIDE_HOST", "127.0.0.1".to_string()),
        ("COS_WRITE_SIDE_PORT", write_port.to_string()),
        ("COS_NUM_SHARDS", shards.to_string()),
        ("COS_READ_SIDE_ENABLED", "true".to_string()),
        ("COS_READ_SIDE_CONFIG", yaml.path_str()),
    ];
    if !pg.password.is_empty() {
        env.push(("COS_DB_PASSWORD", pg.password.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A real `regent` process killed with SIGKILL while a slow read handler is mid-way through the journal, then
/// started again: it resumes exactly after the stored offset of each shard (no event missing; only events after the
/// stored offset are delivered twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_resumes_from_the_stored_offset() {
    const SHARDS: u32 = 4;
    const ENTITIES: usize = 12;
    const PER_ENTITY: u32 = 25;
    support::init_logging();
    let mut writer = TestHandler::start().await;
    let mut reader = ReadHandler::start().await;
    reader.set_delay(Duration::from_millis(15));
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("slow", reader.port())]);
    let pg_config = pg::fresh_postgres_config();
    let schema = pg_config.schema.clone();
    let env = regent_env(&pg_config, writer.addr().port(), &yaml, SHARDS);

    let mut first = RegentProcess::spawn(&env);
    first.wait_serving().await;
    let channel = Channel::from_shared(first.url()).unwrap().connect().await.unwrap();
    // Hold deliveries back while writing, so that the kill surely lands mid-delivery.
    let mut manager = ReadSideManagerServiceClient::new(channel.clone());
    let paused = manager.pause_read_side(PauseReadSideRequest { read_side_id: "slow".into() }).await.expect("pause");
    assert!(paused.into_inner().successful);
    let client = ChiefOfStateServiceClient::new(channel);
    let mut writers = Vec::new();
    for i in 0..ENTITIES {
        let client = client.clone();
        // Spread evenly: a shard without events would keep its initial offset, never "the end".
        let id = entity_in_shard("k", i as u32 % SHARDS, SHARDS);
        writers.push(tokio::spawn(async move {
            for k in 1..=PER_ENTITY {
                let request =
                    ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", &k.to_string())) };
                client.clone().process_command(request).await.expect("ProcessCommand");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = ENTITIES * PER_ENTITY as usize;
    assert!(reader.log.is_empty(), "paused: nothing delivered yet");
    let resumed =
        manager.resume_read_side(ResumeReadSideRequest { read_side_id: "slow".into() }).await.expect("resume");
    assert!(resumed.into_inner().successful);
    eventually("a third of the events delivered", WAIT, || async {
        (reader.log.delivered("slow").len() >= total / 3).then_some(())
    })
    .await;
    first.kill();
    let before = reader.log.all();
    // Answered before the kill; a call still in flight then (its answer never reached the node) does not count.
    let delivered_before = before.iter().filter(|c| c.answered_ok()).count();
    assert!(delivered_before < total, "the kill must land mid-delivery (all {total} were already delivered)");
    let stored = stored_cursors(&schema, "slow").await;

    let mut second = RegentProcess::spawn(&env);
    second.wait_serving().await;
    let journal = journal(&schema).await;
    assert_eq!(journal.len(), total);
    let key = |entity: &str, revision: u32| (entity.to_string(), i64::from(revision));
    let all_keys: BTreeSet<(String, i64)> = journal.iter().map(|r| (r.entity_id.clone(), r.revision)).collect();
    eventually("every event delivered after the restart", Duration::from_secs(30), || async {
        let got: BTreeSet<_> = reader.log.delivered("slow").iter().map(|c| key(&c.entity_id, c.revision)).collect();
        (got == all_keys).then_some(())
    })
    .await;
    // Let the last offsets be stored, then compare the whole log.
    let last: HashMap<i64, (i64, i64)> = (0..SHARDS)
        .filter_map(|s| journal.iter().rfind(|r| r.shard == i64::from(s)).map(|r| (i64::from(s), r.cursor())))
        .collect();
    eventually("offsets at the end after the restart", WAIT, || async {
        (stored_cursors(&schema, "slow").await == last).then_some(())
    })
    .await;
    let after = reader.log.all()[before.len()..].to_vec();
    let cursor_of: HashMap<(String, i64), &Row> =
        journal.iter().map(|r| ((r.entity_id.clone(), r.revision), r)).collect();
    for shard in 0..SHARDS {
        let shard = i64::from(shard);
        let cursor = stored.get(&shard).copied().unwrap_or((0, 0));
        let rows: Vec<&Row> = journal.iter().filter(|r| r.shard == shard).collect();
        // Everything up to the stored offset was delivered before the kill.
        for row in rows.iter().filter(|r| r.cursor() <= cursor) {
            assert!(
                before
                    .iter()
                    .any(|c| c.answered_ok() && key(&c.entity_id, c.revision) == (row.entity_id.clone(), row.revision)),
                "shard {shard}: {row:?} is at or before the stored offset {cursor:?} but was never delivered"
            );
        }
        // After the restart: exactly the rows after the stored offset, in order (nothing before it again).
        let expected: Vec<(String, i64)> =
            rows.iter().filter(|r| r.cursor() > cursor).map(|r| (r.entity_id.clone(), r.revision)).collect();
        let redelivered: Vec<(String, i64)> = after
            .iter()
            .filter(|c| i64::from(shard_of(&c.entity_id, SHARDS)) == shard)
            .map(|c| key(&c.entity_id, c.revision))
            .collect();
        assert_eq!(redelivered, expected, "shard {shard}: redelivery resumes right after the stored offset {cursor:?}");
    }
    // Duplicates only after the stored offset.
    let mut duplicates = 0;
    for c in after.iter() {
        let k = key(&c.entity_id, c.revision);
        if before.iter().any(|b| b.answered_ok() && key(&b.entity_id, b.revision) == k) {
            duplicates += 1;
            let row = cursor_of[&k];
            let cursor = stored.get(&row.shard).copied().unwrap_or((0, 0));
            assert!(row.cursor() > cursor, "{k:?} delivered twice although it is at or before the stored offset");
        }
    }
    eprintln!("delivered before the kill: {delivered_before}/{total}; delivered twice: {duplicates}");
    // Per-entity order across the whole log: each entity's deliveries are increasing within each incarnation.
    for part in [&before, &after] {
        let mut by_entity: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for c in part.iter() {
            by_entity.entry(&c.entity_id).or_default().push(c.revision);
        }
        for (id, revisions) in by_entity {
            assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "{id}: out of order or gap: {revisions:?}");
        }
    }
    drop(second);
    writer.stop().await;
    reader.stop().await;
    pg::drop_schema(&schema).await;
}

// ---------------------------------------------------------------------------------------------------------------
// failure policies

/// Entity `e` (revisions 1..=3, revision 2 fails) in one shard and `f` in another, on a read side `rs` with
/// `policy`.
async fn failing_rig(policy: &'static str, answer: Answer) -> (Rig, String, String) {
    let rig = Rig::start(4, |port| vec![ReadSideSpec::new("rs", port).policy(policy)]).await;
    let (e, f) = two_shards(4);
    rig.reader.fail_event("rs", &e, 2, answer);
    for item in ["a", "b", "c"] {
        rig.append(&e, item).await;
    }
    rig.append(&f, "x").await;
    (rig, e, f)
}

/// Asserts the gaps between the attempts are the replay backoff: 200 ms, 400 ms, 800 ms, 1.6 s, 3.2 s.
fn assert_backoff(attempts: &[support::read_handler::ReadCall]) {
    assert_eq!(attempts.len(), 6, "1 attempt + 5 replays");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let expected = Duration::from_millis(200 << i);
        assert!(
            *gap + Duration::from_millis(20) >= expected && *gap < expected + Duration::from_secs(1),
            "gap {i} is {gap:?}, expected about {expected:?} (all gaps: {gaps:?})"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "growing gaps: {gaps:?}");
}

/// STOP: the shard stops at the failing event (one attempt, listed as STOPPED with the error), later events of
/// that shard are not delivered; other shards go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_stops_the_shard_at_the_failing_event() {
    let (rig, e, f) = failing_rig("STOP", Answer::NotSuccessful).await;
    let se = shard_of(&e, 4);
    let stopped = rig.wait_status("rs", se, "STOPPED", WAIT).await;
    assert!(stopped.error.contains("successful=false"), "the error is shown: {stopped:?}");
    assert_eq!(stopped.offset, rig.ordering(&e, 1).await, "stopped after revision 1");
    rig.wait_revisions("rs", &f, &[1]).await;
    // Positive control: another shard keeps delivering while this one stays stopped.
    let g = entity_in_shard("g", se, 4);
    rig.append(&g, "later").await;
    rig.append(&e, "d").await;
    rig.append(&f, "y").await;
    rig.wait_revisions("rs", &f, &[1, 2]).await;
    eventually("the stopped shard keeps its place", WAIT, || async {
        let s = rig.status("rs", se).await;
        (s.status == "STOPPED" && s.offset == stopped.offset).then_some(())
    })
    .await;
    assert_eq!(rig.reader.log.revisions("rs", &e), vec![1]);
    assert_eq!(rig.reader.log.attempts("rs", &e, 2).len(), 1, "STOP does not retry");
    assert!(rig.reader.log.calls("rs").iter().all(|c| c.entity_id != g), "nothing later in the stopped shard");
    for s in rig.statuses("rs").await.iter().filter(|s| s.shard != se) {
        assert_eq!(s.status, "RUNNING", "{s:?}");
    }
    let offset = rig
        .manager()
        .await
        .get_latest_offset_by_shard(GetLatestOffsetByShardRequest {
            read_side_id: "rs".into(),
            cluster_shard_number: u64::from(se),
        })
        .await
        .unwrap()
        .into_inner()
        .offsets
        .unwrap();
    assert_eq!(offset.offset, rig.ordering(&e, 1).await);
    rig.shutdown().await;
}

/// SKIP: the failing event is tried once and skipped; the later ones are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_policy_skips_the_failing_event_once() {
    let (rig, e, f) = failing_rig("SKIP", Answer::Error(Code::Internal)).await;
    rig.wait_revisions("rs", &e, &[1, 3]).await;
    rig.wait_revisions("rs", &f, &[1]).await;
    rig.append(&e, "d").await;
    rig.wait_revisions("rs", &e, &[1, 3, 4]).await;
    assert_eq!(rig.reader.log.attempts("rs", &e, 2).len(), 1, "skipped after one attempt");
    let se = shard_of(&e, 4);
    let last = rig.ordering(&e, 4).await;
    eventually("offset past the skipped event", WAIT, || async {
        let s = rig.status("rs", se).await;
        (s.status == "RUNNING" && s.offset == last && s.failures == 1).then_some(())
    })
    .await;
    rig.shutdown().await;
}

/// REPLAY_SKIP: the failing event is tried 6 times with growing gaps, then skipped; other shards are not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_skip_policy_retries_five_times_then_skips() {
    let (rig, e, f) = failing_rig("REPLAY_SKIP", Answer::Error(Code::Unavailable)).await;
    let se = shard_of(&e, 4);
    let replaying = rig.wait_status("rs", se, "REPLAYING", WAIT).await;
    assert!(!replaying.error.is_empty(), "the error is shown while replaying: {replaying:?}");
    rig.wait_revisions("rs", &f, &[1]).await;
    rig.wait_revisions("rs", &e, &[1, 3]).await;
    let attempts = rig.reader.log.attempts("rs", &e, 2);
    assert_backoff(&attempts);
    assert!(attempts.iter().all(|c| !c.successful()));
    let f_delivered = rig.reader.log.delivered("rs").into_iter().find(|c| c.entity_id == f).unwrap();
    assert!(f_delivered.at < attempts[5].at, "the other shard was not held back by the replays");
    assert_eq!(rig.wait_status("rs", se, "RUNNING", WAIT).await.offset, rig.ordering(&e, 3).await);
    rig.shutdown().await;
}

/// REPLAY_STOP: the failing event is tried 6 times with growing gaps, then the shard stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stop_policy_retries_five_times_then_stops() {
    let (rig, e, f) = failing_rig("REPLAY_STOP", Answer::NotSuccessful).await;
    let se = shard_of(&e, 4);
    let stopped = rig.wait_status("rs", se, "STOPPED", Duration::from_secs(15)).await;
    assert!(stopped.error.contains("successful=false"), "{stopped:?}");
    assert_eq!(stopped.offset, rig.ordering(&e, 1).await);
    let attempts = rig.reader.log.attempts("rs", &e, 2);
    assert_backoff(&attempts);
    // Positive control: the other shard still delivers; the stopped one neither retries nor goes on.
    rig.append(&f, "y").await;
    rig.wait_revisions("rs", &f, &[1, 2]).await;
    assert_eq!(rig.reader.log.attempts("rs", &e, 2).len(), 6);
    assert_eq!(rig.reader.log.revisions("rs", &e), vec![1]);
    assert_eq!(rig.status("rs", se).await.status, "STOPPED");
    rig.shutdown().await;
}

/// COS_READ_SIDE_BREAKER_*: two failed calls open the read side's circuit; the next row fails at once without
/// reaching the handler (the failure policy, SKIP here, applies to it as to any failure), and after the reset
/// timeout a trial call goes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_side_breaker_fails_rows_fast_while_open_and_closes_after_a_trial() {
    let rig = Rig::start_with(
        1,
        |port| vec![ReadSideSpec::new("rs", port).policy("SKIP")],
        |c| {
            c.read_side.breaker.enabled = true;
            c.read_side.breaker.max_failures = 2;
            c.read_side.breaker.reset_timeout_ms = 1_000;
        },
    )
    .await;
    rig.reader.set_rule(|_| Answer::Error(Code::Unavailable));
    let e = entity("breaker");
    for item in ["a", "b", "c"] {
        rig.append(&e, item).await;
    }
    eventually("three rows failed and skipped", WAIT, || async {
        let s = rig.status("rs", 0).await;
        (s.failures == 3 && s.offset == 3).then_some(())
    })
    .await;
    let called: Vec<u32> = rig.reader.log.calls("rs").iter().map(|c| c.revision).collect();
    assert_eq!(called, [1, 2], "the open circuit kept row 3 from the handler");

    rig.reader.clear_rule();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    rig.append(&e, "d").await;
    rig.wait_revisions("rs", &e, &[4]).await;
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// manager API

/// Pause stops deliveries (read side `b` keeps receiving: the positive control), resume delivers what was held;
/// then the same by shard: only the paused shard holds back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_manager_api() {
    let rig = Rig::start(4, |port| vec![ReadSideSpec::new("a", port), ReadSideSpec::new("b", port)]).await;
    let mut manager = rig.manager().await;
    let (x, y) = two_shards(4);
    let sx = shard_of(&x, 4);

    let reply = manager.pause_read_side(PauseReadSideRequest { read_side_id: "a".into() }).await.unwrap();
    assert!(reply.into_inner().successful);
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "PAUSED"));
    assert!(rig.statuses("b").await.iter().all(|s| s.status == "RUNNING"));
    rig.append(&x, "1").await;
    rig.append(&y, "1").await;
    rig.wait_revisions("b", &x, &[1]).await;
    rig.wait_revisions("b", &y, &[1]).await;
    // A second positive control: b has handled a later event too.
    let z = entity("z");
    rig.append(&z, "1").await;
    rig.wait_revisions("b", &z, &[1]).await;
    assert!(rig.reader.log.calls("a").is_empty(), "no delivery while paused");
    let reply = manager.resume_read_side(ResumeReadSideRequest { read_side_id: "a".into() }).await.unwrap();
    assert!(reply.into_inner().successful);
    rig.wait_revisions("a", &x, &[1]).await;
    rig.wait_revisions("a", &y, &[1]).await;
    rig.wait_revisions("a", &z, &[1]).await;
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "RUNNING"));

    // By shard.
    let request = PauseReadSideByShardRequest { read_side_id: "a".into(), cluster_shard_number: u64::from(sx) };
    assert!(manager.pause_read_side_by_shard(request).await.unwrap().into_inner().successful);
    for s in rig.statuses("a").await {
        assert_eq!(s.status, if s.shard == sx { "PAUSED" } else { "RUNNING" }, "{s:?}");
    }
    rig.append(&x, "2").await;
    rig.append(&y, "2").await;
    rig.wait_revisions("a", &y, &[1, 2]).await;
    rig.wait_revisions("b", &x, &[1, 2]).await;
    assert_eq!(rig.reader.log.revisions("a", &x), vec![1], "the paused shard holds back");
    let request = ResumeReadSideByShardRequest { read_side_id: "a".into(), cluster_shard_number: u64::from(sx) };
    assert!(manager.resume_read_side_by_shard(request).await.unwrap().into_inner().successful);
    rig.wait_revisions("a", &x, &[1, 2]).await;
    rig.shutdown().await;
}

/// Restart by shard replays only that shard from the beginning; restart replays every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_redelivers_from_the_beginning() {
    let rig = Rig::start(4, |port| vec![ReadSideSpec::new("a", port)]).await;
    let mut manager = rig.manager().await;
    let (x, y) = two_shards(4);
    let sx = shard_of(&x, 4);
    for item in ["1", "2", "3"] {
        rig.append(&x, item).await;
        rig.append(&y, item).await;
    }
    rig.wait_revisions("a", &x, &[1, 2, 3]).await;
    rig.wait_revisions("a", &y, &[1, 2, 3]).await;

    let request = RestartReadSideByShardRequest { read_side_id: "a".into(), cluster_shard_number: u64::from(sx) };
    assert!(manager.restart_read_side_by_shard(request).await.unwrap().into_inner().successful);
    rig.wait_revisions("a", &x, &[1, 2, 3, 1, 2, 3]).await;
    rig.append(&y, "4").await; // positive control for y's shard
    rig.wait_revisions("a", &y, &[1, 2, 3, 4]).await;
    assert_eq!(rig.reader.log.revisions("a", &x), vec![1, 2, 3, 1, 2, 3], "only the restarted shard replays");

    let request = RestartReadSideRequest { read_side_id: "a".into() };
    assert!(manager.restart_read_side(request).await.unwrap().into_inner().successful);
    rig.wait_revisions("a", &x, &[1, 2, 3, 1, 2, 3, 1, 2, 3]).await;
    rig.wait_revisions("a", &y, &[1, 2, 3, 4, 1, 2, 3, 4]).await;
    let journal = rig.journal().await;
    let expected: Vec<u64> =
        (0..4).map(|s| journal.iter().rfind(|r| r.shard == s).map_or(0, |r| r.ordering as u64)).collect();
    eventually("offsets at the end again", WAIT, || {
        let mut manager = manager.clone();
        let expected = expected.clone();
        async move {
            let offsets = manager.get_latest_offset(GetLatestOffsetRequest { read_side_id: "a".into() }).await;
            let offsets: Vec<u64> = offsets.unwrap().into_inner().offsets.iter().map(|o| o.offset).collect();
            (offsets == expected).then_some(())
        }
    })
    .await;
    rig.shutdown().await;
}

/// Skip on a read side STOPPED at event X: delivery resumes with the event after X, and X is never delivered
/// successfully (even though the handler would now accept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_moves_a_stopped_read_side_past_the_stuck_event() {
    let (rig, e, f) = failing_rig("STOP", Answer::NotSuccessful).await;
    let se = shard_of(&e, 4);
    rig.wait_status("rs", se, "STOPPED", WAIT).await;
    rig.wait_revisions("rs", &f, &[1]).await;
    rig.reader.clear_rule();
    let request = SkipOffsetByShardRequest { read_side_id: "rs".into(), cluster_shard_number: u64::from(se) };
    assert!(rig.manager().await.skip_offset_by_shard(request).await.unwrap().into_inner().successful);
    rig.wait_revisions("rs", &e, &[1, 3]).await;
    rig.append(&e, "d").await;
    rig.wait_revisions("rs", &e, &[1, 3, 4]).await;
    assert!(!rig.reader.log.has_delivered("rs", &e, 2), "the skipped event is never delivered successfully");
    assert_eq!(rig.reader.log.attempts("rs", &e, 2).len(), 1);
    assert_eq!(rig.reader.log.revisions("rs", &f), vec![1], "skip did not touch the other shards");
    let status = rig.wait_status("rs", se, "RUNNING", WAIT).await;
    assert!(status.error.is_empty(), "{status:?}");
    rig.shutdown().await;
}

/// Unknown read side → NOT_FOUND on every call; a shard out of range → INVALID_ARGUMENT on every by-shard call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_api_rejects_unknown_read_sides_and_shards_out_of_range() {
    let rig = Rig::start(4, |port| vec![ReadSideSpec::new("a", port)]).await;
    let mut m = rig.manager().await;
    let id = || "nope".to_string();
    let codes = [
        m.get_latest_offset(GetLatestOffsetRequest { read_side_id: id() }).await.map(|_| ()),
        m.get_latest_offset_by_shard(GetLatestOffsetByShardRequest { read_side_id: id(), cluster_shard_number: 0 })
            .await
            .map(|_| ()),
        m.restart_read_side(RestartReadSideRequest { read_side_id: id() }).await.map(|_| ()),
        m.restart_read_side_by_shard(RestartReadSideByShardRequest { read_side_id: id(), cluster_shard_number: 0 })
            .await
            .map(|_| ()),
        m.pause_read_side(PauseReadSideRequest { read_side_id: id() }).await.map(|_| ()),
        m.pause_read_side_by_shard(PauseReadSideByShardRequest { read_side_id: id(), cluster_shard_number: 0 })
            .await
            .map(|_| ()),
        m.resume_read_side(ResumeReadSideRequest { read_side_id: id() }).await.map(|_| ()),
        m.resume_read_side_by_shard(ResumeReadSideByShardRequest { read_side_id: id(), cluster_shard_number: 0 })
            .await
            .map(|_| ()),
        m.skip_offset(SkipOffsetRequest { read_side_id: id() }).await.map(|_| ()),
        m.skip_offset_by_shard(SkipOffsetByShardRequest { read_side_id: id(), cluster_shard_number: 0 })
            .await
            .map(|_| ()),
        rig.admin().await.list_read_sides(ListReadSidesRequest { read_side_id: id() }).await.map(|_| ()),
    ];
    for (i, outcome) in codes.into_iter().enumerate() {
        assert_eq!(outcome.expect_err("unknown read side").code(), Code::NotFound, "call {i}");
    }
    for shard in [4, u64::from(u32::MAX) + 1, u64::MAX] {
        let a = || "a".to_string();
        let outcomes = [
            m.get_latest_offset_by_shard(GetLatestOffsetByShardRequest {
                read_side_id: a(),
                cluster_shard_number: shard,
            })
            .await
            .map(|_| ()),
            m.restart_read_side_by_shard(RestartReadSideByShardRequest {
                read_side_id: a(),
                cluster_shard_number: shard,
            })
            .await
            .map(|_| ()),
            m.pause_read_side_by_shard(PauseReadSideByShardRequest { read_side_id: a(), cluster_shard_number: shard })
                .await
                .map(|_| ()),
            m.resume_read_side_by_shard(ResumeReadSideByShardRequest {
                read_side_id: a(),
                cluster_shard_number: shard,
            })
            .await
            .map(|_| ()),
            m.skip_offset_by_shard(SkipOffsetByShardRequest { read_side_id: a(), cluster_shard_number: shard })
                .await
                .map(|_| ()),
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            assert_eq!(
                outcome.expect_err("shard out of range").code(),
                Code::InvalidArgument,
                "shard {shard}, call {i}"
            );
        }
    }
    // Nothing was paused by the refused calls.
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "RUNNING"));
    rig.shutdown().await;
}

/// `autoStart: false` starts the read side paused; resume starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_start_false_starts_paused() {
    let rig =
        Rig::start(4, |port| vec![ReadSideSpec::new("a", port).auto_start(false), ReadSideSpec::new("b", port)]).await;
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "PAUSED"), "{:?}", rig.statuses("a").await);
    let (x, y) = two_shards(4);
    rig.append(&x, "1").await;
    rig.append(&y, "1").await;
    rig.wait_revisions("b", &x, &[1]).await;
    rig.wait_revisions("b", &y, &[1]).await;
    assert!(rig.reader.log.calls("a").is_empty(), "autoStart=false: nothing delivered");
    let reply = rig.manager().await.resume_read_side(ResumeReadSideRequest { read_side_id: "a".into() }).await;
    assert!(reply.unwrap().into_inner().successful);
    rig.wait_revisions("a", &x, &[1]).await;
    rig.wait_revisions("a", &y, &[1]).await;
    rig.shutdown().await;
}

/// `COS_READ_SIDE_ENABLED=false` (even with read sides configured): no manager service, no admin service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_is_unimplemented_when_read_sides_are_disabled() {
    let mut reader = ReadHandler::start().await;
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("a", reader.port())]);
    let path = yaml.path_str();
    let t = TestNode::start(|c| {
        c.entities.num_shards = 4;
        c.read_side.enabled = false;
        c.read_side.config = path;
    })
    .await;
    let channel = Channel::from_shared(format!("http://{}", t.node().local_addr())).unwrap().connect().await.unwrap();
    let status = ReadSideManagerServiceClient::new(channel.clone())
        .get_latest_offset(GetLatestOffsetRequest { read_side_id: "a".into() })
        .await
        .expect_err("no manager service");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = ReadSideManagerServiceClient::new(channel.clone())
        .pause_read_side(PauseReadSideRequest { read_side_id: "a".into() })
        .await
        .expect_err("no manager service");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = ReadSideAdminServiceClient::new(channel)
        .list_read_sides(ListReadSidesRequest::default())
        .await
        .expect_err("no admin service");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // And no read side runs: an event is written, the handler (positive control: the write succeeded) sees nothing.
    let x = entity("x");
    t.process(&x, command("Append", "1")).await.unwrap();
    t.process(&x, command("Append", "2")).await.unwrap();
    assert!(reader.log.is_empty());
    t.shutdown().await;
    reader.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// CLI

/// `regent readside list|offsets|pause|resume|restart|skip ... --node URL` as a process: exit code 0 and the
/// effect; exit code ≠ 0 for an unknown read side or a shard out of range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readside_cli_drives_the_read_sides() {
    let rig = Rig::start(4, |port| vec![ReadSideSpec::new("a", port), ReadSideSpec::new("b", port)]).await;
    let url = rig.url();
    let (x, y) = two_shards(4);
    let sx = shard_of(&x, 4);

    let listed = readside_ok(&url, &["list"]).await;
    assert!(listed.contains("RUNNING") && listed.contains(" a ") && listed.contains(" b "), "{listed}");

    // pause / resume
    let out = readside_ok(&url, &["pause", "a"]).await;
    assert!(out.contains("paused"), "{out}");
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "PAUSED"));
    rig.append(&x, "1").await;
    rig.append(&y, "1").await;
    rig.wait_revisions("b", &x, &[1]).await;
    rig.wait_revisions("b", &y, &[1]).await;
    assert!(rig.reader.log.calls("a").is_empty(), "no delivery while paused");
    let listed = readside_ok(&url, &["list", "a"]).await;
    assert!(listed.contains("PAUSED") && !listed.contains(" b "), "{listed}");
    readside_ok(&url, &["resume", "a"]).await;
    rig.wait_revisions("a", &x, &[1]).await;
    rig.wait_revisions("a", &y, &[1]).await;

    // restart one shard
    readside_ok(&url, &["restart", "a", "--shard", &sx.to_string()]).await;
    rig.wait_revisions("a", &x, &[1, 1]).await;
    rig.append(&y, "2").await;
    rig.wait_revisions("a", &y, &[1, 2]).await;
    assert_eq!(rig.reader.log.revisions("a", &x), vec![1, 1]);

    // skip the event a STOPPED read side is stuck on
    rig.reader.fail_event("a", &x, 2, Answer::NotSuccessful);
    rig.append(&x, "2").await;
    rig.append(&x, "3").await;
    rig.wait_status("a", sx, "STOPPED", WAIT).await;
    rig.reader.clear_rule();
    readside_ok(&url, &["skip", "a"]).await;
    rig.wait_revisions("a", &x, &[1, 1, 3]).await;
    assert!(!rig.reader.log.has_delivered("a", &x, 2));
    assert_eq!(rig.reader.log.revisions("a", &y), vec![1, 2], "skip did not touch the other shards");

    // offsets
    let last = rig.ordering(&x, 3).await;
    let shard = sx.to_string();
    eventually("the CLI shows the offset", WAIT, || async {
        readside_ok(&url, &["offsets", "a", "--shard", &shard]).await.contains(&format!(" {last} ")).then_some(())
    })
    .await;
    let out = readside_ok(&url, &["offsets", "a"]).await;
    assert!(out.contains(&format!(" {last} ")), "{out}");

    // errors
    for args in [
        vec!["readside", "pause", "nope"],
        vec!["readside", "offsets", "nope"],
        vec!["readside", "skip", "nope"],
        vec!["readside", "list", "nope"],
        vec!["readside", "pause", "a", "--shard", "4"],
        vec!["readside", "restart", "a", "--shard", "4"],
    ] {
        let mut args = args;
        args.extend_from_slice(&["--node", &url]);
        let (code, stdout, stderr) = regent_cli(&args).await;
        assert_ne!(code, 0, "regent {args:?} should fail: {stdout} {stderr}");
        let expected = if args.contains(&"--shard") { "InvalidArgument" } else { "NotFound" };
        assert!(stderr.contains(expected), "regent {args:?}: {stderr}");
    }
    assert!(rig.statuses("a").await.iter().all(|s| s.status == "RUNNING"), "refused commands changed nothing");
    rig.shutdown().await;
}
