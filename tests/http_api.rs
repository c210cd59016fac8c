//! CoS's HTTP/JSON API (`COS_SERVER_PROTOCOL=both`) against a real node, its write handler and PostgreSQL: the
//! same commands as over gRPC, with CoS's JSON shapes (base64 `Any`s, snake_case, ISO-8601 dates) and its error
//! mapping (400 for a body that is not the request, 500 `{"error": "CODE: description"}` for everything else).
//!
//! Needs `REGENT_TEST_DATABASE_URL`.

mod common;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use prost_types::Any;
use serde_json::{Value, json};

use regent::config::ServerProtocol;
use support::handler::{command, list};
use support::{TestNode, entity};

/// One HTTP/1.1 request to the API; the answer's status and JSON body.
async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP API");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (key, value) in headers {
        request = request.header(*key, *value);
    }
    let request = request.body(Full::new(hyper::body::Bytes::from(body.to_string()))).unwrap();
    let response = sender.send_request(request).await.expect("an HTTP answer");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

fn base64_any(any: &Any) -> String {
    BASE64.encode(any.encode_to_vec())
}

fn any_at(json: &Value, key: &str) -> Any {
    let text = json[key].as_str().unwrap_or_else(|| panic!("no {key} in {json}"));
    Any::decode(BASE64.decode(text).unwrap().as_slice()).unwrap()
}

