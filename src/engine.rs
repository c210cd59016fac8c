//! The engine: the store, the entity actors, the read sides and the subscription hub of one node, without any
//! server. [`Node`](crate::Node) puts gRPC in front of it; benchmarks and embedders drive it directly through
//! an [`EngineHandle`].

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tonic::Status;

use crate::actors::read_side_supervisor::{ReadSideSupervisor, SupervisorArgs, SupervisorMessage};
use crate::actors::region::{LocalShards, RegionArgs, RegionMessage, ShardRegion};
use crate::actors::{CommandEnvelope, EntityMessage, EntityReply, EntitySettings, ShardMessage, shard_of};
use crate::cluster::runtime::ClusterRuntime;
use crate::config::Config;
use crate::config::read_sides::ReadSideSettings;
use crate::grpc::manager::ReadSideManager;
use crate::node::Error;
use crate::persistence::{self, JournalSignals};
use crate::proto::chief_of_state::v1::StateWrapper;
use crate::subscriptions::SubscriptionHub;
use crate::write_side::WriteSide;

/// A running engine.
pub struct Engine {
    handle: EngineHandle,
    read_sides: Option<ActorRef<SupervisorMessage>>,
    manager: Option<ReadSideManager>,
    subscriptions: Option<SubscriptionHub>,
}

/// A cheap, cloneable way to send requests to the engine's entities.
#[derive(Clone)]
pub struct EngineHandle {
    region: ActorRef<RegionMessage>,
    /// The shards running here: a request for one of them skips the region's mailbox.
    local_shards: Arc<LocalShards>,
    ask_timeout: Duration,
    /// How the node names itself in spans.
    node: Arc<str>,
}

impl Engine {
    /// Opens the store and starts the actors. `read_sides` are used when `read_side.enabled`.
    pub async fn start(
        config: &Config,
        handler: Arc<dyn WriteSide>,
        read_sides: Vec<ReadSideSettings>,
    ) -> Result<Engine, Error> {
        Self::start_in(config, handler, read_sides, None).await
    }

