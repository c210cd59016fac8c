//! A scriptable read handler: a real tonic `ReadSideHandlerService` on `127.0.0.1:0` that records every
//! `HandleReadSideRequest` with its `x-cos-entity-id` and `x-cos-event-tag` metadata, and answers by a script:
//! a delay per call (to be slow) and a rule that picks the calls to answer `successful = false` or to fail with a
//! status. Also: the YAML of a read-side configuration (`COS_READ_SIDE_CONFIG`) pointing at such handlers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use regent::proto::chief_of_state::v1::read_side_handler_service_server::{
    ReadSideHandlerService, ReadSideHandlerServiceServer,
};
use regent::proto::chief_of_state::v1::{HandleReadSideRequest, HandleReadSideResponse};

/// How the handler answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `successful = true`.
    Ok,
    /// `successful = false`.
    NotSuccessful,
    /// An error status with this code.
    Error(Code),
}

/// One `HandleReadSide` call the handler received.
#[derive(Debug, Clone)]
pub struct ReadCall {
    /// The request's `read_side_id`.
    pub read_side_id: String,
    /// `meta.entity_id` and `meta.revision_number`.
    pub entity_id: String,
    pub revision: u32,
    /// The `x-cos-entity-id` and `x-cos-event-tag` metadata, when present and ASCII.
    pub header_entity_id: Option<String>,
    pub header_event_tag: Option<String>,
    pub request: HandleReadSideRequest,
    /// When the call arrived.
    pub at: Instant,
    /// How the handler answers it.
    pub answer: Answer,
    /// When the handler finished answering (after its delay); `None` while the call is in flight.
    pub answered_at: Option<Instant>,
}

impl ReadCall {
    /// Answered (or being answered) `successful = true`.
    pub fn successful(&self) -> bool {
        self.answer == Answer::Ok
    }

    /// Answered `successful = true`, and the answer is out of the handler (no longer in flight).
    pub fn answered_ok(&self) -> bool {
        self.successful() && self.answered_at.is_some()
    }

    /// The event's value as text (the test write handler's `test.Appended` item).
    pub fn item(&self) -> String {
        String::from_utf8_lossy(&self.request.event.clone().unwrap_or_default().value).into_owned()
    }
}

/// Every call the handler received, oldest first; shared by clones.
#[derive(Debug, Clone, Default)]
pub struct ReadLog(Arc<Mutex<Vec<ReadCall>>>);

impl ReadLog {
    pub fn all(&self) -> Vec<ReadCall> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every call for `read_side_id` (successful or not).
    pub fn calls(&self, read_side_id: &str) -> Vec<ReadCall> {
        self.all().into_iter().filter(|c| c.read_side_id == read_side_id).collect()
    }

    /// The calls for `read_side_id` answered `successful = true`.
    pub fn delivered(&self, read_side_id: &str) -> Vec<ReadCall> {
        self.calls(read_side_id).into_iter().filter(ReadCall::successful).collect()
    }

    /// The revisions of `entity_id` delivered successfully to `read_side_id`, in delivery order.
    pub fn revisions(&self, read_side_id: &str, entity_id: &str) -> Vec<u32> {
        self.delivered(read_side_id).into_iter().filter(|c| c.entity_id == entity_id).map(|c| c.revision).collect()
    }

    /// Every call (attempt) for one event of `read_side_id`.
    pub fn attempts(&self, read_side_id: &str, entity_id: &str, revision: u32) -> Vec<ReadCall> {
        self.calls(read_side_id).into_iter().filter(|c| c.entity_id == entity_id && c.revision == revision).collect()
    }

    /// Whether one event was delivered successfully to `read_side_id`.
    pub fn has_delivered(&self, read_side_id: &str, entity_id: &str, revision: u32) -> bool {
        self.attempts(read_side_id, entity_id, revision).iter().any(ReadCall::successful)
    }
}

type Rule = Arc<dyn Fn(&HandleReadSideRequest) -> Answer + Send + Sync>;

#[derive(Clone, Default)]
struct Script {
    delay: Duration,
    rule: Option<Rule>,
}

#[derive(Clone)]
struct Recorder {
    log: ReadLog,
    script: Arc<Mutex<Script>>,
}

fn ascii(metadata: &tonic::metadata::MetadataMap, key: &str) -> Option<String> {
    metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tonic::async_trait]
