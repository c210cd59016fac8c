//! A scriptable write handler: a real tonic `WriteSideHandlerService` on `127.0.0.1:0` whose behaviour is chosen by
//! each command's type URL (`type.googleapis.com/test.<Action>`) and plain UTF-8 arguments in its value.
//!
//! The model is a list: the state is `test.List` whose value is the comma-separated items appended so far, and
//! `test.Appended` (value = one item) appends one item. Commands:
//!
//! | command | HandleCommand answers |
//! |---|---|
//! | `test.Append` `a,b,c` | one `test.Appended` per item, in `events` |
//! | `test.Legacy` `a` | one `test.Appended` in the deprecated `event` field only |
//! | `test.Both` `a` | `event` = `test.Appended` "ignored", `events` = [`test.Appended` a] |
//! | `test.WithEmpty` `a` | `events` = [empty Any, `test.Appended` a, empty Any] |
//! | `test.Noop` | no event |
//! | `test.Sleep` `ms` | sleeps, then one `test.Appended` "slept" (logs [`Call::SleepDone`] when it wakes) |
//! | `test.Fail` `code:message` | a status with that code and message, [`fail_details`] and trailer [`TRAILER_KEY`] |
//! | `test.Emit` `type_url` | one event of that type URL, value "x" |
//! | `test.BadEvent` | one `test.Unlisted` event, value "unlisted" |
//! | `test.BadState` | one `test.Appended` "!badstate": HandleEvent answers a `test.Unlisted` state |
//! | `test.EmptyState` | one `test.Appended` "!nostate": HandleEvent answers no state |
//! | `test.FailEvent` | one `test.Appended` "!fail": HandleEvent answers `FAILED_PRECONDITION` |
//! | `test.EchoHeaders` | one `test.Appended` "headers" (the metadata is logged as for every call) |
//! | `test.Big` `n` | one `test.Appended` of `n` bytes (`z`s): a reply as large as asked |
//! | anything else | `INVALID_ARGUMENT "unknown command type ..."` |
//!
//! HandleEvent appends the event's value to the prior list for any event type except the `!` items above. Every
//! request is logged with its metadata, so tests can check what the handler saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_types::Any;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use regent::proto::chief_of_state::v1::write_side_handler_service_server::{
    WriteSideHandlerService, WriteSideHandlerServiceServer,
};
use regent::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};

pub const TYPE_PREFIX: &str = "type.googleapis.com/";
pub const LIST_TYPE: &str = "type.googleapis.com/test.List";
pub const APPENDED_TYPE: &str = "type.googleapis.com/test.Appended";
pub const UNLISTED_TYPE: &str = "type.googleapis.com/test.Unlisted";
pub const EMPTY_TYPE: &str = "type.googleapis.com/google.protobuf.Empty";
/// The custom trailer `test.Fail` sets.
pub const TRAILER_KEY: &str = "x-handler-trailer";
pub const TRAILER_VALUE: &str = "trailer-from-handler";

/// A `google.rpc.Status`, to fill `grpc-status-details-bin` the way rich-error handlers do.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// The details bytes `test.Fail` answers with for `code` and `message`.
pub fn fail_details(code: i32, message: &str) -> Vec<u8> {
    use prost::Message as _;
    RpcStatus {
        code,
        message: message.to_string(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: b"\x0a\x07\x0a\x05field".to_vec(),
        }],
    }
    .encode_to_vec()
}

/// A command for the test handler: `type.googleapis.com/test.<action>` with `args` as its value.
pub fn command(action: &str, args: &str) -> Any {
    Any { type_url: format!("{TYPE_PREFIX}test.{action}"), value: args.as_bytes().to_vec() }
}

/// A `test.List` state holding `items`.
pub fn list(items: &[&str]) -> Any {
    Any { type_url: LIST_TYPE.into(), value: items.join(",").into_bytes() }
}

/// A `test.Appended` event.
pub fn appended(item: &str) -> Any {
    Any { type_url: APPENDED_TYPE.into(), value: item.as_bytes().to_vec() }
}

/// One request the handler received.
#[derive(Debug, Clone)]
pub enum Call {
    Command {
        request: HandleCommandRequest,
        metadata: MetadataMap,
    },
    Event {
        request: HandleEventRequest,
        metadata: MetadataMap,
    },
    /// A `test.Sleep` command finished sleeping (its answer is being sent).
    SleepDone,
}

/// What the handler received, shared by every incarnation of one [`TestHandler`].
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<Call>>>);

impl CallLog {
    fn push(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }

    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// The HandleCommand requests (with their metadata) received for `entity_id`, oldest first.
    pub fn commands(&self, entity_id: &str) -> Vec<(HandleCommandRequest, MetadataMap)> {
        self.all()
            .into_iter()
            .filter_map(|c| match c {
                Call::Command { request, metadata }
                    if request.prior_event_meta.as_ref().is_some_and(|m| m.entity_id == entity_id) =>
                {
                    Some((request, metadata))
                }
                _ => None,
            })
            .collect()
    }

    /// The HandleEvent requests (with their metadata) received for `entity_id`, oldest first.
    pub fn events(&self, entity_id: &str) -> Vec<(HandleEventRequest, MetadataMap)> {
        self.all()
            .into_iter()
            .filter_map(|c| match c {
                Call::Event { request, metadata }
                    if request.event_meta.as_ref().is_some_and(|m| m.entity_id == entity_id) =>
                {
                    Some((request, metadata))
                }
                _ => None,
            })
            .collect()
    }

