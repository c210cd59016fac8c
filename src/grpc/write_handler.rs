//! The client side of the application's `WriteSideHandlerService`: tonic clients over a round-robin set of lazily
//! connected HTTP/2 connections ([`H2Channel`], `COS_GRPC_CLIENT_POOL_SIZE` of them), each call bounded by
//! `COS_GRPC_CALLS_TIMEOUT`, and, when `COS_WRITE_SIDE_BREAKER_ENABLED`, by one circuit breaker for the node
//! ([`CircuitBreaker`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::breaker::CircuitBreaker;
use super::h2_channel::{H2Channel, Target};
use super::http_handler::HttpHandler;
use crate::proto::chief_of_state::v1::write_side_handler_service_client::WriteSideHandlerServiceClient;
use crate::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};
use crate::write_side::WriteSide;

/// A cheap, cloneable handle on the write handler.
#[derive(Clone)]
pub struct WriteHandler {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    timeout: Duration,
    /// Sent as `regent-node` on every call, so that a handler (or a test) knows which node called.
    node: Option<tonic::metadata::AsciiMetadataValue>,
    breaker: Option<CircuitBreaker>,
}

/// How the handler is called.
enum Transport {
    /// gRPC: `COS_GRPC_CLIENT_POOL_SIZE` clients, used round-robin.
    Grpc { clients: Vec<WriteSideHandlerServiceClient<H2Channel>>, next: AtomicUsize },
    /// CoS's HTTP/JSON (`COS_WRITE_SIDE_PROTOCOL=http`).
    Http(HttpHandler),
}

/// The settings named in configuration errors.
const CA_KEY: &str = "write_side.tls_ca_file";
const HOST_KEY: &str = "write_side.host";

/// The metadata key naming the calling node on every write-handler call.
pub const NODE_HEADER: &str = "regent-node";

impl WriteHandler {
    /// Builds the channels to `endpoint` (`http://host:port` or `https://host:port`; with `https`, the handler's
    /// certificate is checked against `tls_ca_file`, or the system's roots when it is empty). Nothing connects
    /// until the first call; a handler that is down answers each call with `UNAVAILABLE`.
    pub fn connect_lazy(
        endpoint: &str,
        tls_ca_file: &str,
        pool_size: usize,
        timeout: Duration,
        max_message_bytes: usize,
        keepalive: Option<crate::config::Keepalive>,
    ) -> Result<Self, crate::tls::Error> {
        let target =
            Target::for_handler(endpoint, (CA_KEY, tls_ca_file), HOST_KEY, b"h2", timeout)?.with_keepalive(keepalive);
        let clients = (0..pool_size.max(1))
            .map(|_| {
                WriteSideHandlerServiceClient::with_origin(H2Channel::lazy(target.clone()), target.origin.clone())
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes)
            })
            .collect();
        Ok(Self::with_transport(Transport::Grpc { clients, next: AtomicUsize::new(0) }, timeout))
    }

    /// A handler spoken to in CoS's HTTP/JSON at `endpoint` (`http://host:port` or `https://host:port`, checked as
    /// for [`connect_lazy`](Self::connect_lazy)); each call bounded by `timeout`.
    pub fn connect_http(endpoint: &str, tls_ca_file: &str, timeout: Duration) -> Result<Self, crate::tls::Error> {
        let target = Target::for_handler(endpoint, (CA_KEY, tls_ca_file), HOST_KEY, b"http/1.1", timeout)?;
        Ok(Self::with_transport(Transport::Http(HttpHandler::new(target)), timeout))
    }

    fn with_transport(transport: Transport, timeout: Duration) -> Self {
        Self { inner: Arc::new(Inner { transport, timeout, node: None, breaker: None }) }
    }

    /// Puts every call behind a circuit breaker (`COS_WRITE_SIDE_BREAKER_*`).
    pub fn with_breaker(mut self, settings: Option<crate::config::BreakerSettings>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.breaker = settings.map(|settings| CircuitBreaker::new("write side", settings));
        }
        self
    }

    /// Names the calling node (`regent-node` metadata) on every call.
    pub fn identified_as(mut self, node: &str) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.node = node.parse().ok();
        }
        self
    }

    fn identify<T>(&self, request: &mut Request<T>) {
        if let Some(node) = &self.inner.node {
            request.metadata_mut().insert(NODE_HEADER, node.clone());
        }
    }
}

/// The next gRPC client, round-robin.
fn next_client(
    clients: &[WriteSideHandlerServiceClient<H2Channel>],
    next: &AtomicUsize,
) -> WriteSideHandlerServiceClient<H2Channel> {
    clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()].clone()
}

#[async_trait::async_trait]
impl WriteSide for WriteHandler {
    /// Calls `HandleCommand` with `headers` as the outgoing metadata.
    async fn handle_command(
        &self,
        request: HandleCommandRequest,
        headers: MetadataMap,
    ) -> Result<HandleCommandResponse, Status> {
        let mut request = Request::from_parts(headers, Default::default(), request);
        request.set_timeout(self.inner.timeout);
        self.identify(&mut request);
        crate::telemetry::inject_metadata(request.metadata_mut());
        match &self.inner.transport {
            Transport::Grpc { clients, next } => {
                self.bounded("HandleCommand", next_client(clients, next).handle_command(request)).await
            }
            Transport::Http(http) => self.bounded("HandleCommand", http.handle_command(request)).await,
        }
    }

    /// Calls `HandleEvent`.
    async fn handle_event(&self, request: HandleEventRequest) -> Result<HandleEventResponse, Status> {
        let mut request = Request::new(request);
        request.set_timeout(self.inner.timeout);
        self.identify(&mut request);
        crate::telemetry::inject_metadata(request.metadata_mut());
        match &self.inner.transport {
            Transport::Grpc { clients, next } => {
                self.bounded("HandleEvent", next_client(clients, next).handle_event(request)).await
            }
            Transport::Http(http) => self.bounded("HandleEvent", http.handle_event(request)).await,
        }
    }
}

impl WriteHandler {
    async fn bounded<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        CircuitBreaker::guard(self.inner.breaker.as_ref(), self.deadline(method, call)).await
    }

    async fn deadline<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.inner.timeout, call).await {
            // tonic enforces the `grpc-timeout` it sends and reports it as CANCELLED "Timeout expired".
            Ok(Err(status)) if status.code() == tonic::Code::Cancelled && started.elapsed() >= self.inner.timeout => {
                Err(self.deadline_exceeded(method))
            }
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(self.deadline_exceeded(method)),
        }
    }

    fn deadline_exceeded(&self, method: &str) -> Status {
        Status::deadline_exceeded(format!(
            "write handler {method} did not answer within {} ms (COS_GRPC_CALLS_TIMEOUT)",
            self.inner.timeout.as_millis()
        ))
    }
}
