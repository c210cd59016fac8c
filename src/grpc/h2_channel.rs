//! The HTTP/2 transport under the write handler's tonic client: each call is put on a shared HTTP/2 connection by
//! the calling task itself.
//!
//! tonic's own `Channel` passes every call through a buffer task, and hyper's HTTP/2 client then spawns a task per
//! call for the response and another one for the request body, which it writes after the headers: three
//! task hand-offs and three socket writes (HEADERS, DATA, an empty end-of-stream DATA) per call, on the node's hot
//! path twice per command (docs/performance.md). Here tonic still encodes, decodes, applies the message size limits
//! and maps statuses ([`tonic::client::Grpc`]); this service only moves the bytes: the request body (one encoded
//! message, ready at once) is collected and queued with its headers as one HEADERS + DATA(end of stream) pair on
//! the [`h2`] connection, whose single task writes everything queued in one go, and the response is read from the
//! caller's task.
//!
//! A channel holds one connection, opened on the first call (lazily, like tonic's `connect_lazy`) and again after
//! the connection ends; a call that cannot get a connection fails with `UNAVAILABLE`. With a [`Keepalive`]
//! (`COS_GRPC_KEEPALIVE_*`) the connection's task PINGs the handler every interval and closes the connection when a
//! PING goes unanswered: its calls fail with `UNAVAILABLE` at once rather than at their deadline, and the next
//! call connects again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Status;
use tracing::{debug, warn};

use crate::config::Keepalive;

/// The windows hyper's HTTP/2 client advertises (what tonic's `Channel` used): a 4 MiB reply is not throttled.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The longest a handler connection may take to open, however long its calls may take.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a channel connects, and how.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`: the origin tonic puts on every request.
    pub origin: Uri,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    keepalive: Option<Keepalive>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("origin", &self.origin).field("tls", &self.tls.is_some()).finish()
    }
}

