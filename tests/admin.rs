//! The admin endpoint against a real node (port 0), a real (scriptable) write handler and a real PostgreSQL:
//! `/health`, `/ready`, `/cluster` of a node alone, `/actors` following the traffic (shards by `shard_of`, entity
//! ids, counts, `max_entities`, passivation, read sides), the endpoint stopping with the node, and the
//! `regent admin` CLI run as the real binary.
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`); each test gets its own
//! schema and its own entities.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use regent::actors::shard_of;
use regent::admin::actors::{ActorKind, ActorNode, ActorTree};
use regent::admin::client;
use regent::cluster::status::ClusterStatus;

use support::handler::command;
use support::read_handler::{ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::{TestNode, entity, eventually, regent_cli};

// ---------------------------------------------------------------------------------------------------------------
// helpers

fn admin_addr(t: &TestNode) -> String {
    t.node().admin_addr().expect("the admin endpoint is enabled").to_string()
}

/// `GET path`: status and JSON body.
async fn get(t: &TestNode, path: &str) -> (StatusCode, Value) {
    let response = client::get(&admin_addr(t), path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let body = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {:?}", String::from_utf8_lossy(&response.body)));
    (response.status, body)
}

async fn actors(t: &TestNode, query: &str) -> ActorTree {
    client::get_json(&admin_addr(t), &format!("/actors{query}"), &[]).await.expect("GET /actors")
}

/// Sends one command to each entity, so that each has a live actor.
async fn touch(t: &TestNode, ids: &[String]) {
    for id in ids {
        t.process(id, command("Append", "x")).await.unwrap_or_else(|e| panic!("command to {id}: {e:?}"));
    }
}

fn the_region(tree: &ActorTree) -> &ActorNode {
    let regions: Vec<&ActorNode> = tree.roots.iter().filter(|r| r.kind == ActorKind::Region).collect();
    assert_eq!(regions.len(), 1, "one region root: {tree:#?}");
    regions[0]
}

/// Shard number → the entity ids listed under it.
fn entities_by_shard(region: &ActorNode) -> BTreeMap<u32, BTreeSet<String>> {
    region
        .children
        .iter()
        .map(|shard| {
            assert_eq!(shard.kind, ActorKind::Shard, "the region supervises shards only: {shard:#?}");
            assert_eq!(shard.error, None);
            let ids = shard
                .children
                .iter()
                .map(|e| {
                    assert_eq!(e.kind, ActorKind::Entity, "a shard supervises entities only: {e:#?}");
                    e.entity_id.clone().expect("an entity id")
                })
                .collect();
            (shard.shard.expect("a shard number"), ids)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// /health, /ready, /cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_once_the_node_has_started() {
    let t = TestNode::start(|_| {}).await;
    assert_eq!(get(&t, "/health").await, (StatusCode::OK, json!({"status": "ok"})));
    assert_eq!(get(&t, "/ready").await, (StatusCode::OK, json!({"ready": true})));
    let (status, body) = get(&t, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/actors"), "{body}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_describes_itself_as_its_cluster() {
    let t = TestNode::start(|c| c.entities.num_shards = 7).await;
    let status: ClusterStatus = client::get_json(&admin_addr(&t), "/cluster", &[]).await.unwrap();
    assert!(!status.enabled);
    assert_eq!(status.num_shards, 7);
    assert_eq!(status.members, vec![status.self_member.clone()]);
    assert_eq!(status.self_member.address, t.node().local_addr().to_string());
    assert_eq!(status.self_member.status, "up");
    assert!(status.leader.is_none() && status.coordinator.is_none() && status.shards.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_is_off_when_disabled_and_stops_with_the_node() {
    let t = TestNode::start(|c| c.admin.enabled = false).await;
    assert_eq!(t.node().admin_addr(), None);
    t.shutdown().await;

    let mut t = TestNode::start(|_| {}).await;
    let addr: SocketAddr = t.node().admin_addr().unwrap();
    assert_ne!(addr.port(), 8558, "tests pick a free admin port");
    t.stop_node().await;
    let after = client::get(&addr.to_string(), "/health").await;
    assert!(matches!(after, Err(client::Error::Connect { .. })), "still answering after shutdown: {after:?}");
    t.start_node().await;
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// /actors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_show_region_shards_and_entities_as_the_traffic_made_them() {
    let t = TestNode::start(|c| c.entities.num_shards = 4).await;
    let before = actors(&t, "").await;
    assert_eq!(before.counts, BTreeMap::from([(ActorKind::Region, 1)]), "{before:#?}");

    let ids: Vec<String> = (0..6).map(|_| entity("admin")).collect();
    touch(&t, &ids).await;
    let tree = actors(&t, "").await;
    let mut expected: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for id in &ids {
        expected.entry(shard_of(id, 4)).or_default().insert(id.clone());
    }
    let region = the_region(&tree);
    assert_eq!(region.status, "running");
    assert_eq!(entities_by_shard(region), expected);
    assert_eq!(
        tree.counts,
        BTreeMap::from([(ActorKind::Region, 1), (ActorKind::Shard, expected.len()), (ActorKind::Entity, 6)])
    );
    assert_eq!(tree.node, t.node().local_addr().to_string());
    // Siblings are ordered: shards by number, entities by id.
    let shards: Vec<u32> = region.children.iter().filter_map(|s| s.shard).collect();
    assert!(shards.is_sorted(), "{shards:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_entities_caps_the_leaves_but_not_the_counts() {
    let t = TestNode::start(|c| c.entities.num_shards = 1).await;
    let ids: Vec<String> = (0..5).map(|_| entity("capped")).collect();
    touch(&t, &ids).await;

    let tree = actors(&t, "?max_entities=2").await;
    assert_eq!(tree.max_entities, 2);
    let shard = &the_region(&tree).children[0];
    assert_eq!(shard.shard, Some(0));
    assert_eq!(shard.omitted, 3);
    let listed: Vec<String> = shard.children.iter().filter_map(|e| e.entity_id.clone()).collect();
    let mut first_two = ids.clone();
    first_two.sort();
    first_two.truncate(2);
    assert_eq!(listed, first_two, "the first entities by id are listed");
    assert_eq!(tree.counts[&ActorKind::Entity], 5);

    let none = actors(&t, "?max_entities=0").await;
    assert!(the_region(&none).children[0].children.is_empty());
    assert_eq!(none.counts[&ActorKind::Entity], 5);
    assert_eq!(
        client::get(&admin_addr(&t), "/actors?max_entities=lots").await.unwrap().status,
        StatusCode::BAD_REQUEST
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_entities_leave_the_tree() {
    let t = TestNode::start(|c| c.entities.passivation_idle_secs = 1).await;
    let id = entity("idle");
    touch(&t, std::slice::from_ref(&id)).await;
    let tree = actors(&t, "").await;
    assert!(entities_by_shard(the_region(&tree)).values().any(|ids| ids.contains(&id)), "{tree:#?}");
    eventually("the idle entity to leave /actors", Duration::from_secs(10), || async {
        let tree = actors(&t, "").await;
        (tree.counts.get(&ActorKind::Entity).copied().unwrap_or(0) == 0).then_some(())
    })
    .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_entity_limit_passivates_the_least_recently_used() {
    // Two shards share a limit of 4: at most 2 live entities per shard.
    let t = TestNode::start(|c| {
        c.entities.num_shards = 2;
        c.entities.active_entity_limit = 4;
        c.entities.passivation_idle_secs = 0;
    })
    .await;
    let ids: Vec<String> = (0..12).map(|_| entity("lru")).collect();
    touch(&t, &ids).await;
    // The most recently used entity of each shard is still live; the oldest ones were passivated.
    let newest: BTreeSet<String> =
        [0, 1].iter().filter_map(|s| ids.iter().rev().find(|id| shard_of(id, 2) == *s).cloned()).collect();
    let live = eventually("the limit to hold", Duration::from_secs(10), || async {
        let tree = actors(&t, "").await;
        let live: BTreeSet<String> = entities_by_shard(the_region(&tree)).into_values().flatten().collect();
        (live.len() <= 4).then_some(live)
    })
    .await;
    assert!(newest.is_subset(&live), "the most recent entity of each shard stays live: {newest:?} ⊄ {live:?}");
    // Passivated entities come back on their next command, from the journal.
    let first = &ids[0];
    let state = t.process(first, command("Append", "y")).await.expect("a passivated entity answers again");
    assert_eq!(state.meta.expect("meta").revision_number, 2);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_show_the_read_side_processors() {
    let reader = ReadHandler::start().await;
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("projection", reader.port())]);
    let path = yaml.path_str();
    let t = TestNode::start(|c| {
        c.entities.num_shards = 3;
        c.read_side.enabled = true;
        c.read_side.config = path;
    })
    .await;
    let tree = eventually("three read-side processors", Duration::from_secs(10), || async {
        let tree = actors(&t, "").await;
        (tree.counts.get(&ActorKind::ReadSideProcessor) == Some(&3)).then_some(tree)
    })
    .await;
    let supervisor = tree.roots.iter().find(|r| r.kind == ActorKind::ReadSideSupervisor).expect("a supervisor root");
    assert_eq!(supervisor.children.len(), 3);
    assert!(supervisor.children.iter().all(|p| p.kind == ActorKind::ReadSideProcessor));
    assert_eq!(tree.counts[&ActorKind::ReadSideSupervisor], 1);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// regent admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_tree_the_cluster_and_readiness() {
    let t = TestNode::start(|c| c.entities.num_shards = 4).await;
    let ids: Vec<String> = (0..3).map(|_| entity("cli")).collect();
    touch(&t, &ids).await;
    let node = admin_addr(&t);

    let (code, out, err) = regent_cli(&["admin", "actors", "--node", &node]).await;
    assert_eq!(code, 0, "{err}");
    for id in &ids {
        let line = format!("entity {id}  [");
        assert!(out.contains(&line), "{id} missing from:\n{out}");
        assert!(out.contains(&format!("shard {}  [", shard_of(id, 4))), "{out}");
    }
    assert!(out.contains("region 1, shard ") && out.contains("entity 3"), "{out}");

    let (code, out, err) =
        regent_cli(&["admin", "actors", "--node", &format!("http://{node}/"), "--max-entities", "0"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("entity cli-") && out.contains("more entities"), "{out}");

    let (code, out, err) = regent_cli(&["admin", "cluster", "--node", &node]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("single node") && out.contains(&t.node().local_addr().to_string()), "{out}");

    assert_eq!(regent_cli(&["admin", "health", "--node", &node]).await.1, "ok\n");
    assert_eq!(regent_cli(&["admin", "ready", "--node", &node]).await.1, "ready\n");

    let unreachable = t.node().local_addr().to_string(); // gRPC, not HTTP/1: the answer is not the expected JSON
    let (code, _, err) = regent_cli(&["admin", "health", "--node", &unreachable]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    t.shutdown().await;
}
