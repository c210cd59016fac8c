//! CoS's HTTP/JSON API (`COS_SERVER_PROTOCOL=both`) against a real node, its write handler and PostgreSQL: the
//! same commands as over gRPC, with CoS's JSON shapes (base64 `Any`s, snake_case, ISO-8601 dates) and its error
//! mapping (400 for a body that is not the request, 500 `{"error": "CODE: description"}` for everything else).
//!
//! Needs `REGENT_TEST_DATABASE_URL`.

mod common;
mod support;

use std::net::SocketAddr;

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
