//! The deployment, built and run for real (issue 10): the image from `deploy/Dockerfile` and the cluster from
//! `deploy/compose.yaml`, in containers on a private network, under a steady client load.
//!
//! - `image_*`: a container of the image runs as a non-root user with `regent` as PID 1, answers gRPC health and
//!   commands, and exits 0 on SIGTERM.
//! - `compose_*`: PostgreSQL, three nodes and the example handler; a client on the host sends commands through the
//!   published ports while one node is killed, one is cut off the network and comes back, the cluster scales to
//!   five nodes and back to three, and every node is restarted in turn; then every acknowledged command is looked
//!   up in the journal. The figures are printed (`cargo test --test deploy_compose -- --nocapture`).
//!
//! The image is `deploy/Dockerfile`'s `runtime-prebuilt` target with this build's debug binary (no Rust toolchain
//! image, no release build); base images are made from Debian's packages where no registry answers
//! (`deploy/scripts/base-image.sh`). The tests skip, saying why, only when `docker` is not installed; they run one
//! at a time. `deploy/compose.test.yaml` shortens the lease to 2 s (failover within 5 s; the default 10 s lease
//! cannot give that), heartbeats to 200 ms, stable-after and rebalancing to 2 s, a request's deadline
//! (`COS_COMMAND_HANDLER_TIMEOUT`) to 3 s, and publishes PostgreSQL.
//! `LOG_LEVEL` (e.g. `info,regent::cluster=debug`) is passed to the nodes; when a test fails, the containers' logs
//! are kept in the temporary folder (the path is printed).

mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deploy::docker::{self, Compose, Container, eventually, images};
use deploy::load::{self, Load};
use regent::cluster::status::ClusterStatus;
use regent::example::bank::{pack, unpack};
use regent::proto::bank::{BankAccount, OpenAccount};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{GetStateRequest, ProcessCommandRequest};

/// One container test at a time: they share the machine's two cores, and the figures they print must not depend
/// on each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The grace period of `docker stop` (compose.yaml's `stop_grace_period`): the leave timeout (30 s) + a margin.
const GRACE: Duration = Duration::from_secs(40);
/// Entities under load, and the pause of each worker between two commands.
const ENTITIES: usize = 32;
const PAUSE: Duration = Duration::from_millis(40);
/// The acceptance bound: every entity is served again within this long after a node is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// Every entity is served again within this long after the leader is cut off. Unlike a killed node, a cut-off one
/// closes no connection: its member and leader leases must expire (2 s) and, if it was cut in the middle of a
/// membership transaction, PostgreSQL must end its session (5 s idle in transaction) before a new leader downs
/// it; requests forwarded to it meanwhile wait for their deadline (`COS_COMMAND_HANDLER_TIMEOUT`, 3 s here) and
/// are retried. The bound is that deadline plus the clients' 10 s retry window, with a margin.
const CUT_BOUND: Duration = Duration::from_secs(15);

