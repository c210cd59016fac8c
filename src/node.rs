//! The composition root: builds one node from its [`Config`] in two steps, [`Node::start`] (open the store, spawn
//! the shard region, bind and serve gRPC) and [`Node::shutdown`] (stop serving, drain, stop the actors).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::actors::EntitySettings;
use crate::actors::read_side_supervisor::{ReadSideSupervisor, SupervisorArgs, SupervisorMessage};
use crate::actors::region::{RegionArgs, RegionMessage, ShardRegion};
use crate::config::read_sides::{self, ReadSideSettings};
use crate::config::{Config, ConfigError};
use crate::grpc::manager::ReadSideManager;
use crate::grpc::{ChiefOfState, WriteHandler};
use crate::persistence::{self, JournalSignals};
use crate::proto::chief_of_state::v1::chief_of_state_service_server::ChiefOfStateServiceServer;
use crate::proto::chief_of_state::v1::read_side_manager_service_server::ReadSideManagerServiceServer;
use crate::proto::regent::v1::read_side_admin_service_server::ReadSideAdminServiceServer;
use crate::subscriptions::SubscriptionHub;

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
    #[error("cannot start the actor system: {0}")]
    Actors(#[from] ractor::SpawnErr),
    #[error("gRPC server: {0}")]
    Server(String),
}

/// A running node.
pub struct Node {
    local_addr: SocketAddr,
    region: ActorRef<RegionMessage>,
    read_sides: Option<ActorRef<SupervisorMessage>>,
    subscriptions: Option<SubscriptionHub>,
    stop_serving: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
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
        let endpoint = config.write_side_endpoint()?;
        let store = persistence::open(&config.store, config.entities.num_shards).await?;
        let handler = WriteHandler::connect_lazy(
            &endpoint,
            config.write_side.pool_size,
            Duration::from_millis(config.write_side.calls_timeout_ms),
            config.server.max_message_bytes,
        )?;
        let write_side = Arc::new(config.write_side.clone());
        let num_shards = config.entities.num_shards;
        let journal_signals = Arc::new(JournalSignals::new(num_shards));
        let subscriptions = config.subscriptions.enabled.then(|| SubscriptionHub::new(config.subscriptions.buffer));
        let settings = EntitySettings {
            store: store.clone(),
            handler,
            write_side: write_side.clone(),
            snapshots: config.snapshots.clone(),
            journal_signals: journal_signals.clone(),
            subscriptions: subscriptions.clone(),
        };
        let passivation_idle = match config.entities.passivation_idle_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let (region, _) =
            Actor::spawn(None, ShardRegion, RegionArgs { num_shards, settings, passivation_idle }).await?;

        let (read_side_supervisor, manager) = if config.read_side.enabled {
            let ids = read_sides.iter().filter(|r| r.enabled).map(|r| r.id.clone()).collect();
            let args = SupervisorArgs { read_sides, num_shards, store: store.clone(), journal_signals };
            let (supervisor, _) = Actor::spawn(None, ReadSideSupervisor, args).await?;
            let manager = ReadSideManager::new(supervisor.clone(), store.clone(), num_shards, ids);
            (Some(supervisor), Some(manager))
        } else {
            (None, None)
        };

        let addr = format!("{}:{}", config.server.address, config.server.port);
        let listener = TcpListener::bind(&addr).await.map_err(|source| Error::Bind { addr: addr.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;

        let service = ChiefOfState::new(
            region.clone(),
            write_side,
            Duration::from_secs(config.entities.command_handler_timeout_secs),
            subscriptions.clone(),
        );
        let max = config.server.max_message_bytes;
        let cos = ChiefOfStateServiceServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<ChiefOfStateServiceServer<ChiefOfState>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Server(e.to_string()))?;

        let (stop_serving, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(health)
                .add_service(reflection)
                .add_service(cos)
                .add_optional_service(manager.clone().map(ReadSideManagerServiceServer::new))
                .add_optional_service(manager.map(ReadSideAdminServiceServer::new))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        info!(address = %local_addr, store = ?config.store.backend, write_handler = %endpoint, "regent node started");
        Ok(Node { local_addr, region, read_sides: read_side_supervisor, subscriptions, stop_serving, server })
    }

    /// The address gRPC is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        signal.await;
        self.shutdown().await
    }

    /// Stops accepting requests, lets those in flight finish, then stops every actor.
    pub async fn shutdown(self) -> Result<(), Error> {
        info!("regent node shutting down");
        let _ = self.stop_serving.send(());
        // Open subscription streams would keep the server from finishing.
        if let Some(hub) = &self.subscriptions {
            hub.close();
        }
        let served = self.server.await.map_err(|e| Error::Server(e.to_string()))?;
        self.region.stop_children_and_wait(None, Some(Duration::from_secs(10))).await;
        self.region.stop_and_wait(None, Some(Duration::from_secs(10))).await.ok();
        if let Some(read_sides) = self.read_sides {
            read_sides.stop_children_and_wait(None, Some(Duration::from_secs(10))).await;
            read_sides.stop_and_wait(None, Some(Duration::from_secs(10))).await.ok();
        }
        served.map_err(|e| Error::Server(e.to_string()))
    }
}
