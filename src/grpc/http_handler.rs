//! A handler spoken to in CoS's HTTP/JSON (fork HEAD). A write handler (`COS_WRITE_SIDE_PROTOCOL=http`):
//! `HandleCommand` is `POST {base}/v1/writeside/handleCommand` with `{"command", "prior_state",
//! "prior_event_meta"}` and answers `{"event"}` or `{"events": [...]}`; `HandleEvent` is `POST
//! {base}/v1/writeside/handleEvent` with `{"event", "prior_state", "event_meta"}` and answers
//! `{"resulting_state"}`. A read handler (`protocol: http`): `POST {base}/v1/readside/handle` with `{"event",
//! "state", "meta", "read_side_id"}`, answered `{"successful"}`. Every `Any` is the base64 of its serialized
//! bytes and metadata are the JSON of [`super::http`]. The call's metadata (propagated headers, `regent-node`,
//! trace context) are its HTTP headers; a binary one is sent as the base64 gRPC uses for it.
//!
//! As in CoS, an answer other than 200 is `INTERNAL` "HTTP command handler request failed with status ..."; a
//! handler that cannot be reached is `UNAVAILABLE`. HTTP/1.1 connections are kept alive and reused.

use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tonic::Status;
use tracing::debug;

use super::h2_channel::Target;
use super::http::{any_of, base64_of, meta_json};
use crate::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse, HandleReadSideRequest,
    HandleReadSideResponse,
};

/// Idle connections kept for reuse.
const IDLE_CONNECTIONS: usize = 64;

/// The handler's base URL and a pool of HTTP/1.1 connections to it.
pub struct HttpHandler {
    target: Target,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpHandler {
    pub fn new(target: Target) -> Self {
        Self { target, idle: Mutex::new(Vec::new()) }
    }

    pub async fn handle_command(
        &self,
        request: tonic::Request<HandleCommandRequest>,
    ) -> Result<tonic::Response<HandleCommandResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let json = json_body(
            &[("command", body.command.as_ref()), ("prior_state", body.prior_state.as_ref())],
            ("prior_event_meta", body.prior_event_meta.as_ref()),
        );
        let reply = self.post("/v1/writeside/handleCommand", "command", metadata, json).await?;
        // The deprecated single `event` is still part of the contract (the entity reads it when `events` is empty).
        #[allow(deprecated)]
        let mut response = HandleCommandResponse { event: optional_any(&reply, "event")?, events: Vec::new() };
        if let Some(Value::Array(events)) = reply.get("events") {
            for event in events {
                let text = event.as_str().ok_or_else(|| bad_reply("command", "events must be base64 strings"))?;
                response.events.push(any_of(text).map_err(|e| bad_reply("command", &e))?);
            }
        }
        Ok(tonic::Response::new(response))
    }

    pub async fn handle_event(
        &self,
        request: tonic::Request<HandleEventRequest>,
    ) -> Result<tonic::Response<HandleEventResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let json = json_body(
            &[("event", body.event.as_ref()), ("prior_state", body.prior_state.as_ref())],
            ("event_meta", body.event_meta.as_ref()),
        );
        let reply = self.post("/v1/writeside/handleEvent", "event", metadata, json).await?;
        Ok(tonic::Response::new(HandleEventResponse { resulting_state: optional_any(&reply, "resulting_state")? }))
    }

    /// A read handler's `POST {base}/v1/readside/handle` (`{"event", "state", "meta", "read_side_id"}` →
    /// `{"successful"}`), with `x-cos-entity-id` and `x-cos-event-tag` among the request's metadata.
    pub async fn handle_read_side(
        &self,
        request: tonic::Request<HandleReadSideRequest>,
    ) -> Result<tonic::Response<HandleReadSideResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let mut json =
            json_body(&[("event", body.event.as_ref()), ("state", body.state.as_ref())], ("meta", body.meta.as_ref()));
        json.insert("read_side_id".into(), Value::String(body.read_side_id));
        let reply = self.post("/v1/readside/handle", "read-side", metadata, json).await?;
        let successful = reply.get("successful").and_then(Value::as_bool).unwrap_or(false);
        Ok(tonic::Response::new(HandleReadSideResponse { successful }))
    }

    /// POSTs `json` to `path` with `metadata` as headers; the answer's JSON object. `what` (`command`, `event`)
    /// names the handler in errors, as CoS does.
    async fn post(
        &self,
        path: &str,
        what: &str,
        metadata: tonic::metadata::MetadataMap,
        json: Map<String, Value>,
    ) -> Result<Map<String, Value>, Status> {
        let mut request = Request::post(path)
            .header(header::HOST, self.target.authority())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(Value::Object(json).to_string())))
            .map_err(|e| Status::internal(format!("HTTP {what} handler request: {e}")))?;
        for (key, value) in metadata.into_headers().iter() {
            if key != header::CONTENT_TYPE && key != header::HOST && key.as_str() != "grpc-timeout" {
                request.headers_mut().append(key, value.clone());
            }
        }
        let mut sender = self.sender().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Status::unavailable(format!("HTTP {what} handler at {} failed: {e}", self.target.origin)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(format!("HTTP {what} handler at {} failed: {e}", self.target.origin)))?
            .to_bytes();
        self.give_back(sender);
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(200).collect();
            return Err(Status::internal(format!("HTTP {what} handler request failed with status {status}: {text}")));
        }
        match serde_json::from_slice(&body) {
            Ok(Value::Object(reply)) => Ok(reply),
            Ok(_) => Err(bad_reply(what, "not a JSON object")),
            Err(e) => Err(bad_reply(what, &e.to_string())),
        }
    }

    /// An idle connection that is still open, or a new one.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, Status> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let io = self.target.connect_stream().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Status::unavailable(format!("HTTP handler at {} is unreachable: {e}", self.target.origin)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "HTTP handler connection ended");
            }
        });
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_CONNECTIONS && !sender.is_closed() {
            idle.push(sender);
        }
    }
}

/// A request's JSON, as CoS writes it: each `Any` that is set (base64), and the metadata under its key.
fn json_body(
    anys: &[(&str, Option<&prost_types::Any>)],
    (meta_key, meta): (&str, Option<&crate::proto::chief_of_state::v1::MetaData>),
) -> Map<String, Value> {
    let mut json = Map::new();
    for (key, any) in anys {
        if let Some(any) = any.filter(|a| **a != prost_types::Any::default()) {
            json.insert((*key).into(), base64_of(any));
        }
    }
    if let Some(meta) = meta {
        json.insert(meta_key.into(), meta_json(meta));
    }
    json
}

fn optional_any(reply: &Map<String, Value>, key: &str) -> Result<Option<prost_types::Any>, Status> {
    match reply.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => any_of(text).map(Some).map_err(|e| bad_reply(key, &e)),
        Some(_) => Err(bad_reply(key, "must be a base64 string")),
    }
}

fn bad_reply(what: &str, message: &str) -> Status {
    Status::internal(format!("HTTP {what} handler answered something other than CoS's JSON: {message}"))
}