impl ReadSideHandlerService for Recorder {
    async fn handle_read_side(
        &self,
        request: Request<HandleReadSideRequest>,
    ) -> Result<Response<HandleReadSideResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let script = self.script.lock().unwrap().clone();
        let answer = script.rule.as_ref().map_or(Answer::Ok, |rule| rule(&body));
        let meta = body.meta.clone().unwrap_or_default();
        let index = {
            let mut log = self.log.0.lock().unwrap();
            log.push(ReadCall {
                read_side_id: body.read_side_id.clone(),
                entity_id: meta.entity_id,
                revision: meta.revision_number,
                header_entity_id: ascii(&metadata, "x-cos-entity-id"),
                header_event_tag: ascii(&metadata, "x-cos-event-tag"),
                request: body,
                at: Instant::now(),
                answer,
                answered_at: None,
            });
            log.len() - 1
        };
        if !script.delay.is_zero() {
            tokio::time::sleep(script.delay).await;
        }
        self.log.0.lock().unwrap()[index].answered_at = Some(Instant::now());
        match answer {
            Answer::Ok => Ok(Response::new(HandleReadSideResponse { successful: true })),
            Answer::NotSuccessful => Ok(Response::new(HandleReadSideResponse { successful: false })),
            Answer::Error(code) => Err(Status::new(code, "the read handler refuses this event")),
        }
    }
}

/// A running read handler.
pub struct ReadHandler {
    addr: SocketAddr,
    pub log: ReadLog,
    script: Arc<Mutex<Script>>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl ReadHandler {
    /// Starts a handler on `127.0.0.1:0` that answers every call `successful = true` at once.
    pub async fn start() -> ReadHandler {
        Self::start_with_tls(None).await
    }

    /// [`start`](Self::start), serving TLS only when `tls` (a PEM certificate chain and its PEM key) is given.
    pub async fn start_with_tls(tls: Option<(String, String)>) -> ReadHandler {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the read handler");
        let addr = listener.local_addr().unwrap();
        let log = ReadLog::default();
        let script = Arc::new(Mutex::new(Script::default()));
        let service = ReadSideHandlerServiceServer::new(Recorder { log: log.clone(), script: script.clone() });
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let tls =
                tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
            builder = builder.tls_config(tls).expect("read handler TLS");
        }
        let task = tokio::spawn(async move {
            builder
                .tcp_nodelay(true)
                .add_service(service)
                // With an incoming stream, the builder's `tcp_nodelay` is ignored: set it on the incoming.
                .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                    let _ = stopped.await;
                })
                .await
                .expect("read handler server failed");
        });
        ReadHandler { addr, log, script, running: Some((stop, task)) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every call waits `delay` before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        self.script.lock().unwrap().delay = delay;
    }

    /// `rule` decides how each call is answered (from now on).
    pub fn set_rule(&self, rule: impl Fn(&HandleReadSideRequest) -> Answer + Send + Sync + 'static) {
        self.script.lock().unwrap().rule = Some(Arc::new(rule));
    }

    /// Answers every call `successful = true` again.
    pub fn clear_rule(&self) {
        self.script.lock().unwrap().rule = None;
    }

    /// Answers `answer` for one event (`entity_id`, `revision`) of `read_side_id`, `Ok` for every other.
    pub fn fail_event(&self, read_side_id: &str, entity_id: &str, revision: u32, answer: Answer) {
        let (id, entity) = (read_side_id.to_string(), entity_id.to_string());
        self.set_rule(move |r| {
            let meta = r.meta.clone().unwrap_or_default();
            if r.read_side_id == id && meta.entity_id == entity && meta.revision_number == revision {
                answer
            } else {
                Answer::Ok
            }
        });
    }

    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// One read side of a [`ReadSidesYaml`].
#[derive(Debug, Clone)]
pub struct ReadSideSpec {
    pub id: String,
    pub port: u16,
    pub failure_policy: &'static str,
    pub auto_start: bool,
    pub timeout_ms: u64,
    /// `useTls`
    pub use_tls: bool,
}

impl ReadSideSpec {
    /// A read side `id` on the handler at `port`: STOP, autoStart, 5 s timeout.
    pub fn new(id: &str, port: u16) -> Self {
        Self { id: id.into(), port, failure_policy: "STOP", auto_start: true, timeout_ms: 5_000, use_tls: false }
    }

    pub fn policy(mut self, policy: &'static str) -> Self {
        self.failure_policy = policy;
        self
    }

    pub fn auto_start(mut self, auto_start: bool) -> Self {
        self.auto_start = auto_start;
        self
    }

    pub fn use_tls(mut self, use_tls: bool) -> Self {
        self.use_tls = use_tls;
        self
    }
}

/// A `COS_READ_SIDE_CONFIG` YAML file (one `---`-separated document per read side), deleted on drop.
pub struct ReadSidesYaml {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ReadSidesYaml {
    pub fn write(read_sides: &[ReadSideSpec]) -> ReadSidesYaml {
        let mut yaml = String::new();
        for r in read_sides {
            let _ = write!(
                yaml,
                "---\nreadSideId: {}\nhost: 127.0.0.1\nport: {}\nuseTls: {}\ntimeout: {}\nautoStart: {}\n\
                 enabled: true\nfailurePolicy: {}\n",
                r.id, r.port, r.use_tls, r.timeout_ms, r.auto_start, r.failure_policy
            );
        }
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("readsides.yaml");
        std::fs::write(&path, yaml).expect("write the read-side YAML");
        ReadSidesYaml { _dir: dir, path }
    }

    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}
