//! CoS's HTTP/JSON API (fork HEAD, `COS_SERVER_PROTOCOL=http|both`), served beside the gRPC port on
//! `COS_HTTP_ADDRESS:COS_HTTP_PORT` by the same [`ChiefOfState`] service:
//!
//! - `POST /v1/commands/{entityId}/process`, body `{"entity_id", "command"}` (the path's id wins);
//! - `GET /v1/entities/{entityId}/state`;
//! - both answer `{"state", "meta"}`.
//!
//! As in CoS: every `Any` (command, state, `meta.data` values) is the base64 of its serialized bytes; keys are
//! snake_case; `meta.revision_date` is ISO-8601 (`2026-12-05T02:13:00.5Z`); a header in `meta.headers` is
//! `{"key", "string_value"}` or `{"key", "bytes_value"}` (base64). The request's HTTP headers become its gRPC
//! metadata, so propagated and persisted headers and trace context work as over gRPC. A body that is not such JSON
//! is `400 {"error"}`; every other failure, `NOT_FOUND` included, is `500 {"error": "CODE: description"}` (the
//! message grpc-java gives CoS).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message as _;
use prost_types::Any;
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataMap;

use super::ChiefOfState;
use crate::proto::chief_of_state::v1::chief_of_state_service_server::ChiefOfStateService as _;
use crate::proto::chief_of_state::v1::{GetStateRequest, MetaData, ProcessCommandRequest, header};

/// The API's routes over `service`; bodies up to `max_message_bytes` of protobuf (in base64).
pub fn router(service: ChiefOfState, max_message_bytes: usize) -> Router {
    Router::new()
        .route("/v1/commands/{entity_id}/process", post(process_command))
        .route("/v1/entities/{entity_id}/state", get(get_state))
        .layer(DefaultBodyLimit::max(max_message_bytes / 3 * 4 + 64 * 1024))
        .with_state(service)
}

async fn process_command(
    State(service): State<ChiefOfState>,
    Path(entity_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let command = match command_of(&body) {
        Ok(command) => command,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut request = tonic::Request::new(ProcessCommandRequest { entity_id, command });
    *request.metadata_mut() = MetadataMap::from_headers(headers);
    match service.process_command(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Json(state_json(reply.state, reply.meta)).into_response()
        }
        Err(status) => failure(&status),
    }
}

async fn get_state(State(service): State<ChiefOfState>, Path(entity_id): Path<String>, headers: HeaderMap) -> Response {
    let mut request = tonic::Request::new(GetStateRequest { entity_id });
    *request.metadata_mut() = MetadataMap::from_headers(headers);
    match service.get_state(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Json(state_json(reply.state, reply.meta)).into_response()
        }
        Err(status) => failure(&status),
    }
}

/// The `command` of a `ProcessCommandRequest` body (absent or null: none).
fn command_of(body: &[u8]) -> Result<Option<Any>, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(root) = root else { return Err("the body is not a JSON object".into()) };
    match root.get("command") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => any_of(text).map(Some),
        Some(_) => Err("command must be a base64 string of a serialized google.protobuf.Any".into()),
    }
}

pub(crate) fn any_of(text: &str) -> Result<Any, String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| format!("Failed to decode base64 Any: {e}"))?;
    Any::decode(bytes.as_slice()).map_err(|e| format!("Failed to decode base64 Any: {e}"))
}

pub(crate) fn base64_of(any: &Any) -> Value {
    Value::String(BASE64.encode(any.encode_to_vec()))
}

/// `{"state", "meta"}`, leaving out what is absent (an empty `Any` included), as CoS does.
fn state_json(state: Option<Any>, meta: Option<MetaData>) -> Value {
    let mut out = Map::new();
    if let Some(state) = state.filter(|s| *s != Any::default()) {
        out.insert("state".into(), base64_of(&state));
    }
    if let Some(meta) = meta {
        out.insert("meta".into(), meta_json(&meta));
    }
    Value::Object(out)
}

pub(crate) fn meta_json(meta: &MetaData) -> Value {
    let mut out = Map::new();
    if !meta.entity_id.is_empty() {
        out.insert("entity_id".into(), json!(meta.entity_id));
    }
    if meta.revision_number != 0 {
        out.insert("revision_number".into(), json!(meta.revision_number));
    }
    if let Some(date) = meta.revision_date.as_ref().and_then(iso_8601) {
        out.insert("revision_date".into(), json!(date));
    }
    if !meta.data.is_empty() {
        let data: Map<String, Value> = meta.data.iter().map(|(k, v)| (k.clone(), base64_of(v))).collect();
        out.insert("data".into(), Value::Object(data));
    }
    if !meta.headers.is_empty() {
        let headers = meta
            .headers
            .iter()
            .map(|h| match &h.value {
                Some(header::Value::StringValue(v)) => json!({"key": h.key, "string_value": v}),
                Some(header::Value::BytesValue(v)) => json!({"key": h.key, "bytes_value": BASE64.encode(v)}),
                None => json!({"key": h.key}),
            })
            .collect();
        out.insert("headers".into(), Value::Array(headers));
    }
    Value::Object(out)
}

/// As Java's `Instant.toString`: UTC, `Z`, fractions in groups of three digits, none when whole.
fn iso_8601(ts: &prost_types::Timestamp) -> Option<String> {
    let time = chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)?;
    Some(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn failure(status: &tonic::Status) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, &grpc_java_message(status))
}

/// What grpc-java's `StatusException.getMessage` says: `NOT_FOUND`, or `INVALID_ARGUMENT: empty entity ID`.
fn grpc_java_message(status: &tonic::Status) -> String {
    let name = format!("{:?}", status.code());
    let mut code = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            code.push('_');
        }
        code.push(c.to_ascii_uppercase());
    }
    if status.message().is_empty() { code } else { format!("{code}: {}", status.message()) }
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_grpc_java_writes_them() {
        assert_eq!(grpc_java_message(&tonic::Status::not_found("")), "NOT_FOUND");
        assert_eq!(
            grpc_java_message(&tonic::Status::invalid_argument("empty entity ID")),
            "INVALID_ARGUMENT: empty entity ID"
        );
        assert_eq!(grpc_java_message(&tonic::Status::deadline_exceeded("late")), "DEADLINE_EXCEEDED: late");
    }

    #[test]
    fn dates_read_as_java_instants() {
        let at = |seconds, nanos| iso_8601(&prost_types::Timestamp { seconds, nanos }).unwrap();
        assert_eq!(at(1_764_900_780, 0), "2025-12-05T02:13:00Z");
        assert_eq!(at(1_764_900_780, 500_000_000), "2025-12-05T02:13:00.500Z");
        assert_eq!(at(1_764_900_780, 123_456), "2025-12-05T02:13:00.000123456Z");
    }

    #[test]
    fn bodies_that_are_not_the_request_are_refused() {
        assert!(command_of(b"{}").unwrap().is_none());
        assert!(command_of(br#"{"command": null}"#).unwrap().is_none());
        let any = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2] };
        let body = json!({"entity_id": "a", "command": BASE64.encode(any.encode_to_vec())}).to_string();
        assert_eq!(command_of(body.as_bytes()).unwrap(), Some(any));
        for bad in [&b"nope"[..], b"[]", br#"{"command": 3}"#, br#"{"command": "%%%"}"#] {
            assert!(command_of(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
