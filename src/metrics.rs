//! Prometheus metrics (`prometheus-client`), served as OpenMetrics text on the admin endpoint's `/metrics`.
//!
//! The families live in one process-wide [`Metrics`] ([`get`]): code that does something worth counting records
//! it where it happens (a command in [`EngineHandle`](crate::engine::EngineHandle), a handler call in the entity,
//! a journal batch in the batcher, a gRPC request in [`GrpcMetricsLayer`]). What is cheaper to read than to track
//! (members by state, shards per node, read-side offsets and lag) is set just before each scrape from the node's
//! cluster view and read-side reports ([`observe_cluster`](Metrics::observe_cluster),
//! [`observe_read_sides`](Metrics::observe_read_sides)). A process runs one node, so process-wide is per node.
//!
//! Every family is listed, with its labels and meaning, in `docs/operations.md`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cluster::status::ClusterStatus;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Latency buckets, in seconds: 0.5 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17))
}

/// Size buckets (appends or events in one journal transaction): 1 to 1024.
fn size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11))
}

/// Every metric family of the node.
pub struct Metrics {
    registry: Registry,
    pub commands: Family<Labels, Counter>,
    pub command_duration: HistogramFamily,
    pub handler_call_duration: HistogramFamily,
    pub journal_batch_appends: Histogram,
    pub journal_batch_events: Histogram,
    pub journal_commit_duration: HistogramFamily,
    pub snapshots: Family<Labels, Counter>,
    pub entities_active: Gauge,
    pub entities_passivated: Counter,
    pub shards: Family<Labels, Gauge>,
    pub members: Family<Labels, Gauge>,
    pub read_side_offset: Family<Labels, Gauge>,
    pub read_side_lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub read_side_status: Family<Labels, Gauge>,
    pub read_side_events: Family<Labels, Counter>,
    pub read_side_errors: Family<Labels, Counter>,
    pub subscriptions_active: Gauge,
    pub grpc_requests: Family<Labels, Counter>,
    pub grpc_request_duration: HistogramFamily,
    pub peer_requests: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The states a member can be in, so that `regent_cluster_members` lists each of them (0 included).
const MEMBER_STATES: [&str; 6] = ["joining", "up", "leaving", "exiting", "down", "removed"];
/// The states of a read-side processor (`regent_read_side_status`).
const READ_SIDE_STATES: [&str; 4] = ["RUNNING", "PAUSED", "REPLAYING", "STOPPED"];

impl Metrics {
    fn new() -> Metrics {
        let latency: fn() -> Histogram = latency_histogram;
        let m = Metrics {
            registry: Registry::default(),
            commands: Family::default(),
            command_duration: Family::new_with_constructor(latency),
            handler_call_duration: Family::new_with_constructor(latency),
            journal_batch_appends: size_histogram(),
            journal_batch_events: size_histogram(),
            journal_commit_duration: Family::new_with_constructor(latency),
            snapshots: Family::default(),
            entities_active: Gauge::default(),
            entities_passivated: Counter::default(),
            shards: Family::default(),
            members: Family::default(),
            read_side_offset: Family::default(),
            read_side_lag_seconds: Family::default(),
            read_side_status: Family::default(),
            read_side_events: Family::default(),
            read_side_errors: Family::default(),
            subscriptions_active: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_request_duration: Family::new_with_constructor(latency),
            peer_requests: Family::default(),
        };
        let mut registry = Registry::default();
        let r = &mut registry;
        r.register("regent_commands", "Commands processed, by outcome (ok or the gRPC code)", m.commands.clone());
        r.register(
            "regent_command_duration_seconds",
            "Time from receiving a command to its durable reply, by outcome",
            m.command_duration.clone(),
        );
        r.register(
            "regent_write_handler_call_duration_seconds",
            "Write handler calls (HandleCommand, HandleEvent) by method and outcome",
            m.handler_call_duration.clone(),
        );
        r.register(
            "regent_journal_batch_appends",
            "Entity appends written in one journal transaction",
            m.journal_batch_appends.clone(),
        );
        r.register(
            "regent_journal_batch_events",
            "Events written in one journal transaction",
            m.journal_batch_events.clone(),
        );
        r.register(
            "regent_journal_commit_duration_seconds",
            "Time to write and commit one journal transaction, by outcome",
            m.journal_commit_duration.clone(),
        );
        r.register("regent_snapshots", "Snapshots stored, by outcome (ok, error)", m.snapshots.clone());
        r.register("regent_entities_active", "Entity actors alive on this node", m.entities_active.clone());
        r.register(
            "regent_entities_passivated",
            "Entities stopped for idleness or the limit",
            m.entities_passivated.clone(),
        );
        r.register("regent_shards", "Shards hosted, by node (this node's view of the shard map)", m.shards.clone());
        r.register("regent_cluster_members", "Cluster members, by state", m.members.clone());
        r.register(
            "regent_read_side_offset",
            "Journal ordering of the last event a read side handled, by read side and shard (shards run here)",
            m.read_side_offset.clone(),
        );
        r.register(
            "regent_read_side_lag_seconds",
            "Age of the oldest event a read side has read but not yet handled (0 when caught up)",
            m.read_side_lag_seconds.clone(),
        );
        r.register(
            "regent_read_side_status",
            "1 for the current status of each read-side processor (RUNNING, PAUSED, REPLAYING, STOPPED)",
            m.read_side_status.clone(),
        );
        r.register(
            "regent_read_side_events",
            "Events a read side handled, by read side and shard",
            m.read_side_events.clone(),
        );
        r.register(
            "regent_read_side_errors",
            "Failed read handler calls, by read side and shard",
            m.read_side_errors.clone(),
        );
        r.register(
            "regent_subscriptions_active",
            "Open Subscribe and SubscribeAll streams",
            m.subscriptions_active.clone(),
        );
        r.register("regent_grpc_server_requests", "gRPC requests served, by method and code", m.grpc_requests.clone());
        r.register(
            "regent_grpc_server_request_duration_seconds",
            "gRPC request latency up to the response headers, by method",
            m.grpc_request_duration.clone(),
        );
        r.register(
            "regent_cluster_forwarded_requests",
            "Entity requests forwarded to their owner node, by outcome",
            m.peer_requests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Records one command: its outcome (`ok` or the snake-case gRPC code) and latency.
    pub fn command(&self, outcome: &str, elapsed: Duration) {
        let labels = vec![("outcome", outcome.to_string())];
        self.commands.get_or_create(&labels).inc();
        self.command_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Records one write handler call.
    pub fn handler_call(&self, method: &'static str, outcome: &str, elapsed: Duration) {
        let labels = vec![("method", method.to_string()), ("outcome", outcome.to_string())];
        self.handler_call_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Records one journal transaction of `appends` entity appends holding `events` events.
    pub fn journal_batch(&self, appends: usize, events: usize, ok: bool, elapsed: Duration) {
        self.journal_batch_appends.observe(appends as f64);
        self.journal_batch_events.observe(events as f64);
        let labels = vec![("outcome", if ok { "ok" } else { "error" }.to_string())];
        self.journal_commit_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn snapshot(&self, ok: bool) {
        self.snapshots.get_or_create(&vec![("outcome", if ok { "ok" } else { "error" }.to_string())]).inc();
    }

    /// Makes a processor's counters visible (at 0) from its start, so that `rate()` and alerts see them.
    pub fn read_side_started(&self, read_side: &str, shard: u32) {
        let labels = read_side_labels(read_side, shard);
        let _ = self.read_side_events.get_or_create(&labels);
        let _ = self.read_side_errors.get_or_create(&labels);
    }

    pub fn read_side_delivered(&self, read_side: &str, shard: u32) {
        self.read_side_events.get_or_create(&read_side_labels(read_side, shard)).inc();
    }

    pub fn read_side_failed(&self, read_side: &str, shard: u32) {
        self.read_side_errors.get_or_create(&read_side_labels(read_side, shard)).inc();
    }

    pub fn forwarded(&self, outcome: &str) {
        self.peer_requests.get_or_create(&vec![("outcome", outcome.to_string())]).inc();
    }

    /// Sets the members-by-state and shards-per-node gauges from the node's view of its cluster.
    pub fn observe_cluster(&self, status: &ClusterStatus) {
        for state in MEMBER_STATES {
            let count = status.members.iter().filter(|m| m.status == state).count();
            self.members.get_or_create(&vec![("status", state.to_string())]).set(count as i64);
        }
        let mut per_node: BTreeMap<&str, i64> = status.members.iter().map(|m| (m.node.as_str(), 0)).collect();
        if status.enabled {
            for home in &status.shards {
                *per_node.entry(home.node.as_str()).or_default() += 1;
            }
        } else {
            // A node alone hosts every shard.
            per_node.insert(status.self_member.node.as_str(), i64::from(status.num_shards));
        }
        self.shards.clear();
        for (node, count) in per_node {
            self.shards.get_or_create(&vec![("node", node.to_string())]).set(count);
        }
    }

    /// Sets the read-side gauges from the processors running on this node (forgetting those that moved away).
    pub fn observe_read_sides(&self, reports: &[ReadSideView]) {
        self.read_side_offset.clear();
        self.read_side_lag_seconds.clear();
        self.read_side_status.clear();
        for report in reports {
            let labels = read_side_labels(&report.read_side, report.shard);
            self.read_side_offset.get_or_create(&labels).set(i64::try_from(report.offset).unwrap_or(i64::MAX));
            self.read_side_lag_seconds.get_or_create(&labels).set(report.lag_seconds);
            for state in READ_SIDE_STATES {
                let mut labels = labels.clone();
                labels.push(("status", state.to_string()));
                self.read_side_status.get_or_create(&labels).set(i64::from(report.status == state));
            }
        }
    }
}

fn read_side_labels(read_side: &str, shard: u32) -> Labels {
    vec![("read_side", read_side.to_string()), ("shard", shard.to_string())]
}

/// One read-side processor as `/readsides` lists it and the read-side gauges show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadSideView {
    pub read_side: String,
    pub shard: u32,
    /// Journal ordering of the last event handled (0: none yet).
    pub offset: u64,
    /// `RUNNING`, `PAUSED`, `REPLAYING` or `STOPPED`.
    pub status: String,
    /// Why it is replaying or stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Age of the oldest event read and not yet handled, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Events handled since the processor started.
    pub delivered: u64,
    /// Failed handler calls since the processor started.
    pub failures: u64,
}

/// `tonic::Code` as a snake-case label value (`ok`, `invalid_argument`, ...).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// A tower layer for the gRPC server: counts each request by method (the `/package.Service/Method` path) and
/// code, and observes its latency up to the response headers. The code is the `grpc-status` of a trailers-only
/// response (how errors are answered), else `ok`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("ok", |c| code_label(tonic::Code::from_i32(c))),
                Err(_) => "unavailable",
            };
            let metrics = get();
            metrics.grpc_requests.get_or_create(&vec![("method", method.clone()), ("code", code.to_string())]).inc();
            metrics
                .grpc_request_duration
                .get_or_create(&vec![("method", method)])
                .observe(started.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::status::{MemberStatusView, ShardHomeView};

    #[test]
    fn cluster_gauges_count_members_by_state_and_shards_by_node() {
        let member = |node: &str, status: &str| MemberStatusView {
            node: node.into(),
            status: status.into(),
            ..MemberStatusView::default()
        };
        let home = |shard, node: &str| ShardHomeView { shard, member: format!("{node}.1"), node: node.into() };
        let status = ClusterStatus {
            enabled: true,
            self_member: member("n1", "up"),
            members: vec![member("n1", "up"), member("n2", "up"), member("n3", "joining")],
            num_shards: 4,
            shards: vec![home(0, "n1"), home(1, "n2"), home(2, "n1")],
            ..ClusterStatus::default()
        };
        let metrics = Metrics::new();
        metrics.observe_cluster(&status);
        let text = metrics.encode();
        assert!(text.contains("regent_cluster_members{status=\"up\"} 2\n"), "{text}");
        assert!(text.contains("regent_cluster_members{status=\"joining\"} 1\n"), "{text}");
        assert!(text.contains("regent_cluster_members{status=\"down\"} 0\n"), "{text}");
        assert!(text.contains("regent_shards{node=\"n1\"} 2\n"), "{text}");
        assert!(text.contains("regent_shards{node=\"n3\"} 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn commands_are_counted_by_outcome_with_their_latency() {
        let metrics = Metrics::new();
        metrics.command("ok", Duration::from_millis(3));
        metrics.command("ok", Duration::from_millis(5));
        metrics.command(code_label(tonic::Code::InvalidArgument), Duration::from_millis(1));
        let text = metrics.encode();
        assert!(text.contains("regent_commands_total{outcome=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("regent_commands_total{outcome=\"invalid_argument\"} 1\n"), "{text}");
        assert!(text.contains("regent_command_duration_seconds_count{outcome=\"ok\"} 2\n"), "{text}");
    }
}
