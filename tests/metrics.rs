//! `/metrics` against a real node (port 0), a real write handler, a real read handler and a real PostgreSQL:
//! after a load (commands that succeed and fail, snapshots, passivation, a read side, a subscription) the
//! exposition parses with a Prometheus text-format parser (`prometheus-parse`) and every documented family is
//! there with values that match the load. Metrics are process-wide, so this file holds one test (one node).
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`).

mod common;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use prometheus_parse::{Sample, Scrape, Value};

use regent::admin::client;
use regent::proto::chief_of_state::v1::SubscribeAllRequest;
use support::handler::command;
use support::read_handler::{ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::{TestNode, entity, eventually};

/// The families `docs/operations.md` documents, as they appear in the exposition (counters with `_total`,
/// histograms by their `_count`).
const FAMILIES: &[&str] = &[
    "regent_commands_total",
    "regent_command_duration_seconds_count",
    "regent_write_handler_call_duration_seconds_count",
    "regent_journal_batch_appends_count",
    "regent_journal_batch_events_count",
    "regent_journal_commit_duration_seconds_count",
    "regent_snapshots_total",
    "regent_entities_active",
    "regent_entities_passivated_total",
    "regent_shards",
    "regent_cluster_members",
    "regent_read_side_offset",
    "regent_read_side_lag_seconds",
    "regent_read_side_status",
    "regent_read_side_events_total",
    "regent_read_side_errors_total",
    "regent_subscriptions_active",
    "regent_grpc_server_requests_total",
    "regent_grpc_server_request_duration_seconds_count",
];

async fn scrape_metrics(admin: &str) -> Scrape {
    let response = client::get(admin, "/metrics").await.expect("GET /metrics");
    assert_eq!(response.status, 200);
    let content_type = response.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "content type {content_type:?}");
    let text = String::from_utf8(response.body.to_vec()).expect("UTF-8 exposition");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid Prometheus text exposition")
}

fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}: unexpected value {other:?}", sample.metric),
    }
}

/// The value of the sample of `name` whose labels include `labels`.
fn find(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(scrape, name).into_iter().find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(value)
}

fn get(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test]
async fn metrics_expose_every_family_with_values_that_follow_the_load() {
    let reader = ReadHandler::start().await;
    let yaml = ReadSidesYaml::write(&[ReadSideSpec::new("audit", reader.port())]);
    let path = yaml.path_str();
    let t = TestNode::start(|c| {
        c.entities.num_shards = 4;
        c.read_side.enabled = true;
        c.read_side.config = path;
        c.subscriptions.enabled = true;
        c.snapshots.frequency = 2;
        c.entities.active_entity_limit = 6;
    })
    .await;
    let admin = t.node().admin_addr().expect("admin endpoint").to_string();

    // An open subscription.
    let mut stream = t.client.clone().subscribe_all(SubscribeAllRequest::default()).await.unwrap().into_inner();

    // Load: 10 entities × 3 commands (concurrently per round), then 2 failing commands.
    let ids: Vec<String> = (0..10).map(|_| entity("metrics")).collect();
    for round in 0..3 {
        let calls = ids.iter().map(|id| t.process(id, command("Append", &format!("r{round}"))));
        for outcome in futures::future::join_all(calls).await {
            outcome.expect("command accepted");
        }
    }
    let failing = entity("metrics-fail");
    for _ in 0..2 {
        let err = t.process(&failing, command("Fail", "3:refused")).await.expect_err("the handler refuses");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    assert!(stream.next().await.is_some(), "the subscription sees events");
    let reads = 30;
    eventually("the read side handles every event", Duration::from_secs(20), || async {
        (reader.log.delivered("audit").len() >= reads).then_some(())
    })
    .await;

    let scrape = eventually("the read side's offsets reach /metrics", Duration::from_secs(10), || async {
        let scrape = scrape_metrics(&admin).await;
        let events: f64 = samples(&scrape, "regent_read_side_events_total").iter().map(|s| value(s)).sum();
        (events >= reads as f64).then_some(scrape)
    })
    .await;

    let names: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    let missing: Vec<&&str> = FAMILIES.iter().filter(|f| !names.contains(**f)).collect();
    assert!(missing.is_empty(), "families missing from /metrics: {missing:?}\npresent: {names:?}");

    // Commands by outcome, with their latency.
    assert_eq!(get(&scrape, "regent_commands_total", &[("outcome", "ok")]), 30.0);
    assert_eq!(get(&scrape, "regent_commands_total", &[("outcome", "invalid_argument")]), 2.0);
    assert_eq!(get(&scrape, "regent_command_duration_seconds_count", &[("outcome", "ok")]), 30.0);
    let latency = get(&scrape, "regent_command_duration_seconds_sum", &[("outcome", "ok")]);
    assert!(latency > 0.0 && latency < 30.0 * 5.0, "sum of command latencies {latency}");

    // Handler calls: 32 HandleCommand (30 ok, 2 refused), 30 HandleEvent.
    let calls = |method, outcome| {
        find(&scrape, "regent_write_handler_call_duration_seconds_count", &[("method", method), ("outcome", outcome)])
    };
    assert_eq!(calls("HandleCommand", "ok"), Some(30.0));
    assert_eq!(calls("HandleCommand", "invalid_argument"), Some(2.0));
    assert_eq!(calls("HandleEvent", "ok"), Some(30.0));

    // Journal: 30 events written in at most 30 transactions, all committed.
    assert_eq!(value(samples(&scrape, "regent_journal_batch_events_sum")[0]), 30.0);
    let transactions = value(samples(&scrape, "regent_journal_batch_events_count")[0]);
    assert!((1.0..=30.0).contains(&transactions), "{transactions} journal transactions");
    assert_eq!(get(&scrape, "regent_journal_commit_duration_seconds_count", &[("outcome", "ok")]), transactions);
    assert_eq!(find(&scrape, "regent_journal_commit_duration_seconds_count", &[("outcome", "error")]), None);

    // Snapshots every 2 events: each entity crossed revision 2 once.
    assert_eq!(get(&scrape, "regent_snapshots_total", &[("outcome", "ok")]), 10.0);

    // At most 6 live entities per shard; the others were passivated.
    let active = value(samples(&scrape, "regent_entities_active")[0]);
    let passivated = value(samples(&scrape, "regent_entities_passivated_total")[0]);
    assert!((1.0..=11.0).contains(&active), "{active} active entities");
    assert!(active + passivated >= 11.0, "{active} active + {passivated} passivated entities");

    // A node alone: one member, up, hosting every shard.
    assert_eq!(get(&scrape, "regent_cluster_members", &[("status", "up")]), 1.0);
    assert_eq!(get(&scrape, "regent_cluster_members", &[("status", "down")]), 0.0);
    let shards: f64 = samples(&scrape, "regent_shards").iter().map(|s| value(s)).sum();
    assert_eq!(shards, 4.0);

    // The read side, in every shard: running, caught up, no error.
    let offsets = samples(&scrape, "regent_read_side_offset");
    assert_eq!(offsets.len(), 4, "one offset per shard: {offsets:?}");
    assert!(offsets.iter().all(|s| s.labels.get("read_side") == Some("audit")));
    assert!(offsets.iter().any(|s| value(s) > 0.0));
    for shard in ["0", "1", "2", "3"] {
        let labels = [("read_side", "audit"), ("shard", shard)];
        assert_eq!(get(&scrape, "regent_read_side_lag_seconds", &labels), 0.0, "lag of shard {shard}");
        let running = [("read_side", "audit"), ("shard", shard), ("status", "RUNNING")];
        assert_eq!(get(&scrape, "regent_read_side_status", &running), 1.0);
    }
    let events: f64 = samples(&scrape, "regent_read_side_events_total").iter().map(|s| value(s)).sum();
    assert_eq!(events, 30.0);
    let errors = samples(&scrape, "regent_read_side_errors_total");
    assert_eq!(errors.len(), 4, "counters exist from the start: {errors:?}");
    assert!(errors.iter().all(|s| value(s) == 0.0), "no read-side error: {errors:?}");

    // One open subscription.
    assert_eq!(value(samples(&scrape, "regent_subscriptions_active")[0]), 1.0);

    // gRPC requests by method and code.
    let process = "/chief_of_state.v1.ChiefOfStateService/ProcessCommand";
    assert_eq!(get(&scrape, "regent_grpc_server_requests_total", &[("method", process), ("code", "ok")]), 30.0);
    assert_eq!(
        get(&scrape, "regent_grpc_server_requests_total", &[("method", process), ("code", "invalid_argument")]),
        2.0
    );
    assert_eq!(get(&scrape, "regent_grpc_server_request_duration_seconds_count", &[("method", process)]), 32.0);

    // Closing the subscription shows at the next scrape.
    drop(stream);
    eventually("the subscription gauge drops", Duration::from_secs(10), || async {
        let scrape = scrape_metrics(&admin).await;
        (value(samples(&scrape, "regent_subscriptions_active")[0]) == 0.0).then_some(())
    })
    .await;

    t.shutdown().await;
    drop(reader);
}