fn skip() -> bool {
    match docker::unavailable() {
        Some(reason) => {
            eprintln!("SKIPPED: the container tests need Docker: {reason}");
            true
        }
        None => false,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime")
}

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[test]
fn image_runs_as_non_root_answers_health_and_exits_0_on_sigterm() {
    if skip() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let images = images();
    // The embedded store and the bundled handler: the image alone, nothing else.
    let id = docker::docker(&["run", "-d", "-p", "127.0.0.1::9000", &images.regent, "start", "--example-handler"]);
    let container = Container { id: id.clone(), name: id.clone(), number: 1 };
    let _remove = Defer(|| {
        let _ = docker::run(std::process::Command::new("docker").args(["rm", "-f", &id]));
    });

    let config = &container.inspect()["Config"];
    assert_eq!(config["User"], "10001:10001", "the image runs as the regent user");
    for port in ["9000/tcp", "25520/tcp", "8558/tcp"] {
        assert!(config["ExposedPorts"].get(port).is_some(), "the image exposes {port}");
    }
    let uid = docker::docker(&["exec", &container.id, "id", "-u"]);
    assert_eq!(uid, "10001", "processes in the container run as uid 10001, not root");
    let pid1 = docker::docker(&["exec", &container.id, "cat", "/proc/1/cmdline"]);
    assert!(pid1.starts_with("/usr/local/bin/regent\0start"), "regent is PID 1: {pid1:?}");
    let pid1_uid = docker::docker(&["exec", &container.id, "awk", "/^Uid:/ {print $2}", "/proc/1/status"]);
    assert_eq!(pid1_uid, "10001", "PID 1 is not root");

    let address = container.published(9000).expect("port 9000 is published");
    let runtime = runtime();
    let (serving, waited) =
        eventually("the node answers gRPC health", Duration::from_secs(30), || runtime.block_on(grpc_health(&address)));
    assert_eq!(serving, "SERVING");
    let reply = runtime
        .block_on(async {
            let mut client = ChiefOfStateServiceClient::connect(format!("http://{address}")).await?;
            let command = pack(&OpenAccount { owner: "image test".into(), initial_balance: 7 });
            let request = ProcessCommandRequest { entity_id: "image-1".into(), command: Some(command) };
            anyhow::Ok(client.process_command(request).await?.into_inner())
        })
        .expect("a command through the published port");
    let account = unpack::<BankAccount>(&reply.state.expect("a state")).expect("a bank account").unwrap();
    assert_eq!(account.balance, 7);

    // A client's idle connection would hold the graceful shutdown: close it, as a live client does on GOAWAY.
    drop(runtime);
    let took = container.stop(GRACE);
    assert_eq!(container.exit_code(), 0, "SIGTERM is a clean exit");
    assert!(took < GRACE, "stopped within the grace period ({took:?})");
    eprintln!(
        "deploy: image {} ({:.1} MB with the debug binary): gRPC health SERVING {waited:.1?} after start, stopped on \
         SIGTERM in {took:.1?} with exit code 0",
        images.regent,
        docker::image_size(&images.regent) as f64 / 1e6
    );
}

#[test]
fn compose_cluster_survives_crash_partition_scaling_and_rolling_restart() {
    if skip() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let images = images();
    let mut files = vec![deploy::deploy("compose.yaml")];
    let mut env = vec![
        ("REGENT_IMAGE", images.regent.clone()),
        ("REGENT_CLUSTER_COOKIE", secret()),
        ("POSTGRES_PASSWORD", secret()),
        // The nodes' log level: LOG_LEVEL of the test, e.g. "info,regent::cluster=debug".
        ("LOG_LEVEL", std::env::var("LOG_LEVEL").unwrap_or_else(|_| "INFO".into())),
    ];
    if images.postgres_from_debian {
        files.push(deploy::deploy("compose.debian-postgres.yaml"));
        env.push(("POSTGRES_IMAGE", images.postgres.clone()));
    }
    files.push(deploy::deploy("compose.test.yaml"));
    let password = env[2].1.clone();
    let compose = Compose::new(&format!("regent-deploy-test-{}", std::process::id()), &files, &env);
    let mut figures = Figures::default();

    // Up: PostgreSQL, the handler, three nodes; ready = three members up, each node answering a command.
    let started = Instant::now();
    compose.run(&["up", "-d", "--no-build", "--scale", "regent=3"]);
    let db = Db::connect(&compose.container("postgres").published(5432).expect("PostgreSQL is published"), &password);
    let nodes = compose.containers("regent");
    assert_eq!(nodes.len(), 3);
    let hostnames: BTreeSet<String> = nodes.iter().map(Container::hostname).collect();
    let cluster = ClusterView::new();
    eventually("three members are up", Duration::from_secs(120), || {
        (cluster.up_nodes(&compose, &db) == hostnames).then_some(())
    });
    let runtime = runtime();
    for (i, node) in nodes.iter().enumerate() {
        let address = node.published(9000).expect("each node publishes its gRPC port");
        eventually("every node answers a command", Duration::from_secs(60), || {
            runtime.block_on(open_account(&address, &format!("probe-{i}"))).then_some(())
        });
    }
    figures.push("compose up → 3 nodes up and answering", started.elapsed());
    // The documented way to find a node's published port says the same as `docker inspect`.
    assert_eq!(compose.port("regent", 1, 9000), nodes[0].published(9000).unwrap());
    cluster.assert_health_checks_pass(&nodes);
    eprintln!("deploy: members up (node → incarnation): {:?}", db.up_members());

    let load = Load::start(&format!("deploy-{}", std::process::id()), ENTITIES, PAUSE, &endpoints(&compose));
    let refreshing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Published ports change when a container restarts: keep the load's list current.
        scope.spawn(|| {
            while refreshing.load(Ordering::SeqCst) {
                load.set_endpoints(&endpoints(&compose));
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenarios(&compose, &db, &cluster, &load, &mut figures);
        }));
        refreshing.store(false, Ordering::SeqCst);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });

    // Every acknowledged command is in the journal, at the revision its reply reported.
    let prefix = load.entity(0).trim_end_matches("-0").to_string();
    let entity = |i: usize| format!("{prefix}-{i}");
    let (acks, total) = load.stop();
    let rows = db.journal(&prefix);
    let check = load::check_journal(entity, &acks, &rows);
    eprintln!(
        "deploy: load over the whole run: {total}; {} events in the journal, {} deposits applied twice by retries",
        check.events, check.applied_twice
    );
    assert_eq!(total.acked, acks.len() as u64);
    assert!(check.lost.is_empty(), "acknowledged commands lost: {:#?}", check.lost);
    assert!(check.gaps.is_empty(), "revisions not contiguous: {:#?}", check.gaps);
    // Each entity's state agrees with its journal: one writer at a time, nothing applied out of order.
    let address = endpoints(&compose).into_iter().next().expect("a node");
    for i in 0..ENTITIES {
        let id = entity(i);
        let (revision, balance) = runtime.block_on(account(&address, &id)).expect("the account's state");
        let (last, sum) = check.accounts.get(&id).copied().unwrap_or_default();
        assert_eq!(i64::from(revision), last, "{id}: the state's revision is the journal's last");
        assert_eq!(balance, sum, "{id}: the state's balance is what the journal adds up to");
    }
    figures.print();
}