impl Target {
    /// `url` is `http://host[:port]` or `https://host[:port]` (then `tls` is required).
    pub fn new(url: &str, tls: Option<TlsConnector>, connect_timeout: Duration) -> Result<Self, String> {
        let origin: Uri = url.parse().map_err(|e| format!("bad handler URL {url}: {e}"))?;
        let https = match origin.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(format!("bad handler URL {url}: the scheme must be http or https")),
        };
        if https != tls.is_some() {
            return Err(format!("bad handler URL {url}: TLS settings do not match the scheme"));
        }
        let authority: &Authority = origin.authority().ok_or_else(|| format!("bad handler URL {url}: no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { origin, host, port, tls, connect_timeout, keepalive: None })
    }

    /// The target of a handler at `url` (checked against `ca_file`, or the system's roots, when `https`; ALPN
    /// offering `alpn`), connecting within `call_timeout` but never more than 10 s. `ca_key` and `host_key` name
    /// the settings in errors.
    pub fn for_handler(
        url: &str,
        (ca_key, ca_file): (&'static str, &str),
        host_key: &'static str,
        alpn: &[u8],
        call_timeout: Duration,
    ) -> Result<Self, crate::tls::Error> {
        let tls = crate::tls::handler_connector(url, ca_key, ca_file, alpn)?;
        Self::new(url, tls, call_timeout.min(MAX_CONNECT_TIMEOUT))
            .map_err(|message| crate::tls::Error::Config { key: host_key, message })
    }

    /// PINGs each connection as `keepalive` says.
    pub fn with_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `host:port`, as a `Host` header names the target.
    pub fn authority(&self) -> String {
        self.origin.authority().map(|a| a.to_string()).unwrap_or_default()
    }

    /// Opens a TCP connection (and the TLS session, with `https`) within the connect timeout; a failure is
    /// `UNAVAILABLE`.
    pub async fn connect_stream(&self) -> Result<Pin<Box<dyn Stream>>, Status> {
        let unreachable =
            |e: &dyn std::fmt::Display| Status::unavailable(format!("handler at {} is unreachable: {e}", self.origin));
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| unreachable(&e))?;
            tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
            match &self.tls {
                None => Ok(Box::pin(tcp) as Pin<Box<dyn Stream>>),
                Some(tls) => {
                    let io =
                        tls.connect(crate::tls::server_name_of(&self.host), tcp).await.map_err(|e| unreachable(&e))?;
                    Ok(Box::pin(io) as Pin<Box<dyn Stream>>)
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connect).await.map_err(|_| {
            Status::unavailable(format!(
                "handler at {} did not accept a connection within {} ms",
                self.origin,
                self.connect_timeout.as_millis()
            ))
        })?
    }
}

/// A connection to a handler, plain or TLS.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> Stream for T {}

/// A tower service sending tonic's requests over one lazily opened HTTP/2 connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct H2Channel {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    target: Target,
    connection: tokio::sync::Mutex<Connection>,
    /// Calls in flight (until their response body is dropped), for a keepalive that PINGs only under calls.
    calls: Arc<AtomicUsize>,
}

/// The open connection, if any, and the number of the latest one, which tells it from its successors.
#[derive(Debug, Default)]
struct Connection {
    generation: u64,
    sender: Option<h2::client::SendRequest<Bytes>>,
}

impl H2Channel {
    /// Connects on the first call.
    pub fn lazy(target: Target) -> Self {
        Self { shared: Arc::new(Shared { target, connection: Default::default(), calls: Default::default() }) }
    }
}

impl tower_service::Service<Request<tonic::body::Body>> for H2Channel {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Readiness (the peer's stream limit) is awaited per call, on the connection it goes to.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.send(request).await })
    }
}

impl Shared {
    async fn send(self: Arc<Self>, request: Request<tonic::body::Body>) -> Result<Response<ResponseBody>, Status> {
        let (parts, body) = request.into_parts();
        // A unary request's body is one encoded message, produced without waiting; an encoding failure (a message
        // over `max_message_bytes`) is already the status to return.
        let body = body.collect().await?.to_bytes();
        let call = InFlight::start(&self.calls);
        // A connection that ended since its last call (the handler restarted, or closed it when idle) is noticed
        // here, before anything is sent, so the call can go to a new connection at once.
        let mut retried = false;
        let (generation, mut sender) = loop {
            let (generation, sender) = self.sender().await?;
            match sender.ready().await {
                Ok(sender) => break (generation, sender),
                Err(e) => {
                    let status = self.broken(generation, &e).await;
                    if retried {
                        return Err(status);
                    }
                    retried = true;
                }
            }
        };
        let (response, mut stream) = match sender.send_request(Request::from_parts(parts, ()), false) {
            Ok(sent) => sent,
            Err(e) => return Err(self.broken(generation, &e).await),
        };
        // Queued with the headers: both leave in the connection task's next write. Data beyond the handler's flow
        // control window (a message of megabytes) is buffered by h2 and sent as the window opens.
        stream.send_data(body, true).map_err(|e| status_of(&self.target, &e))?;
        let response = match response.await {
            Ok(response) => response,
            Err(e) if e.is_io() || e.is_go_away() => return Err(self.broken(generation, &e).await),
            Err(e) => return Err(status_of(&self.target, &e)),
        };
        Ok(response.map(|recv| ResponseBody { recv, trailers_done: false, _call: call }))
    }

