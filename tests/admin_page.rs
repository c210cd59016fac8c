//! The admin page in a real browser: three real `regent` processes form a cluster, commands spread shards over
//! them, and headless Chromium (Debian's `chromium`, which `scripts/test.sh` installs) loads the page of one
//! node. The rendered DOM must show the three members `up` and every shard of the map on its node.
//!
//! `REGENT_UPDATE_SCREENSHOT=1` also writes `docs/admin-page.png` (the screenshot in the README).
//! Needs `REGENT_TEST_DATABASE_URL` and a `chromium` on the `PATH` (or `REGENT_CHROMIUM`).

mod common;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use regent::proto::chief_of_state::v1::ProcessCommandRequest;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use support::handler::command;
use support::nodes::Cluster;
use support::read_handler::{ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::{TestHandler, entity, eventually, pg};

fn chromium() -> String {
    std::env::var("REGENT_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs headless Chromium on `url` with `args` (after the page's scripts ran for a few seconds of virtual time).
fn headless(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(["--no-first-run", "--disable-extensions", "--virtual-time-budget=4000", "--window-size=1280,1180"])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (install Debian's chromium, see scripts/test.sh): {e}", chromium()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_three_members_and_the_shard_map() {
    support::init_logging();
    let mut handler = TestHandler::start().await;
    let mut reader = ReadHandler::start().await;
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("audit", reader.port())]);
    let db = pg::fresh_postgres_config();
    let read_sides = [("COS_READ_SIDE_ENABLED", "true".to_string()), ("COS_READ_SIDE_CONFIG", yaml.path_str())];
    let cluster = Cluster::start(3, &db, handler.addr().port(), &read_sides).await;

    // Commands through every node, until every shard is allocated and each node hosts some.
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(ChiefOfStateServiceClient::connect(node.grpc_url()).await.expect("connect"));
    }
    let status = eventually("every shard allocated on the three nodes", Duration::from_secs(60), || {
        let mut clients = clients.clone();
        let cluster = &cluster;
        async move {
            for (i, client) in clients.iter_mut().enumerate() {
                for _ in 0..4 {
                    let request = ProcessCommandRequest {
                        entity_id: entity(&format!("page{i}")),
                        command: Some(command("Append", "x")),
                    };
                    let _ = client.process_command(request).await;
                }
            }
            let status = cluster.status(0).await;
            let nodes: std::collections::BTreeSet<&str> = status.shards.iter().map(|s| s.node.as_str()).collect();
            (status.shards.len() == status.num_shards as usize && nodes.len() == 3).then_some(status)
        }
    })
    .await;

    let url = format!("http://{}/", cluster.nodes[0].admin());
    let dom = headless(&url, &["--dump-dom"]);
    assert!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains(r#"data-loaded="true""#), "the page's script did not render:\n{dom}");
    for node in ["n1", "n2", "n3"] {
        let card = format!(r#"class="card state-ok" data-node="{node}" data-status="up""#);
        assert!(dom.contains(&card), "no up card for {node}:\n{dom}");
    }
    for home in &status.shards {
        let cell = format!(r#"data-shard="{}" data-node="{}""#, home.shard, home.node);
        assert!(dom.contains(&cell), "shard {} is not shown on {}:\n{dom}", home.shard, home.node);
    }
    assert!(dom.contains(">ready<"), "this node shows as ready:\n{dom}");
    assert!(dom.contains("<td>audit</td>"), "the read side's processors on this node are listed:\n{dom}");

    // The screenshot (kept in docs/ when asked, else in a temporary folder).
    let dir = tempfile::tempdir().expect("temporary folder");
    let path: PathBuf = if std::env::var("REGENT_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/admin-page.png")
    } else {
        dir.path().join("admin-page.png")
    };
    let shot = headless(&url, &[&format!("--screenshot={}", path.display())]);
    assert!(shot.status.success(), "chromium failed: {}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&path).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real PNG: {} bytes", png.len());

    drop(cluster);
    handler.stop().await;
    reader.stop().await;
    pg::drop_schema(&db.schema).await;
}
