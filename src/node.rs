//! The composition root: builds one node from its [`Config`] in two steps, [`Node::start`] (open the store, spawn
//! the shard region, bind and serve gRPC and the admin endpoint) and [`Node::shutdown`] (stop serving, drain, stop
//! the actors).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{ActorRoots, AdminContext, AdminServer, HttpServer, Readiness, SingleNode};
use crate::cluster::runtime::{ClusterRuntime, Membership};
use crate::cluster::status::ClusterStatusSource;
use crate::config::read_sides::{self, ReadSideSettings};
use crate::config::{Config, ConfigError, HandlerProtocol};
use crate::engine::Engine;
use crate::grpc::connection::with_handshake_deadline;
use crate::grpc::{ChiefOfState, WriteHandler};
use crate::persistence;
use crate::proto::chief_of_state::v1::chief_of_state_service_server::ChiefOfStateServiceServer;
use crate::proto::chief_of_state::v1::read_side_manager_service_server::ReadSideManagerServiceServer;
use crate::proto::regent::v1::read_side_admin_service_server::ReadSideAdminServiceServer;

/// What the drain of requests in flight gets beyond their own deadline (see `Node::drain_timeout`).
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// How long a fenced or downed member may take to stop its actors before [`Node::run_until`] returns anyway.
const FENCED_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// tonic's server with the connection limits of `[server]` (the handshake deadline is on the incoming stream):
/// at most `max_concurrent_streams` requests in flight per connection, HTTP/2 PINGs every
/// `http2_keepalive_interval_ms` (a peer that does not answer within `http2_keepalive_timeout_ms` is closed), and
/// [`Config::request_timeout`] for each request until its response starts. hyper's own HTTP/2 defaults stay: at
/// most 20 streams reset by the client pending accept and 1024 reset by the server before a GOAWAY
/// (CVE-2023-44487), 16 KiB header list.
fn server_builder(config: &Config) -> tonic::transport::Server {
    let server = &config.server;
    let keepalive = Some(server.http2_keepalive_interval_ms).filter(|ms| *ms > 0).map(Duration::from_millis);
    tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_millis(server.http2_keepalive_timeout_ms)))
        .timeout(config.request_timeout())
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] persistence::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("write handler endpoint: {0}")]
    WriteHandler(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
    #[error("cannot start the actor system: {0}")]
    Actors(#[from] ractor::SpawnErr),
    #[error("gRPC server: {0}")]
    Server(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::Error),
    #[error("this cluster member was fenced or downed: {0}")]
    Fenced(String),
}

/// A running node.
pub struct Node {
    local_addr: SocketAddr,
    engine: Engine,
    cluster: Option<ClusterRuntime>,
    stop_serving: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// What the admin endpoint's `/ready` answers.
    readiness: watch::Sender<Readiness>,
    admin: Option<AdminServer>,
    /// CoS's HTTP/JSON API, when `server.protocol` is `http` or `both`.
    http: Option<HttpServer>,
    /// How long requests in flight get to finish once the node stops serving: a request waits at most
    /// `COS_COMMAND_HANDLER_TIMEOUT` for its entity, plus [`DRAIN_MARGIN`].
    drain_timeout: Duration,
}

impl Node {
    /// Opens the store, starts the actors and serves gRPC on `server.address:server.port` (port 0 picks one).
    /// Read sides come from `COS_READ_SIDE_CONFIG` or, when it is empty, the process's
    /// `COS_READ_SIDE_CONFIG__*` variables.
    pub async fn start(config: Config) -> Result<Node, Error> {
        let read_sides = config.read_sides(&read_sides::process_env_vars())?;
        Self::start_with(config, read_sides).await
    }

    /// [`start`](Self::start) with the read sides given (used when `read_side.enabled`).
    pub async fn start_with(config: Config, read_sides: Vec<ReadSideSettings>) -> Result<Node, Error> {
        config.validate()?;
        crate::tls::install_crypto_provider();
        let endpoint = config.write_side_endpoint()?;
        // TLS files are read before anything starts, so that a bad one stops the node at once.
        let server_tls = crate::tls::server_tls(&config.server)?;
        let cluster = if config.cluster.enabled { Some(ClusterRuntime::join(&config).await?) } else { None };
        let calls_timeout = Duration::from_millis(config.write_side.calls_timeout_ms);
        let handler = match config.write_side.protocol {
            HandlerProtocol::Grpc => WriteHandler::connect_lazy(
                &endpoint,
                &config.write_side.tls_ca_file,
                config.write_side.pool_size,
                calls_timeout,
                config.server.max_message_bytes,
                config.grpc_client.keepalive(),
            )?,
            HandlerProtocol::Http => {
                WriteHandler::connect_http(&endpoint, &config.write_side.tls_ca_file, calls_timeout)?
            }
        };
        let mut handler = handler.with_breaker(config.write_side.breaker.settings());
        if let Some(cluster) = &cluster {
            handler = handler.identified_as(&cluster.member().node);
        } else if !config.cluster.node_name.is_empty() {
            // A node alone names itself too when it was given a name (`REGENT_NODE_NAME`).
            handler = handler.identified_as(&config.cluster.node_name);
        }
        let engine = Engine::start_in(&config, Arc::new(handler), read_sides, cluster.as_ref()).await?;

        let addr = format!("{}:{}", config.server.address, config.server.port);
        let listener = TcpListener::bind(&addr).await.map_err(|source| Error::Bind { addr: addr.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
        let (readiness, admin) = start_admin(&config, &engine, cluster.as_ref(), local_addr).await?;

        let service = ChiefOfState::new(engine.handle(), Arc::new(config.write_side.clone()), engine.subscriptions());
        let max = config.server.max_message_bytes;
        let http = if config.server.protocol.serves_http() {
            let addr = format!("{}:{}", config.server.http_address, config.server.http_port);
            let router = crate::grpc::http::router(service.clone(), max);
            let served = HttpServer::serve_router(&addr, router, "HTTP/JSON API").await;
            Some(served.map_err(|source| Error::Bind { addr, source })?)
        } else {
            None
        };
        let cos = ChiefOfStateServiceServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<ChiefOfStateServiceServer<ChiefOfState>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Server(e.to_string()))?;
        let manager = engine.read_side_manager();

        let mut builder = server_builder(&config);
        if let Some(tls) = server_tls {
            builder = builder.tls_config(tls)?;
        }
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            builder
                .layer(crate::metrics::GrpcMetricsLayer)
                .add_service(health)
                .add_service(reflection)
                .add_service(cos)
                .add_optional_service(manager.clone().map(ReadSideManagerServiceServer::new))
                .add_optional_service(manager.map(ReadSideAdminServiceServer::new))
                .serve_with_incoming_shutdown(
                    with_handshake_deadline(
                        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                        Duration::from_millis(config.server.handshake_timeout_ms),
                    ),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        match &cluster {
            None => {
                readiness.send_replace(Readiness::ready());
            }
            Some(cluster) => follow_cluster_readiness(cluster, readiness.clone()),
        }
        let tls = match (
            crate::tls::is_set(&config.server.tls_cert_file),
            crate::tls::is_set(&config.server.tls_client_ca_file),
        ) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "mutual",
        };
        info!(address = %local_addr, tls, store = ?config.store.backend, write_handler = %endpoint, "regent node started");
        let drain_timeout = Duration::from_secs(config.entities.command_handler_timeout_secs) + DRAIN_MARGIN;
        Ok(Node { local_addr, engine, cluster, stop_serving, server, readiness, admin, http, drain_timeout })
    }

    /// The address gRPC is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the HTTP/JSON API, when `server.protocol` is `http` or `both`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The address the admin endpoint is served on, when `admin.enabled`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// In a cluster, this member's state (`Stopped` once it was fenced or downed: the node must exit).
    pub fn membership(&self) -> Option<watch::Receiver<Membership>> {
        self.cluster.as_ref().map(ClusterRuntime::membership)
    }

    /// The cluster runtime, when the node is a cluster member.
    pub fn cluster(&self) -> Option<&ClusterRuntime> {
        self.cluster.as_ref()
    }

    /// Serves until `signal` completes (then leaves the cluster and shuts down), or, in a cluster, until this
    /// member is fenced or downed (then stops at once and returns [`Error::Fenced`]).
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let fenced = async {
            match self.membership() {
                Some(mut membership) => loop {
                    if let Membership::Stopped(reason) = &*membership.borrow_and_update() {
                        return reason.clone();
                    }
                    if membership.changed().await.is_err() {
                        return "the cluster runtime stopped".to_string();
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = signal => self.shutdown().await,
            reason = fenced => {
                // Nothing this member still does can be stored (the journal is fenced): the aim is to exit soon,
                // so that a supervisor starts a new incarnation, even if stopping waits on an unreachable database.
                if tokio::time::timeout(FENCED_STOP_TIMEOUT, self.stop_fenced()).await.is_err() {
                    tracing::warn!(timeout = ?FENCED_STOP_TIMEOUT, "stopping the fenced member took too long: exiting anyway");
                }
                Err(Error::Fenced(reason))
            }
        }
    }

    /// Stops serving and every actor without leaving (the member is fenced: others take its shards over).
    async fn stop_fenced(mut self) {
        tracing::error!("this member was fenced or downed: stopping without serving anything more");
        let _ = self.stop_serving.send(());
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        self.engine.close_subscriptions();
        if let Some(cluster) = self.cluster.take() {
            cluster.abandon().await;
        }
        self.engine.shutdown().await;
    }

    /// Leaves the cluster (its shards are handed off to other members while requests are still served), then
    /// stops accepting requests, lets those in flight finish, and stops every actor.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(cluster) = self.cluster.take() {
            cluster.leave().await;
        }
        info!("regent node shutting down");
        self.readiness.send_replace(Readiness::not_ready("shutting down"));
        let _ = self.stop_serving.send(());
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        // Open subscription streams would keep the server from finishing.
        self.engine.close_subscriptions();
        // The graceful drain waits for every connection to close, which a client that does not answer the
        // server's GOAWAY never does: past the requests' own deadline, the remaining connections are dropped.
        let served = match tokio::time::timeout(self.drain_timeout, &mut self.server).await {
            Ok(served) => served.map_err(|e| Error::Server(e.to_string()))?,
            Err(_) => {
                tracing::warn!(timeout = ?self.drain_timeout, "connections still open after the drain: closing them");
                self.server.abort();
                Ok(())
            }
        };
        self.engine.shutdown().await;
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        served.map_err(|e| Error::Server(e.to_string()))
    }
}

/// Serves the admin endpoint when `admin.enabled`, not ready until the node serves gRPC.
async fn start_admin(
    config: &Config,
    engine: &Engine,
    cluster: Option<&ClusterRuntime>,
    grpc_addr: SocketAddr,
) -> Result<(watch::Sender<Readiness>, Option<AdminServer>), Error> {
    let (readiness, watch) = watch::channel(Readiness::not_ready("starting"));
    if !config.admin.enabled {
        return Ok((readiness, None));
    }
    let mut roots = engine.actor_roots();
    let (node, source): (String, Arc<dyn ClusterStatusSource>) = match cluster {
        Some(cluster) => {
            roots.extend(cluster.actor_roots());
            (cluster.member().to_string(), cluster.status_source())
        }
        None => {
            let node = match config.cluster.node_name.as_str() {
                "" => grpc_addr.to_string(),
                name => name.to_string(),
            };
            let single = SingleNode {
                node: node.clone(),
                address: grpc_addr.to_string(),
                num_shards: config.entities.num_shards,
            };
            (node, Arc::new(single))
        }
    };
    let ctx = AdminContext {
        node,
        readiness: watch,
        cluster: source,
        actors: ActorRoots::new(roots),
        read_sides: engine.read_side_manager(),
        token: config.admin.token.clone(),
    };
    let addr = format!("{}:{}", config.admin.address, config.admin.port);
    let admin = AdminServer::start(&addr, ctx).await.map_err(|source| Error::Bind { addr, source })?;
    if !admin.local_addr().ip().is_loopback() && config.admin.token.expose().is_empty() {
        tracing::warn!(
            address = %admin.local_addr(),
            "the admin endpoint listens beyond loopback without a token: anyone who reaches it can read the \
             cluster's state; set REGENT_ADMIN_TOKEN"
        );
    }
    Ok((readiness, Some(admin)))
}

/// Keeps `/ready` in step with the cluster member: ready while it is `up` and reads the database.
fn follow_cluster_readiness(cluster: &ClusterRuntime, readiness: watch::Sender<Readiness>) {
    let mut membership = cluster.membership();
    let check = cluster.readiness_probe();
    tokio::spawn(async move {
        loop {
            let next = match check() {
                Ok(()) => Readiness::ready(),
                Err(reason) => Readiness::not_ready(reason),
            };
            readiness.send_if_modified(|current| {
                let changed = *current != next;
                *current = next;
                changed
            });
            if readiness.is_closed() {
                return;
            }
            tokio::select! {
                changed = membership.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
}