async fn start() -> (TestNode, SocketAddr) {
    let t = TestNode::start(|c| {
        c.server.protocol = ServerProtocol::Both;
        c.server.http_address = "127.0.0.1".into();
        c.server.http_port = 0;
        c.write_side.persisted_headers = vec!["x-user".into()];
    })
    .await;
    let addr = t.node().http_addr().expect("the HTTP API is served");
    (t, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_state_over_http_use_cos_json() {
    let (t, addr) = start().await;
    let id = entity("http");
    let body = json!({ "entity_id": "ignored: the path wins", "command": base64_any(&command("Append", "a")) });
    let (status, reply) =
        call(addr, "POST", &format!("/v1/commands/{id}/process"), &[("x-user", "alice")], &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(any_at(&reply, "state"), list(&["a"]));
    let meta = &reply["meta"];
    assert_eq!(meta["entity_id"], json!(id));
    assert_eq!(meta["revision_number"], json!(1));
    let date = meta["revision_date"].as_str().expect("an ISO-8601 date");
    assert!(date.ends_with('Z') && date.contains('T'), "{date}");
    assert_eq!(meta["headers"], json!([{ "key": "x-user", "string_value": "alice" }]), "HTTP headers are metadata");
    assert!(meta["data"]["persisted_headers.v1"].is_string(), "meta.data values are base64 Anys: {meta}");

    // The same entity over gRPC and back over HTTP.
    t.process(&id, command("Append", "b")).await.expect("gRPC is served too");
    let (status, state) = call(addr, "GET", &format!("/v1/entities/{id}/state"), &[], "").await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(any_at(&state, "state"), list(&["a", "b"]));
    assert_eq!(state["meta"]["revision_number"], json!(2));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_cos_status_codes_and_messages() {
    let (t, addr) = start().await;
    let id = entity("http-errors");
    let (status, reply) = call(addr, "GET", &format!("/v1/entities/{id}/state"), &[], "").await;
    assert_eq!((status, reply), (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "NOT_FOUND" })));

    let fail = json!({ "command": base64_any(&command("Fail", "3:no such account")) }).to_string();
    let (status, reply) = call(addr, "POST", &format!("/v1/commands/{id}/process"), &[], &fail).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply, json!({ "error": "INVALID_ARGUMENT: no such account" }));

    for bad in ["not json", "[]", r#"{"command": "%%%"}"#, r#"{"command": 7}"#] {
        let (status, reply) = call(addr, "POST", &format!("/v1/commands/{id}/process"), &[], bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {reply}");
        assert!(reply["error"].is_string(), "{bad}: {reply}");
    }
    assert!(t.journal(&id).await.is_empty(), "nothing was persisted");
    t.shutdown().await;
}

/// A write handler speaking CoS's HTTP/JSON: the list model of `support::handler` (`test.Append` appends its
/// value), `test.Fail` answers 400; it records the headers of every handleCommand.
async fn http_handler() -> (SocketAddr, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    use axum::Json;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;

    type Seen = Arc<Mutex<Vec<HeaderMap>>>;
    async fn handle_command(
        State(seen): State<Seen>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        seen.lock().unwrap().push(headers);
        let command = any_at(&body, "command");
        match command.type_url.rsplit('.').next() {
            Some("Append") => {
                let event = support::handler::appended(std::str::from_utf8(&command.value).unwrap());
                Json(json!({ "events": [base64_any(&event)] })).into_response()
            }
            _ => (hyper::StatusCode::BAD_REQUEST, "no such command").into_response(),
        }
    }
    async fn handle_event(Json(body): Json<Value>) -> Json<Value> {
        let event = any_at(&body, "event");
        let mut items: Vec<String> = match body.get("prior_state") {
            Some(_) => String::from_utf8(any_at(&body, "prior_state").value)
                .unwrap()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        items.push(String::from_utf8(event.value).unwrap());
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        Json(json!({ "resulting_state": base64_any(&list(&items)) }))
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/writeside/handleCommand", post(handle_command))
        .route("/v1/writeside/handleEvent", post(handle_event))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// COS_WRITE_SIDE_PROTOCOL=http: commands go to a handler speaking CoS's HTTP/JSON, with the propagated headers as
/// HTTP headers; its non-200 answers are `INTERNAL` with CoS's message, and a handler that is gone `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_handler_over_http() {
    let (handler, seen) = http_handler().await;
    let t = TestNode::start(|c| {
        c.write_side.protocol = regent::config::HandlerProtocol::Http;
        c.write_side.port = handler.port();
        c.write_side.propagated_headers = vec!["x-user".into()];
    })
    .await;
    let id = entity("http-handler");
    for item in ["a", "b"] {
        let mut request = tonic::Request::new(regent::proto::chief_of_state::v1::ProcessCommandRequest {
            entity_id: id.clone(),
            command: Some(command("Append", item)),
        });
        request.metadata_mut().insert("x-user", "alice".parse().unwrap());
        t.process_request(request).await.expect("through the HTTP handler");
    }
    let state = t.get(&id).await.unwrap();
    assert_eq!(state.state, Some(list(&["a", "b"])));
    assert_eq!(state.meta.map(|m| m.revision_number), Some(2));
    let headers = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers.get("x-user").and_then(|v| v.to_str().ok()), Some("alice"), "{headers:?}");
    assert_eq!(seen.lock().unwrap().len(), 2, "one connection reused or not, one call per command");

    let status = t.process(&id, command("Fail", "3:no")).await.expect_err("a 400");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("HTTP command handler request failed with status 400 Bad Request: no such command"),
        "{status:?}"
    );
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_write_handler_that_is_not_there_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = TestNode::start(|c| {
        c.write_side.protocol = regent::config::HandlerProtocol::Http;
        c.write_side.port = closed;
    })
    .await;
    let id = entity("http-gone");
    let status = t.process(&id, command("Append", "a")).await.expect_err("nobody listens");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(t.journal(&id).await.is_empty());
    t.shutdown().await;
}

/// A read side with `protocol: http`: each event is POSTed to `/v1/readside/handle` in CoS's JSON with
/// `x-cos-entity-id` and `x-cos-event-tag`; `{"successful": true}` commits it, `false` leaves it to the failure
/// policy (STOP here: the next event is not sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_side_over_http() {
    use axum::Json;
    use axum::extract::State;
    use axum::http::HeaderMap;

    type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;
    async fn handle(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
        let refuse = body["event"].is_string() && any_at(&body, "event").value == b"refused";
        seen.lock().unwrap().push((headers, body));
        Json(json!({ "successful": !refuse }))
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new().route("/v1/readside/handle", axum::routing::post(handle)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("readsides.yaml");
    std::fs::write(
        &yaml,
        format!("readSideId: web\nprotocol: http\nhost: 127.0.0.1\nport: {port}\nfailurePolicy: STOP\n"),
    )
    .unwrap();
    let t = TestNode::start(|c| {
        c.entities.num_shards = 1;
        c.read_side.enabled = true;
        c.read_side.config = yaml.to_string_lossy().into_owned();
    })
    .await;
    let id = entity("http-read");
    for item in ["a", "b", "refused", "never"] {
        t.process(&id, command("Append", item)).await.unwrap();
    }
    let calls = support::eventually("three deliveries", std::time::Duration::from_secs(20), || {
        let seen = seen.clone();
        async move {
            let calls = seen.lock().unwrap().clone();
            (calls.len() >= 3).then_some(calls)
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "STOP: nothing after the refused event");
    for (k, (headers, body)) in calls.iter().enumerate() {
        assert_eq!(body["read_side_id"], json!("web"));
        assert_eq!(body["meta"]["entity_id"], json!(id));
        assert_eq!(body["meta"]["revision_number"], json!(k + 1));
        assert_eq!(headers.get("x-cos-entity-id").and_then(|v| v.to_str().ok()), Some(id.as_str()));
        assert_eq!(headers.get("x-cos-event-tag").and_then(|v| v.to_str().ok()), Some("0"));
    }
    assert_eq!(any_at(&calls[1].1, "state"), list(&["a", "b"]));
    t.shutdown().await;
}