/// The scenarios, in order, under the load.
fn scenarios(compose: &Compose, db: &Db, cluster: &ClusterView, load: &Load, figures: &mut Figures) {
    eventually("every entity is served", Duration::from_secs(60), || load.all_served_after(load.started));
    std::thread::sleep(Duration::from_secs(2));

    // 1. docker kill (SIGKILL) of the node hosting the most shards, the leader aside (it is cut off below).
    let before = load.stats();
    let victim = busiest_follower(compose, db);
    let old = db.incarnation(&victim.hostname()).expect("the victim is up");
    let killed = Instant::now();
    victim.kill();
    let (failover, _) = eventually("every entity is served again after the kill", Duration::from_secs(30), || {
        load.all_served_after(killed)
    });
    eprintln!("deploy: kill {}: every entity served again within {failover:.2?}", victim.hostname());
    figures.push("kill -9 of a node → every entity served again", failover);
    eventually("the killed member is no longer up", Duration::from_secs(30), || {
        (db.status(&victim.hostname(), &old).as_deref() != Some("up")).then_some(())
    });
    victim.start();
    let (_, rejoined) = eventually("the killed node is up again, a new incarnation", Duration::from_secs(60), || {
        db.incarnation(&victim.hostname()).filter(|i| *i != old)
    });
    figures.push("killed node restarted → up again", rejoined);
    report_phase(figures, "kill", &load.stats().since(&before));
    assert!(
        failover <= FAILOVER_BOUND,
        "every entity must be served again within {FAILOVER_BOUND:?}, took {failover:?}"
    );
    wait_for_up(cluster, db, compose, 3);

    // 2. docker network disconnect of the oldest member (the leader and coordinator): it is fenced, exits non-zero
    // and restarts (restart: on-failure) while the others serve everything; reconnected, it joins again.
    let before = load.stats();
    let victim = oldest(compose, db);
    let host = victim.hostname();
    let old = db.incarnation(&host).expect("the victim is up");
    let restarts = victim.restart_count();
    let network = victim.networks().into_iter().next().expect("a network");
    let cut = Instant::now();
    docker::docker(&["network", "disconnect", &network, &victim.id]);
    let (failover, _) = eventually("every entity is served again after the cut", Duration::from_secs(30), || {
        load.all_served_after(cut)
    });
    eprintln!("deploy: network cut of {host}: every entity served again within {failover:.2?}");
    figures.push("network cut of the leader → every entity served again", failover);
    eventually("the cut-off member is downed", Duration::from_secs(30), || {
        (db.status(&host, &old).as_deref() != Some("up")).then_some(())
    });
    eventually("the cut-off node exits non-zero and is restarted", Duration::from_secs(60), || {
        (victim.restart_count() > restarts).then_some(())
    });
    figures.push("network cut → the node has exited non-zero (fenced)", cut.elapsed());
    docker::docker(&["network", "connect", &network, &victim.id]);
    let (_, rejoined) = eventually("the cut-off node joins again, a new incarnation", Duration::from_secs(120), || {
        db.incarnation(&host).filter(|i| *i != old)
    });
    figures.push("reconnected → the node is up again (new incarnation)", rejoined);
    report_phase(figures, "network cut", &load.stats().since(&before));
    assert!(failover <= CUT_BOUND, "every entity must be served again within {CUT_BOUND:?}, took {failover:?}");
    wait_for_up(cluster, db, compose, 3);

    // 3. Scale to five nodes: shards rebalance onto the new ones; then back to three: they leave gracefully.
    let before = load.stats();
    let scaling = Instant::now();
    compose.run(&["up", "-d", "--no-build", "--no-recreate", "--scale", "regent=5"]);
    wait_for_up(cluster, db, compose, 5);
    eventually("every one of five nodes hosts shards", Duration::from_secs(90), || {
        let homes = db.shard_homes();
        let up = cluster.up_nodes(compose, db);
        (up.len() == 5 && up.iter().all(|n| homes.get(n).copied().unwrap_or(0) > 0)).then_some(())
    });
    eprintln!("deploy: scaled to 5: shards per node {:?}", db.shard_homes());
    figures.push("scale 3 → 5: every node hosts shards", scaling.elapsed());
    let scaling = Instant::now();
    compose.run(&["up", "-d", "--no-build", "--no-recreate", "--scale", "regent=3"]);
    wait_for_up(cluster, db, compose, 3);
    eventually("the shards are on the three remaining nodes", Duration::from_secs(90), || {
        let up = cluster.up_nodes(compose, db);
        db.shard_homes().keys().all(|n| up.contains(n)).then_some(())
    });
    eprintln!("deploy: scaled back to 3: shards per node {:?}", db.shard_homes());
    figures.push("scale 5 → 3: shards back on three nodes", scaling.elapsed());
    let since = Instant::now();
    eventually("every entity is served after scaling", Duration::from_secs(30), || load.all_served_after(since));
    report_phase(figures, "scale 3→5→3", &load.stats().since(&before));

    // 4. Rolling restart: each node in turn leaves on SIGTERM (exit 0 within the grace period) and starts again.
    let before = load.stats();
    let rolling = Instant::now();
    for node in compose.containers("regent") {
        let host = node.hostname();
        let old = db.incarnation(&host).expect("the node is up");
        let took = node.stop(GRACE);
        assert_eq!(node.exit_code(), 0, "{host}: SIGTERM is a graceful leave and a clean exit");
        assert!(took < GRACE, "{host}: stopped within the grace period ({took:?})");
        assert_ne!(db.status(&host, &old).as_deref(), Some("up"), "{host} left the cluster");
        eprintln!("deploy: rolling restart: {host} left and exited 0 in {took:.2?}");
        figures.push_max("rolling restart: longest SIGTERM → exit 0", took);
        node.start();
        eventually("the restarted node is up", Duration::from_secs(60), || db.incarnation(&host).filter(|i| *i != old));
    }
    figures.push("rolling restart of 3 nodes, one at a time", rolling.elapsed());
    let since = Instant::now();
    eventually("every entity is served after the rolling restart", Duration::from_secs(30), || {
        load.all_served_after(since)
    });
    report_phase(figures, "rolling restart", &load.stats().since(&before));
}