    /// The current connection's request handle, connecting first when there is none.
    async fn sender(self: &Arc<Self>) -> Result<(u64, h2::client::SendRequest<Bytes>), Status> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = &connection.sender {
            return Ok((connection.generation, sender.clone()));
        }
        let (sender, mut driver) = self.connect().await?;
        connection.generation += 1;
        connection.sender = Some(sender.clone());
        let generation = connection.generation;
        // The connection's task: drives every stream on it, and PINGs it with a keepalive; when it ends (or a PING
        // goes unanswered, which drops the connection and fails its calls), the next call connects again.
        let keepalive = self.target.keepalive.zip(driver.ping_pong());
        let (calls, origin) = (self.calls.clone(), self.target.origin.clone());
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            let ended = match keepalive {
                None => (&mut driver.connection).await,
                Some((keepalive, ping_pong)) => tokio::select! {
                    ended = &mut driver.connection => ended,
                    silence = keep_alive(ping_pong, keepalive, calls) => {
                        warn!(handler = %origin, "closing the write handler connection: {silence}");
                        Ok(())
                    }
                },
            };
            drop(driver);
            if let Err(e) = ended {
                debug!(error = %e, "write handler connection ended");
            }
            if let Some(shared) = shared.upgrade() {
                shared.forget(generation).await;
            }
        });
        Ok((generation, sender))
    }

    async fn connect(&self) -> Result<(h2::client::SendRequest<Bytes>, Driver), Status> {
        let io = self.target.connect_stream().await?;
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(STREAM_WINDOW).initial_connection_window_size(CONNECTION_WINDOW);
        let (sender, mut connection) = builder
            .handshake(io)
            .await
            .map_err(|e| Status::unavailable(format!("write handler at {} is unreachable: {e}", self.target.origin)))?;
        let ping_pong = connection.ping_pong();
        Ok((sender, Driver { connection: Box::pin(connection), ping_pong }))
    }

    /// The connection failed under a call: the next call opens a new one.
    async fn broken(&self, generation: u64, error: &h2::Error) -> Status {
        self.forget(generation).await;
        status_of(&self.target, error)
    }

    /// Drops connection `generation` unless a newer one has replaced it already.
    async fn forget(&self, generation: u64) {
        let mut connection = self.connection.lock().await;
        if connection.generation == generation {
            connection.sender = None;
        }
    }
}

/// A connection's future (it drives every stream; dropping it closes the connection and fails its streams) and
/// its PING handle.
struct Driver {
    connection: Pin<Box<dyn Future<Output = Result<(), h2::Error>> + Send>>,
    ping_pong: Option<h2::PingPong>,
}

impl Driver {
    fn ping_pong(&mut self) -> Option<h2::PingPong> {
        self.ping_pong.take()
    }
}

/// PINGs every `keepalive.interval` (skipping idle moments unless `while_idle`); returns why the connection should
/// close: a PING unanswered within `keepalive.timeout`, or the connection failing under it.
async fn keep_alive(mut ping_pong: h2::PingPong, keepalive: Keepalive, calls: Arc<AtomicUsize>) -> String {
    let mut ticks = tokio::time::interval(keepalive.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    loop {
        ticks.tick().await;
        if !keepalive.while_idle && calls.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(keepalive.timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no PING acknowledgement within {} ms", keepalive.timeout.as_millis()),
        }
    }
}

/// One call in flight, from its request until its response body is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(calls: &Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Ordering::Relaxed);
        Self(calls.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transport failure as the status tonic's `Channel` would give: `UNAVAILABLE` unless the peer said otherwise.
fn status_of(target: &Target, error: &h2::Error) -> Status {
    match error.reason() {
        Some(h2::Reason::CANCEL) if error.is_remote() => {
            Status::cancelled(format!("write handler at {} cancelled the call", target.origin))
        }
        Some(h2::Reason::ENHANCE_YOUR_CALM) => {
            Status::resource_exhausted(format!("write handler at {}: {error}", target.origin))
        }
        _ => Status::unavailable(format!("write handler at {}: {error}", target.origin)),
    }
}

/// A response body read straight from the h2 stream; the window is given back as data is read.
pub struct ResponseBody {
    recv: h2::RecvStream,
    trailers_done: bool,
    _call: InFlight,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.trailers_done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.recv.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {}
        }
        let trailers = std::task::ready!(self.recv.poll_trailers(cx));
        self.trailers_done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_done || self.recv.is_end_stream()
    }
}