    /// [`start`](Self::start) as a member of `cluster`: journal writes are fenced on the membership, and the
    /// region hosts only the shards the coordinator allocates here (their read-side processors too).
    pub async fn start_in(
        config: &Config,
        handler: Arc<dyn WriteSide>,
        read_sides: Vec<ReadSideSettings>,
        cluster: Option<&ClusterRuntime>,
    ) -> Result<Engine, Error> {
        config.validate()?;
        let num_shards = config.entities.num_shards;
        let store = persistence::open_as(&config.store, num_shards, cluster.map(ClusterRuntime::member)).await?;
        let journal_signals = Arc::new(JournalSignals::new(num_shards));
        let subscriptions = config.subscriptions.enabled.then(|| SubscriptionHub::new(config.subscriptions.buffer));

        let (read_side_supervisor, manager) = if config.read_side.enabled {
            let ids = read_sides.iter().filter(|r| r.enabled).map(|r| r.id.clone()).collect();
            let args =
                SupervisorArgs::new(read_sides, num_shards, store.clone(), journal_signals.clone(), cluster.is_some())
                    .with_keepalive(config.grpc_client.keepalive())
                    .with_breaker(config.read_side.breaker.settings());
            let (supervisor, _) = Actor::spawn(None, ReadSideSupervisor, args).await?;
            let manager = ReadSideManager::new(supervisor.clone(), store.clone(), num_shards, ids);
            (Some(supervisor), Some(manager))
        } else {
            (None, None)
        };

        let node: Arc<str> = match cluster {
            Some(cluster) => cluster.member().node.as_str().into(),
            None => config.cluster.node_name.as_str().into(),
        };
        let settings = EntitySettings {
            node: node.clone(),
            store: store.clone(),
            handler,
            write_side: Arc::new(config.write_side.clone()),
            snapshots: config.snapshots.clone(),
            journal_signals,
            subscriptions: subscriptions.clone(),
            lease: cluster.map(ClusterRuntime::lease_clock),
            queue_limit: config.entities.queue_limit,
        };
        let passivation_idle = match config.entities.passivation_idle_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let local_shards = Arc::new(LocalShards::new(num_shards));
        let args = RegionArgs {
            num_shards,
            settings,
            passivation_idle,
            active_entity_limit: (config.entities.active_entity_limit > 0)
                .then_some(config.entities.active_entity_limit),
            cluster: cluster.map(ClusterRuntime::context),
            read_sides: read_side_supervisor.clone(),
            local_shards: local_shards.clone(),
        };
        let (region, _) = Actor::spawn(None, ShardRegion, args).await?;
        if let Some(cluster) = cluster {
            cluster.set_region(region.clone());
        }
        let handle = EngineHandle {
            region,
            local_shards,
            ask_timeout: Duration::from_secs(config.entities.command_handler_timeout_secs),
            node: node.clone(),
        };
        Ok(Engine { handle, read_sides: read_side_supervisor, manager, subscriptions })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The read-side manager, when read sides are enabled.
    pub fn read_side_manager(&self) -> Option<ReadSideManager> {
        self.manager.clone()
    }

    /// The subscription hub, when subscriptions are enabled.
    pub fn subscriptions(&self) -> Option<SubscriptionHub> {
        self.subscriptions.clone()
    }

    /// The roots of the engine's actor tree: the shard region and, when read sides run, their supervisor.
    pub fn actor_roots(&self) -> Vec<ractor::ActorCell> {
        let mut roots = vec![self.handle.region.get_cell()];
        roots.extend(self.read_sides.as_ref().map(|supervisor| supervisor.get_cell()));
        roots
    }

    /// Ends subscriptions (their streams would keep a server from draining).
    pub fn close_subscriptions(&self) {
        if let Some(hub) = &self.subscriptions {
            hub.close();
        }
    }

    /// Stops every actor (entities finish the message they are processing).
    pub async fn shutdown(self) {
        self.close_subscriptions();
        let region = self.handle.region;
        region.stop_children_and_wait(None, Some(Duration::from_secs(10))).await;
        region.stop_and_wait(None, Some(Duration::from_secs(10))).await.ok();
        if let Some(read_sides) = self.read_sides {
            read_sides.stop_children_and_wait(None, Some(Duration::from_secs(10))).await;
            read_sides.stop_and_wait(None, Some(Duration::from_secs(10))).await.ok();
        }
    }
}

impl EngineHandle {
    /// The node's name (`REGENT_NODE_NAME`), as its spans carry it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Processes a command; the reply comes once its events are durable.
    pub async fn process_command(&self, entity_id: String, command: CommandEnvelope) -> Result<StateWrapper, Status> {
        let command = Box::new(command);
        let started = std::time::Instant::now();
        let outcome = self.ask(entity_id, |reply| EntityMessage::Command { command, reply }).await;
        let code = outcome.as_ref().map_or_else(|status| status.code(), |_| tonic::Code::Ok);
        crate::metrics::get().command(crate::metrics::code_label(code), started.elapsed());
        outcome
    }

    /// The current state of an entity (`NOT_FOUND` while it has no event).
    pub async fn get_state(&self, entity_id: String) -> Result<StateWrapper, Status> {
        self.ask(entity_id, |reply| EntityMessage::GetState { reply }).await
    }

    async fn ask(
        &self,
        entity_id: String,
        message: impl FnOnce(ractor::RpcReplyPort<EntityReply>) -> EntityMessage,
    ) -> Result<StateWrapper, Status> {
        let id = entity_id.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let message = message(reply.into());
        // Straight to the shard when it runs here; through the region (which knows where it lives) otherwise.
        let shard = shard_of(&entity_id, self.local_shards.num_shards());
        let message = match self.local_shards.get(shard) {
            Some(actor) => match actor.send_message(ShardMessage::Deliver { entity_id, message }) {
                Ok(()) => None,
                Err(ractor::MessagingErr::SendErr(ShardMessage::Deliver { entity_id, message })) => {
                    Some((entity_id, message))
                }
                Err(_) => return Err(Status::unavailable(format!("shard {shard} is restarting; try again"))),
            },
            None => Some((entity_id, message)),
        };
        if let Some((entity_id, message)) = message
            && self.region.send_message(RegionMessage::Route { entity_id, message }).is_err()
        {
            return Err(Status::unavailable("the node is shutting down"));
        }
        match tokio::time::timeout(self.ask_timeout, answer).await {
            Ok(Ok(reply)) => reply.map_err(Status::from),
            // As CoS: an ask timeout is INTERNAL. The command may still complete after this answer.
            Err(_) => Err(Status::internal(format!(
                "Ask timed out on entity {id:?} after {} ms (COS_COMMAND_HANDLER_TIMEOUT); the command may still be applied",
                self.ask_timeout.as_millis()
            ))),
            Ok(Err(_)) => Err(Status::unavailable(format!("entity {id:?} stopped before replying"))),
        }
    }
}