fn report_phase(figures: &mut Figures, phase: &str, stats: &load::Stats) {
    eprintln!("deploy: {phase}: {stats}");
    for code in stats.failed_attempts.keys() {
        eprintln!("deploy:   {code}: {:?}", stats.messages.get(code).map(String::as_str).unwrap_or_default());
    }
    figures.phases.push((phase.into(), stats.to_string()));
}

/// Waits until `n` members are up and the containers running agree.
fn wait_for_up(cluster: &ClusterView, db: &Db, compose: &Compose, n: usize) {
    eventually(&format!("{n} members are up"), Duration::from_secs(120), || {
        let running: BTreeSet<String> =
            compose.containers("regent").iter().filter(|c| c.status() == "running").map(Container::hostname).collect();
        (running.len() == n && cluster.up_nodes(compose, db) == running).then_some(())
    });
}

/// The published gRPC addresses of the running nodes.
fn endpoints(compose: &Compose) -> Vec<String> {
    let ids: Vec<String> = compose.containers("regent").into_iter().map(|c| c.id).collect();
    docker::running_endpoints(&ids, 9000).into_iter().map(|(_, address)| address).collect()
}

/// The node container hosting the most shards, the oldest member (the leader) aside.
fn busiest_follower(compose: &Compose, db: &Db) -> Container {
    let homes = db.shard_homes();
    let leader = db.oldest();
    compose
        .containers("regent")
        .into_iter()
        .filter(|c| Some(c.hostname()) != leader)
        .max_by_key(|c| homes.get(&c.hostname()).copied().unwrap_or(0))
        .expect("a node")
}

