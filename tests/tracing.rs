//! One trace across nodes: three real `regent` processes export OTLP to an in-test OTLP trace receiver (a real
//! tonic `TraceService`); a `ProcessCommand` carrying a W3C `traceparent` is sent to a node that does not own the
//! entity. Its trace must hold the receiving node's `process_command` and `forward` spans, the owner node's
//! `command` span, its `write_handler` and `journal_append` spans, and the handler must get the trace context.
//!
//! Needs `REGENT_TEST_DATABASE_URL`.

mod common;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use regent::actors::shard_of;
use regent::proto::chief_of_state::v1::ProcessCommandRequest;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use support::handler::command;
use support::nodes::Cluster;
use support::{TestHandler, entity, eventually, pg};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
    /// The attributes of the resource that exported it (`service.name`, ...).
    resource: HashMap<String, String>,
}

fn attribute_map(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ReceivedSpan>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// Serves OTLP on a free loopback port: the receiver, its address, and its task (abort it at the end).
    async fn start() -> (Receiver, std::net::SocketAddr, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (receiver, otlp, server)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attribute_map(&r.attributes)).unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        attributes: attribute_map(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_receiving_node_the_owner_node_and_the_write_handler() {
    support::init_logging();
    let (receiver, otlp, server) = Receiver::start().await;

    let mut handler = TestHandler::start().await;
    let db = pg::fresh_postgres_config();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_SERVICE_NAME", "regent".to_string()),
        ("OTEL_PROPAGATORS", "tracecontext,baggage".to_string()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let cluster = Cluster::start(3, &db, handler.addr().port(), &otel).await;
    let mut client = ChiefOfStateServiceClient::connect(cluster.nodes[0].grpc_url()).await.unwrap();

    // An entity whose shard lives on another node than n1 (allocated by a first command).
    let target = eventually("an entity owned by another node", Duration::from_secs(30), || {
        let mut client = client.clone();
        let cluster = &cluster;
        async move {
            let id = entity("traced");
            let request = ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", "a")) };
            client.process_command(request).await.ok()?;
            let status = cluster.status(0).await;
            let shard = shard_of(&id, status.num_shards);
            let home = status.shards.iter().find(|s| s.shard == shard)?;
            (home.node != "n1").then(|| (id, home.node.clone()))
        }
    })
    .await;
    let (id, owner) = target;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request =
        Request::new(ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", "traced")) });
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    client.process_command(request).await.expect("the traced command");

    let spans = eventually("the trace's spans reach the receiver", Duration::from_secs(20), || {
        let receiver = receiver.clone();
        async move {
            let spans: Vec<ReceivedSpan> =
                receiver.0.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
            let has = |name: &str| spans.iter().any(|s| s.name == name);
            (has("process_command") && has("forward") && has("command") && has("journal_append")).then_some(spans)
        }
    })
    .await;
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}: {spans:#?}"));
    let receiving = named("process_command");
    assert_eq!(receiving.attributes.get("node").map(String::as_str), Some("n1"), "{receiving:?}");
    assert_eq!(receiving.parent_span_id, "00f067aa0ba902b7", "the client's span is the parent");
    let forward = named("forward");
    let to = forward.attributes.get("to").cloned().unwrap_or_default();
    assert!(to.starts_with(&format!("{owner}.")), "forwarded to the owner member: {to:?}");
    let command_span = named("command");
    assert_eq!(command_span.attributes.get("node"), Some(&owner), "the owner node runs the command: {command_span:?}");
    assert_eq!(command_span.attributes.get("entity_id"), Some(&id));
    assert_eq!(command_span.parent_span_id, forward.span_id, "the owner's span continues the forward");
    let handler_call = spans
        .iter()
        .find(|s| s.name == "write_handler" && s.attributes.get("method").map(String::as_str) == Some("HandleCommand"))
        .unwrap_or_else(|| panic!("no HandleCommand span: {spans:#?}"));
    assert_eq!(handler_call.parent_span_id, command_span.span_id);
    assert_eq!(named("journal_append").parent_span_id, command_span.span_id);

    // The handler got the trace context with the call.
    let calls = handler.log.commands(&id);
    let (_, metadata) = calls.last().expect("the handler saw the command");
    let traceparent = metadata.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(traceparent.contains(trace_id), "HandleCommand carried traceparent {traceparent:?}");

    drop(cluster);
    handler.stop().await;
    server.abort();
    pg::drop_schema(&db.schema).await;
}

/// A deployment written for the Namely line: `COS_TELEMETRY_COLLECTOR_ENDPOINT` (host:port, no scheme) is where
/// traces go, `COS_TRACE_PROPAGATORS=b3multi` how the context travels (a client's `x-b3-*` headers are the parent,
/// and the write handler gets `x-b3-*` headers), and the resource carries `COS_SERVICE_NAME`,
/// `COS_TELEMETRY_NAMESPACE` and `TEAM_NAME`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namely_telemetry_variables_export_with_b3_propagation() {
    support::init_logging();
    let (receiver, otlp, server) = Receiver::start().await;
    let mut handler = TestHandler::start().await;
    let db = pg::fresh_postgres_config();
    let env = [
        ("COS_TELEMETRY_COLLECTOR_ENDPOINT", otlp.to_string()),
        ("COS_TRACE_PROPAGATORS", "b3multi".to_string()),
        ("COS_SERVICE_NAME", "accounts".to_string()),
        ("COS_TELEMETRY_NAMESPACE", "payments".to_string()),
        ("TEAM_NAME", "core".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let cluster = Cluster::start(1, &db, handler.addr().port(), &env).await;
    let mut client = ChiefOfStateServiceClient::connect(cluster.nodes[0].grpc_url()).await.unwrap();

    let (trace_id, parent) = ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1");
    let id = entity("b3");
    let mut request =
        Request::new(ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", "a")) });
    for (key, value) in [("x-b3-traceid", trace_id), ("x-b3-spanid", parent), ("x-b3-sampled", "1")] {
        request.metadata_mut().insert(key, value.parse().unwrap());
    }
    client.process_command(request).await.expect("the traced command");

    let spans = eventually("the trace's spans reach the receiver", Duration::from_secs(20), || {
        let receiver = receiver.clone();
        async move {
            let spans: Vec<ReceivedSpan> =
                receiver.0.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
            (spans.iter().any(|s| s.name == "process_command") && spans.iter().any(|s| s.name == "command"))
                .then_some(spans)
        }
    })
    .await;
    let receiving = spans.iter().find(|s| s.name == "process_command").unwrap();
    assert_eq!(receiving.parent_span_id, parent, "the client's B3 span is the parent: {receiving:?}");
    for (key, value) in [("service.name", "accounts"), ("service.namespace", "payments"), ("team.name", "core")] {
        assert_eq!(receiving.resource.get(key).map(String::as_str), Some(value), "{key}: {:?}", receiving.resource);
    }
    let calls = handler.log.commands(&id);
    let (_, metadata) = calls.last().expect("the handler saw the command");
    let header = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(header("x-b3-traceid"), trace_id, "HandleCommand carried B3 headers: {metadata:?}");
    assert_eq!(header("x-b3-sampled"), "1");
    assert!(metadata.get("traceparent").is_none(), "b3multi only: {metadata:?}");

    drop(cluster);
    handler.stop().await;
    server.abort();
    pg::drop_schema(&db.schema).await;
}