    pub fn sleeps_done(&self) -> usize {
        self.all().iter().filter(|c| matches!(c, Call::SleepDone)).count()
    }
}

#[derive(Clone)]
struct Scripted {
    log: CallLog,
}

fn args_of(any: &Any) -> Result<String, Status> {
    String::from_utf8(any.value.clone()).map_err(|_| Status::invalid_argument("command arguments are not UTF-8"))
}

#[tonic::async_trait]
impl WriteSideHandlerService for Scripted {
    async fn handle_command(
        &self,
        request: Request<HandleCommandRequest>,
    ) -> Result<Response<HandleCommandResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.log.push(Call::Command { request: body.clone(), metadata });
        let command = body.command.unwrap_or_default();
        let action = command.type_url.strip_prefix(TYPE_PREFIX).and_then(|t| t.strip_prefix("test."));
        let events_of = |events: Vec<Any>| {
            #[allow(deprecated)]
            Ok(Response::new(HandleCommandResponse { event: None, events }))
        };
        match action {
            Some("Append") => {
                let args = args_of(&command)?;
                events_of(args.split(',').map(appended).collect())
            }
            #[allow(deprecated)]
            Some("Legacy") => {
                Ok(Response::new(HandleCommandResponse { event: Some(appended(&args_of(&command)?)), events: vec![] }))
            }
            #[allow(deprecated)]
            Some("Both") => Ok(Response::new(HandleCommandResponse {
                event: Some(appended("ignored")),
                events: vec![appended(&args_of(&command)?)],
            })),
            Some("WithEmpty") => events_of(vec![Any::default(), appended(&args_of(&command)?), Any::default()]),
            Some("Noop") => events_of(vec![]),
            Some("Sleep") => {
                let ms: u64 = args_of(&command)?.parse().map_err(|_| Status::invalid_argument("sleep wants ms"))?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.log.push(Call::SleepDone);
                events_of(vec![appended("slept")])
            }
            Some("Fail") => {
                let args = args_of(&command)?;
                let (code, message) = args.split_once(':').unwrap_or((args.as_str(), "handler says no"));
                let code = Code::from_i32(code.parse().map_err(|_| Status::invalid_argument("bad code"))?);
                let mut trailers = MetadataMap::new();
                trailers.insert(TRAILER_KEY, MetadataValue::from_static(TRAILER_VALUE));
                Err(Status::with_details_and_metadata(
                    code,
                    message,
                    fail_details(code as i32, message).into(),
                    trailers,
                ))
            }
            Some("Emit") => events_of(vec![Any { type_url: args_of(&command)?, value: b"x".to_vec() }]),
            Some("BadEvent") => events_of(vec![Any { type_url: UNLISTED_TYPE.into(), value: b"unlisted".to_vec() }]),
            Some("BadState") => events_of(vec![appended("!badstate")]),
            Some("EmptyState") => events_of(vec![appended("!nostate")]),
            Some("FailEvent") => events_of(vec![appended("!fail")]),
            Some("EchoHeaders") => events_of(vec![appended("headers")]),
            Some("Big") => {
                let n: usize = args_of(&command)?.parse().map_err(|_| Status::invalid_argument("big wants bytes"))?;
                events_of(vec![appended(&"z".repeat(n))])
            }
            _ => Err(Status::invalid_argument(format!("unknown command type {:?}", command.type_url))),
        }
    }

    async fn handle_event(
        &self,
        request: Request<HandleEventRequest>,
    ) -> Result<Response<HandleEventResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.log.push(Call::Event { request: body.clone(), metadata });
        let event = body.event.unwrap_or_default();
        let item = String::from_utf8_lossy(&event.value).into_owned();
        let state = match item.as_str() {
            "!nostate" => None,
            "!badstate" => Some(Any { type_url: UNLISTED_TYPE.into(), value: b"bad".to_vec() }),
            "!fail" => return Err(Status::failed_precondition("event handler refuses this event")),
            _ => {
                let prior = body.prior_state.unwrap_or_default();
                let prior = if prior.type_url == LIST_TYPE {
                    String::from_utf8_lossy(&prior.value).into_owned()
                } else {
                    String::new()
                };
                let next = if prior.is_empty() { item } else { format!("{prior},{item}") };
                Some(Any { type_url: LIST_TYPE.into(), value: next.into_bytes() })
            }
        };
        Ok(Response::new(HandleEventResponse { resulting_state: state }))
    }
}

/// A running test handler. [`TestHandler::stop`] takes it down (the node then sees `UNAVAILABLE`);
/// [`TestHandler::restart`] brings it back on the same port, with the same log.
pub struct TestHandler {
    addr: SocketAddr,
    pub log: CallLog,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestHandler {
    /// Starts a handler on `127.0.0.1:0`.
    pub async fn start() -> TestHandler {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test handler");
        let mut handler = TestHandler { addr: listener.local_addr().unwrap(), log: CallLog::default(), running: None };
        handler.serve(listener);
        handler
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = WriteSideHandlerServiceServer::new(Scripted { log: self.log.clone() })
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .expect("test handler server failed");
        });
        self.running = Some((stop, task));
    }

    /// Stops serving and closes its connections; returns once the port is closed.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the test handler did not stop within 10 s")
                .expect("test handler task panicked");
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart of a running handler");
        let listener = TcpListener::bind(self.addr).await.expect("re-bind the test handler's port");
        self.serve(listener);
    }
}