/// The node container of the oldest up member (the leader).
fn oldest(compose: &Compose, db: &Db) -> Container {
    let node = db.oldest().expect("an oldest member");
    compose.containers("regent").into_iter().find(|c| c.hostname() == node).expect("the oldest member's container")
}

/// Opens `id` (or finds it open) through `address`.
async fn open_account(address: &str, id: &str) -> bool {
    let Ok(mut client) = ChiefOfStateServiceClient::connect(format!("http://{address}")).await else {
        return false;
    };
    let command = pack(&OpenAccount { owner: "probe".into(), initial_balance: 1 });
    let request = ProcessCommandRequest { entity_id: id.into(), command: Some(command) };
    match client.process_command(request).await {
        Ok(_) => true,
        Err(status) => status.code() == tonic::Code::AlreadyExists,
    }
}

/// An account's `(revision, balance)`.
async fn account(address: &str, id: &str) -> anyhow::Result<(u32, i64)> {
    let mut client = ChiefOfStateServiceClient::connect(format!("http://{address}")).await?;
    let reply = client.get_state(GetStateRequest { entity_id: id.into() }).await?.into_inner();
    let account =
        unpack::<BankAccount>(&reply.state.unwrap_or_default()).ok_or_else(|| anyhow::anyhow!("no account"))??;
    Ok((reply.meta.unwrap_or_default().revision_number, account.balance))
}

/// `grpc.health.v1.Health/Check` of the whole server.
async fn grpc_health(address: &str) -> Option<String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?.connect().await.ok()?;
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest { service: String::new() }).await.ok()?.into_inner();
    Some(reply.status().as_str_name().to_string())
}

/// The cluster's membership as the nodes report it on the admin endpoint's `/cluster`.
///
/// TODO(admin endpoint): `/health`, `/ready` and `/cluster` are being added on another branch; where the binary
/// has no `regent admin` (this branch), the membership is read from `cluster_members` with SQL instead, and the
/// health checks (`regent admin health`) cannot pass yet. Once the endpoint is on main, drop the SQL fallback.
struct ClusterView {
    /// Whether the nodes serve the admin endpoint.
    admin: bool,
}

impl ClusterView {
    fn new() -> ClusterView {
        let help = docker::run(std::process::Command::new(env!("CARGO_BIN_EXE_regent")).args(["admin", "--help"]));
        let admin = help.status.success();
        if !admin {
            eprintln!("deploy: this binary has no admin endpoint yet: membership read with SQL");
        }
        ClusterView { admin }
    }

    /// Node names of the members `up`: in `/cluster` of a running node, else in `cluster_members`.
    fn up_nodes(&self, compose: &Compose, db: &Db) -> BTreeSet<String> {
        if !self.admin {
            return db.up_members().into_keys().collect();
        }
        let ids: Vec<String> = compose.containers("regent").into_iter().map(|c| c.id).collect();
        docker::running_endpoints(&ids, 8558)
            .iter()
            .find_map(|(_, address)| {
                let (status, body) = http_get(address, "/cluster")?;
                let cluster: ClusterStatus = (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()?;
                Some(cluster.members.iter().filter(|m| m.status == "up").map(|m| m.node.clone()).collect())
            })
            .unwrap_or_default()
    }

    /// With the admin endpoint, Docker's health checks (`regent admin health`, GET /health) pass.
    fn assert_health_checks_pass(&self, nodes: &[Container]) {
        if !self.admin {
            return;
        }
        for node in nodes {
            eventually("the node's health check passes", Duration::from_secs(60), || {
                (node.health().as_deref() == Some("healthy")).then_some(())
            });
        }
    }
}

/// A plain HTTP/1.1 GET; `(status, body)`, or `None` when nothing answers.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// PostgreSQL through its published port: the membership and the journal (schema `regent`).
struct Db {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Db {
    fn connect(address: &str, password: &str) -> Db {
        let runtime = runtime();
        let (host, port) = address.rsplit_once(':').expect("host:port");
        let url = format!("host={host} port={port} user=regent password={password} dbname=regent");
        let (client, _) = eventually("PostgreSQL accepts connections", Duration::from_secs(60), || {
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                Some(client)
            })
        });
        Db { runtime, client }
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.runtime.block_on(self.client.query(sql, &[])).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// [`query`](Self::query) for polls: no rows while the nodes have not created the tables yet.
    fn poll(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.runtime.block_on(self.client.query(sql, &[])).unwrap_or_default()
    }

    /// node → incarnation of the members up.
    fn up_members(&self) -> BTreeMap<String, String> {
        self.poll("SELECT node, incarnation FROM regent.cluster_members WHERE status = 'up'")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// The incarnation of `node` that is up.
    fn incarnation(&self, node: &str) -> Option<String> {
        self.up_members().remove(node)
    }

    fn status(&self, node: &str, incarnation: &str) -> Option<String> {
        let sql = format!(
            "SELECT status FROM regent.cluster_members WHERE node = '{node}' AND incarnation = '{incarnation}'"
        );
        self.poll(&sql).first().map(|row| row.get(0))
    }

    /// The oldest member up.
    fn oldest(&self) -> Option<String> {
        let sql = "SELECT node FROM regent.cluster_members WHERE status = 'up' ORDER BY up_number LIMIT 1";
        self.poll(sql).first().map(|row| row.get(0))
    }

    /// node → number of shards allocated to it.
    fn shard_homes(&self) -> BTreeMap<String, i64> {
        self.poll("SELECT node, count(*) FROM regent.shard_allocations GROUP BY node")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// `(entity_id, revision, payload)` of the entities whose id starts with `prefix-`.
    fn journal(&self, prefix: &str) -> Vec<(String, i64, Vec<u8>)> {
        let sql = format!(
            "SELECT entity_id, revision, payload FROM regent.journal WHERE entity_id LIKE '{prefix}-%' \
             ORDER BY entity_id, revision"
        );
        self.query(&sql).iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
    }
}

/// The figures the run measured, printed at its end (docs/deployment.md quotes them).
#[derive(Default)]
struct Figures {
    timings: Vec<(String, Duration)>,
    phases: Vec<(String, String)>,
}

impl Figures {
    fn push(&mut self, what: &str, took: Duration) {
        self.timings.push((what.into(), took));
    }

    fn push_max(&mut self, what: &str, took: Duration) {
        match self.timings.iter_mut().find(|(w, _)| w == what) {
            Some((_, longest)) => *longest = (*longest).max(took),
            None => self.push(what, took),
        }
    }

    fn print(&self) {
        eprintln!("deploy: figures");
        for (what, took) in &self.timings {
            eprintln!("deploy:   {what}: {:.2} s", took.as_secs_f64());
        }
        for (phase, stats) in &self.phases {
            eprintln!("deploy:   load during {phase}: {stats}");
        }
    }
}

/// Runs a closure when dropped.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
