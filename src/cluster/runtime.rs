//! A node's cluster runtime: it joins the membership table, keeps its lease, links to the other members over
//! ractor_cluster, watches them with a phi-accrual failure detector, and, on the leader, promotes joining
//! members, downs dead and partitioned ones (the split-brain resolver) and runs the shard coordinator.
//!
//! [`ClusterContext`] is what the region, the peer actor and the coordinator share: who this member is, the
//! latest view of the cluster, and the way to send a request to another member.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{Instrument, debug, info, warn};

use super::allocation::AllocationStore;
use super::coordinator::{Coordinator, CoordinatorArgs, CoordinatorMessage};
use super::detector::PhiAccrual;
use super::keeper::{Health, KeeperOptions, LeaseKeeper};
use super::lease::{LEADER, Leases};
use super::membership::{ClusterSnapshot, MembershipStore};
use super::peer::PeerActor;
use super::sbr::{self, Stability, Strategy, Tick, View};
use super::status::{ClusterStatus, ClusterStatusSource, MemberStatusView, ShardHomeView};
use super::transport::{LinkEvent, RactorTransport, Transport};
use super::wire::{
    MAX_PEER_MESSAGE_BYTES, PEER_GROUP, PeerMessage, WIRE_VERSION, metadata_from_wire, metadata_to_wire,
    peer_actor_name, refused, status_from_wire, status_to_wire,
};
use super::{Error, MemberId, MemberStatus};
use crate::actors::{CommandEnvelope, CommandError, EntityMessage, RegionMessage};
use crate::config::{ClusterConfig, Config};
use crate::proto::regent::v1::{self as pb, peer_reply, peer_request};

/// How long a coordinator lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the region, the peer actor and the coordinator share.
pub struct ClusterContext {
    me: MemberId,
    me_key: String,
    config: ClusterConfig,
    /// `COS_SERVICE_NAME`: the name DNS discovery resolves.
    service_name: String,
    num_shards: u32,
    ask_timeout: Duration,
    membership: MembershipStore,
    allocations: AllocationStore,
    region: OnceLock<ActorRef<RegionMessage>>,
    view: RwLock<SharedView>,
    /// The coordinator, while this member leads.
    coordinator: Mutex<Option<ActorRef<CoordinatorMessage>>>,
    /// When the daemon last read the membership from the database.
    last_view: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct SharedView {
    snapshot: Option<Arc<ClusterSnapshot>>,
    /// `node.incarnation` of the leader lease's holder (who runs the coordinator).
    leader: Option<String>,
    /// Members with a live link.
    linked: HashSet<String>,
    /// Allocations as last read (for the admin view).
    shards: Vec<(u32, MemberId)>,
}

impl ClusterContext {
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// `node.incarnation` of this member.
    pub fn me_key(&self) -> &str {
        &self.me_key
    }

    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    pub fn allocations(&self) -> &AllocationStore {
        &self.allocations
    }

    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handoff_timeout_ms)
    }

    pub fn rebalance_interval(&self) -> Duration {
        Duration::from_millis(self.config.rebalance_interval_ms)
    }

    pub fn rebalance_limits(&self) -> (f64, usize) {
        (self.config.rebalance_relative_limit, self.config.rebalance_absolute_limit)
    }

    /// Whether `member` is this node or has a live link to it.
    pub fn is_linked(&self, member: &str) -> bool {
        member == self.me_key || self.view.read().expect("view lock").linked.contains(member)
    }

    fn region(&self) -> Option<&ActorRef<RegionMessage>> {
        self.region.get()
    }

    fn leader(&self) -> Option<String> {
        self.view.read().expect("view lock").leader.clone()
    }

    fn local_coordinator(&self) -> Option<ActorRef<CoordinatorMessage>> {
        self.coordinator.lock().expect("coordinator lock").clone()
    }

    /// The peer actor of `member` (this node's own included), found in the pg group.
    fn peer(&self, member: &str) -> Option<ActorRef<PeerMessage>> {
        let name = peer_actor_name(member);
        ractor::pg::get_members(&PEER_GROUP.to_string())
            .into_iter()
            .find(|cell| cell.get_name().as_deref() == Some(name.as_str()))
            .map(ActorCell::into)
    }

    /// Sends `kind` to `member`'s peer actor and waits at most `timeout` for the reply.
    pub async fn request(
        &self,
        member: &str,
        kind: peer_request::Kind,
        timeout: Duration,
    ) -> Result<pb::PeerReply, RequestError> {
        let peer = self.peer(member).ok_or(RequestError::NoLink)?;
        let request = pb::PeerRequest { version: WIRE_VERSION, from: self.me_key.clone(), kind: Some(kind) };
        let bytes = request.encode_to_vec();
        if bytes.len() > MAX_PEER_MESSAGE_BYTES {
            return Err(RequestError::TooLarge(bytes.len()));
        }
        match peer.call(|reply| PeerMessage::Request(bytes, reply), Some(timeout)).await {
            Ok(CallResult::Success(bytes)) => {
                pb::PeerReply::decode(bytes.as_slice()).map_err(|_| RequestError::Garbled)
            }
            Ok(CallResult::Timeout) => Err(RequestError::Timeout),
            Ok(CallResult::SenderError) | Err(_) => Err(RequestError::NoLink),
        }
    }

    /// Asks the coordinator where `shard` lives.
    pub async fn shard_home(&self, shard: u32) -> Option<String> {
        let leader = self.leader()?;
        let request = peer_request::Kind::GetShardHome(pb::GetShardHome { shard });
        match self.request(&leader, request, LOOKUP_TIMEOUT).await {
            Ok(pb::PeerReply { kind: Some(peer_reply::Kind::ShardHome(home)) }) if !home.member.is_empty() => {
                Some(home.member)
            }
            _ => None,
        }
    }

    /// Forwards an entity request to the region of `home`. Returns the message back, unanswered, when it must be
    /// routed again (its shard is not there any more, or the link is gone).
    pub async fn forward(
        &self,
        home: &str,
        shard: u32,
        entity_id: &str,
        message: EntityMessage,
    ) -> Option<EntityMessage> {
        let span = tracing::info_span!("forward", entity_id = %entity_id, shard, to = %home, node = %self.me().node);
        let request = match &message {
            EntityMessage::Command { command, .. } => pb::EntityRequest {
                entity_id: entity_id.to_string(),
                shard,
                command: Some(command.command.clone()),
                propagated_headers: metadata_to_wire(&command.propagated_headers),
                persisted_headers: command.persisted_headers.clone(),
                get_state: false,
                trace_context: {
                    crate::telemetry::continue_from(&span, &command.trace_context);
                    crate::telemetry::inject(&span)
                },
            },
            EntityMessage::GetState { .. } => {
                pb::EntityRequest { entity_id: entity_id.to_string(), shard, get_state: true, ..Default::default() }
            }
            EntityMessage::Passivate => return None,
        };
        let outcome = self.request(home, peer_request::Kind::Entity(request), self.ask_timeout).instrument(span).await;
        let reply = match outcome {
            Ok(pb::PeerReply { kind: Some(peer_reply::Kind::Entity(reply)) }) => match reply.outcome {
                Some(pb::entity_reply::Outcome::State(state)) => Ok(state),
                Some(pb::entity_reply::Outcome::Failure(failure)) => {
                    Err(CommandError::Handler(status_from_wire(failure)))
                }
                None => Err(CommandError::Handler(Status::internal("empty reply from the owner node"))),
            },
            Ok(pb::PeerReply { kind: Some(peer_reply::Kind::Refused(refused)) }) if refused.wrong_home => {
                crate::metrics::get().forwarded("rerouted");
                return Some(message);
            }
            Ok(pb::PeerReply { kind: Some(peer_reply::Kind::Refused(refused)) }) => {
                Err(CommandError::Handler(Status::unavailable(format!("node {home} refused: {}", refused.reason))))
            }
            Ok(_) | Err(RequestError::Garbled) => {
                Err(CommandError::Handler(Status::internal(format!("unexpected reply from node {home}"))))
            }
            Err(RequestError::NoLink) => {
                crate::metrics::get().forwarded("rerouted");
                return Some(message);
            }
            // Never sent: it would end the session between the two nodes (see MAX_PEER_MESSAGE_BYTES).
            Err(RequestError::TooLarge(size)) => Err(CommandError::Handler(Status::out_of_range(format!(
                "the request is too large to forward to node {home}, which owns the entity ({size} bytes, at most \
                 {MAX_PEER_MESSAGE_BYTES} between nodes)"
            )))),
            // The caller's ask timed out at the same time; the command may still be applied there.
            Err(RequestError::Timeout) => {
                Err(CommandError::Handler(Status::unavailable(format!("node {home} did not answer in time"))))
            }
        };
        crate::metrics::get().forwarded(if reply.is_ok() { "ok" } else { "error" });
        message.reply(reply);
        None
    }

    /// Serves a request from another member (see [`PeerActor`]).
    pub async fn serve(&self, request: pb::PeerRequest) -> pb::PeerReply {
        let ack = || pb::PeerReply { kind: Some(peer_reply::Kind::Ack(pb::Ack {})) };
        let Some(kind) = request.kind else { return refused("empty request", false) };
        match kind {
            peer_request::Kind::Ping(ping) => super::wire::pong(ping.sequence),
            peer_request::Kind::Entity(request) => self.serve_entity(request).await,
            peer_request::Kind::GetShardHome(get) => {
                let Some(coordinator) = self.local_coordinator() else {
                    return refused("not the coordinator", false);
                };
                let home = coordinator
                    .call(|reply| CoordinatorMessage::GetShardHome { shard: get.shard, reply }, Some(LOOKUP_TIMEOUT))
                    .await;
                let member = match home {
                    Ok(CallResult::Success(Some(member))) => member,
                    _ => String::new(),
                };
                pb::PeerReply { kind: Some(peer_reply::Kind::ShardHome(pb::ShardHome { shard: get.shard, member })) }
            }
            peer_request::Kind::HostShard(host) => {
                let Some(region) = self.region() else { return refused("no region", false) };
                match region
                    .call(|reply| RegionMessage::HostShard { shard: host.shard, reply }, Some(LOOKUP_TIMEOUT))
                    .await
                {
                    Ok(CallResult::Success(true)) => ack(),
                    _ => refused("shard still stopping here", false),
                }
            }
            peer_request::Kind::BeginHandOff(begin) => {
                let Some(region) = self.region() else { return refused("no region", false) };
                let _ = region
                    .call(|reply| RegionMessage::BeginHandOff { shard: begin.shard, reply }, Some(LOOKUP_TIMEOUT))
                    .await;
                ack()
            }
            peer_request::Kind::HandOff(hand_off) => {
                let Some(region) = self.region() else { return refused("no region", false) };
                let timeout = self.handoff_timeout() + Duration::from_secs(1);
                match region.call(|reply| RegionMessage::HandOff { shard: hand_off.shard, reply }, Some(timeout)).await
                {
                    Ok(CallResult::Success(())) => ack(),
                    _ => refused("hand-off did not complete", false),
                }
            }
            peer_request::Kind::GracefulLeave(leave) => {
                let Some(coordinator) = self.local_coordinator() else {
                    return refused("not the coordinator", false);
                };
                let timeout = Duration::from_millis(self.config.leave_timeout_ms);
                match coordinator
                    .call(|reply| CoordinatorMessage::GracefulLeave { member: leave.member, reply }, Some(timeout))
                    .await
                {
                    Ok(CallResult::Success(true)) => ack(),
                    _ => refused("hand-off of the leaving member's shards did not complete", false),
                }
            }
        }
    }

    async fn serve_entity(&self, request: pb::EntityRequest) -> pb::PeerReply {
        let Some(region) = self.region() else { return refused("no region", false) };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let reply = ractor::RpcReplyPort::from(sender);
        let message = if request.get_state {
            EntityMessage::GetState { reply }
        } else {
            let Some(command) = request.command else { return refused("entity request without a command", false) };
            EntityMessage::Command {
                command: Box::new(CommandEnvelope {
                    command,
                    propagated_headers: metadata_from_wire(request.propagated_headers),
                    persisted_headers: request.persisted_headers,
                    trace_context: request.trace_context,
                }),
                reply,
            }
        };
        if region.send_message(RegionMessage::Deliver { entity_id: request.entity_id, message }).is_err() {
            return refused("the node is stopping", false);
        }
        let outcome = match tokio::time::timeout(self.ask_timeout, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CommandError::Handler(Status::unavailable("the entity stopped before replying"))),
            Err(_) => return refused("timed out", false),
        };
        let outcome = match outcome {
            Ok(state) => pb::entity_reply::Outcome::State(state),
            Err(CommandError::WrongHome { .. }) => return refused("shard not hosted here", true),
            Err(e) => pb::entity_reply::Outcome::Failure(status_to_wire(&Status::from(e))),
        };
        pb::PeerReply { kind: Some(peer_reply::Kind::Entity(pb::EntityReply { outcome: Some(outcome) })) }
    }
}

/// Why a request to another member failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no link to the member")]
    NoLink,
    #[error("the member did not answer in time")]
    Timeout,
    #[error("the member's reply could not be decoded")]
    Garbled,
    #[error("the request ({0} bytes) is too large to cross between nodes")]
    TooLarge(usize),
}

/// Readiness as the admin endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    Joining,
    Up,
    Leaving,
    /// Fenced, downed or left: the node must stop.
    Stopped(String),
}

/// The running cluster side of a node.
pub struct ClusterRuntime {
    context: Arc<ClusterContext>,
    transport: Arc<RactorTransport>,
    keeper: Option<LeaseKeeper>,
    peer: ActorRef<PeerMessage>,
    daemon: JoinHandle<()>,
    stop_daemon: watch::Sender<bool>,
    membership_state: watch::Receiver<Membership>,
    leases: Leases,
    lease_clock: super::keeper::LeaseClock,
}

impl ClusterRuntime {
    /// Joins the cluster as a new incarnation of this node: the member row (`joining`), the lease keeper, the
    /// node-to-node listener. The journal must be opened fenced on [`ClusterRuntime::member`] and the region
    /// started with [`ClusterRuntime::context`] before [`ClusterRuntime::run`].
    pub async fn join(config: &Config) -> Result<Self, Error> {
        let cluster = &config.cluster;
        // Read before joining: a bad certificate must not leave a member row behind.
        let tls = crate::tls::ClusterTls::from_config(cluster)?;
        let node = if cluster.node_name.is_empty() { host_name() } else { cluster.node_name.clone() };
        let incarnation = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let me = MemberId::new(node, incarnation);
        let host = advertised_host(cluster);
        let address = format!("{host}:{}", cluster.port);
        crate::persistence::postgres::PostgresStore::prepare(&config.store.postgres, config.entities.num_shards)
            .await?;
        let pool = crate::persistence::postgres::build_pool(&config.store.postgres)?;
        let membership = MembershipStore::new(pool.clone());
        let ttl = Duration::from_millis(cluster.lease_ttl_ms);
        let removed = membership.down_old_incarnations(&me.node, &me.incarnation).await?;
        if !removed.is_empty() {
            info!(?removed, "previous incarnations of this node removed");
        }
        membership.join(&me, &address, ttl).await?;
        let keeper = LeaseKeeper::start(&config.store.postgres, me.clone(), KeeperOptions::new(ttl)).await?;

        let context = Arc::new(ClusterContext {
            me_key: me.to_string(),
            me: me.clone(),
            config: cluster.clone(),
            service_name: config.service_name.clone(),
            num_shards: config.entities.num_shards,
            ask_timeout: Duration::from_secs(config.entities.command_handler_timeout_secs),
            membership,
            allocations: AllocationStore::new(pool.clone()),
            region: OnceLock::new(),
            view: RwLock::new(SharedView::default()),
            coordinator: Mutex::new(None),
            last_view: Mutex::new(None),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let bind_port = if cluster.bind_port == 0 { cluster.port } else { cluster.bind_port };
        let bind: SocketAddr = format!("{}:{bind_port}", cluster.bind_address)
            .parse()
            .map_err(|e| Error::Corrupt(format!("cluster bind address {}:{bind_port}: {e}", cluster.bind_address)))?;
        let transport = RactorTransport::start(bind, &context.me_key, &host, cluster.cookie.expose(), tls, events_tx)
            .await
            .map_err(|e| Error::Corrupt(format!("cannot start the node-to-node listener on {bind}: {e}")))?;
        let (peer, _) = Actor::spawn(Some(peer_actor_name(&context.me_key)), PeerActor, context.clone())
            .await
            .map_err(|e| Error::Corrupt(format!("cannot start the peer actor: {e}")))?;
        let (membership_tx, membership_state) = watch::channel(Membership::Joining);
        let (stop_daemon, stop_rx) = watch::channel(false);
        let transport = Arc::new(transport);
        let daemon = Daemon::new(
            context.clone(),
            transport.clone(),
            Leases::new(pool.clone()),
            keeper.health(),
            membership_tx,
            events,
        );
        let daemon = tokio::spawn(daemon.run(stop_rx));
        info!(member = %me, %address, "joined the cluster as joining");
        Ok(Self {
            context,
            transport,
            lease_clock: keeper.clock(),
            keeper: Some(keeper),
            peer,
            daemon,
            stop_daemon,
            membership_state,
            leases: Leases::new(pool),
        })
    }

    pub fn member(&self) -> MemberId {
        self.context.me.clone()
    }

    /// The clock entities check before acting for this member (see [`LeaseClock`](super::keeper::LeaseClock)).
    pub fn lease_clock(&self) -> super::keeper::LeaseClock {
        self.lease_clock.clone()
    }

    pub fn context(&self) -> Arc<ClusterContext> {
        self.context.clone()
    }

    /// Plugs in the node's region (once it is started).
    pub fn set_region(&self, region: ActorRef<RegionMessage>) {
        let _ = self.context.region.set(region);
    }

    /// This member's state: `Up` means ready; `Stopped` means the node must exit.
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership_state.clone()
    }

    /// The actors of the cluster layer, for the admin endpoint.
    pub fn actor_roots(&self) -> Vec<ActorCell> {
        let mut roots = vec![self.peer.get_cell(), self.transport.server().get_cell()];
        roots.extend(self.context.local_coordinator().map(|c| c.get_cell()));
        roots
    }

    /// Whether the node should take traffic (`/ready`), or why not: it must be an `up` member that read the
    /// database recently (the journal is reachable).
    pub fn readiness_probe(&self) -> impl Fn() -> Result<(), String> + Send + 'static {
        let membership = self.membership_state.clone();
        let context = self.context.clone();
        move || {
            match &*membership.borrow() {
                Membership::Joining => return Err("joining the cluster".into()),
                Membership::Leaving => return Err("leaving the cluster".into()),
                Membership::Stopped(reason) => return Err(format!("stopped: {reason}")),
                Membership::Up => {}
            }
            let fresh = Duration::from_millis(context.config.heartbeat_interval_ms * 3).max(Duration::from_secs(2));
            match *context.last_view.lock().expect("view lock") {
                Some(at) if at.elapsed() <= fresh => Ok(()),
                _ => Err("the database (journal) did not answer recently".into()),
            }
        }
    }

    /// A source of `/cluster`.
    pub fn status_source(&self) -> Arc<dyn ClusterStatusSource> {
        Arc::new(StatusSource { context: self.context.clone() })
    }

    /// Graceful leave (SIGTERM): `leaving` → the coordinator hands this member's shards off → `exiting` →
    /// `removed`; then the links close. Entities of shards not handed off in time are stopped by the caller.
    pub async fn leave(mut self) {
        let me = self.context.me.clone();
        let timeout = Duration::from_millis(self.context.config.leave_timeout_ms);
        if let Err(e) = self.context.membership.leave(&me).await {
            warn!(error = %e, "could not mark this member leaving");
        }
        info!(member = %me, "leaving the cluster: handing shards off");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let Some(leader) = self.context.leader() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let request = peer_request::Kind::GracefulLeave(pb::GracefulLeave { member: self.context.me_key.clone() });
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.context.request(&leader, request, remaining).await {
                Ok(pb::PeerReply { kind: Some(peer_reply::Kind::Ack(_)) }) => {
                    info!("every shard of this member was handed off");
                    break;
                }
                other => {
                    debug!(?other, "graceful leave not acknowledged yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let _ = self.stop_daemon.send(true);
        let _ = (&mut self.daemon).await;
        if let Some(coordinator) = self.context.coordinator.lock().expect("coordinator lock").take() {
            coordinator.stop(Some("leaving".into()));
        }
        let _ = self.leases.release(LEADER, &me).await;
        let _ = self.context.membership.exiting(&me).await;
        let _ = self.context.membership.remove(&me).await;
        if let Some(keeper) = self.keeper.take() {
            keeper.stop().await;
        }
        self.peer.stop(None);
        self.transport.stop();
        info!(member = %me, "left the cluster");
    }

    /// Stops without leaving (the node was fenced or downed: others take over once its lease expired).
    pub async fn abandon(mut self) {
        let _ = self.stop_daemon.send(true);
        let _ = (&mut self.daemon).await;
        if let Some(coordinator) = self.context.coordinator.lock().expect("coordinator lock").take() {
            coordinator.stop(None);
        }
        if let Some(keeper) = self.keeper.take() {
            keeper.stop().await;
        }
        self.peer.stop(None);
        self.transport.stop();
    }
}

/// Completes once the lease keeper reports this member fenced (or is gone), with the reason.
async fn fenced(health: &mut watch::Receiver<Health>) -> String {
    loop {
        if let Health::Fenced { reason } = &*health.borrow_and_update() {
            return reason.clone();
        }
        if health.changed().await.is_err() {
            return "lease keeper stopped".into();
        }
    }
}

/// The daemon: one loop per `heartbeat_interval`.
struct Daemon {
    context: Arc<ClusterContext>,
    transport: Arc<RactorTransport>,
    leases: Leases,
    health: watch::Receiver<Health>,
    membership: watch::Sender<Membership>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    detectors: HashMap<MemberId, PhiAccrual>,
    /// Members this node reported unreachable.
    reported_unreachable: BTreeSet<MemberId>,
    leader_epoch: Option<i64>,
    stability: Stability,
    last_version: i64,
    strategy: Strategy,
    /// Per address: when it was last dialled and how many dials in a row did not produce a link.
    last_dial: HashMap<String, (Instant, u32)>,
    last_discovery: Option<Instant>,
    sequence: u64,
    pongs: (mpsc::UnboundedSender<MemberId>, mpsc::UnboundedReceiver<MemberId>),
}

impl Daemon {
    fn new(
        context: Arc<ClusterContext>,
        transport: Arc<RactorTransport>,
        leases: Leases,
        health: watch::Receiver<Health>,
        membership: watch::Sender<Membership>,
        events: mpsc::UnboundedReceiver<LinkEvent>,
    ) -> Self {
        let c = &context.config;
        let strategy = match c.sbr_strategy.as_str() {
            "static-quorum" => Strategy::StaticQuorum { quorum_size: c.sbr_quorum_size },
            "keep-oldest" => Strategy::KeepOldest { down_if_alone: c.sbr_down_if_alone },
            "down-all" => Strategy::DownAll,
            "lease-majority" => Strategy::LeaseMajority { acquire_delay_for_minority: Duration::from_secs(2) },
            _ => Strategy::KeepMajority,
        };
        let stability = Stability::new(Duration::from_millis(c.sbr_stable_after_ms), c.sbr_down_all_when_unstable);
        Self {
            context,
            transport,
            leases,
            health,
            membership,
            events,
            detectors: HashMap::new(),
            reported_unreachable: BTreeSet::new(),
            leader_epoch: None,
            stability,
            last_version: -1,
            strategy,
            last_dial: HashMap::new(),
            last_discovery: None,
            sequence: 0,
            pongs: mpsc::unbounded_channel(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.context.config.heartbeat_interval_ms);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Watched apart from `self`, so that fencing is seen while a tick waits on the database: cut off from
        // it, a tick's query can hang until TCP gives up, minutes after the lease expired.
        let mut health = self.health.clone();
        let fenced = loop {
            tokio::select! {
                _ = ticker.tick() => tokio::select! {
                    () = self.tick() => {}
                    reason = fenced(&mut health) => break Some(reason),
                },
                Some(event) = self.events.recv() => self.link_event(event),
                Some(member) = self.pongs.1.recv() => {
                    if let Some(detector) = self.detectors.get_mut(&member) {
                        detector.heartbeat(Instant::now());
                    }
                }
                reason = fenced(&mut health) => break Some(reason),
                _ = stop.changed() => break None,
            }
        };
        if let Some(reason) = fenced {
            warn!(%reason, "this member is fenced: stopping");
            let _ = self.membership.send(Membership::Stopped(reason));
        }
        if let Some(coordinator) = self.context.coordinator.lock().expect("coordinator lock").take() {
            coordinator.stop(None);
        }
    }

    fn link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up(member) => {
                debug!(%member, "link up");
                self.context.view.write().expect("view lock").linked.insert(member);
            }
            LinkEvent::Down(member) => {
                info!(%member, "link down");
                self.context.view.write().expect("view lock").linked.remove(&member);
                if let Some(region) = self.context.region() {
                    let _ = region.send_message(RegionMessage::MemberGone { member });
                }
            }
        }
    }

    async fn tick(&mut self) {
        let snapshot = match self.context.membership.snapshot().await {
            Ok(snapshot) => {
                *self.context.last_view.lock().expect("view lock") = Some(Instant::now());
                Arc::new(snapshot)
            }
            Err(e) => {
                warn!(error = %e, "cannot read the cluster membership");
                // Keep pinging the members last seen: node-to-node failure detection must not depend on the
                // database (without this, a database outage longer than the acceptable heartbeat pause made every
                // member suspect every other one, and tear down its links, as soon as the database came back).
                let last = self.context.view.read().expect("view lock").snapshot.clone();
                if let Some(snapshot) = last {
                    let linked = self.transport.connected().await;
                    self.heartbeat(&snapshot, &linked, Instant::now()).await;
                }
                return;
            }
        };
        let now = Instant::now();
        let me = self.context.me.clone();
        let my_status = snapshot.members.iter().find(|m| m.id == me).map(|m| m.status);
        match my_status {
            Some(MemberStatus::Up) => {
                self.membership.send_if_modified(|m| {
                    let changed = *m == Membership::Joining;
                    if changed {
                        info!(member = %me, "this member is up");
                        *m = Membership::Up;
                    }
                    changed
                });
            }
            Some(MemberStatus::Leaving | MemberStatus::Exiting) => {
                let _ = self.membership.send_if_modified(|m| {
                    let changed = *m != Membership::Leaving;
                    *m = Membership::Leaving;
                    changed
                });
            }
            Some(status @ (MemberStatus::Down | MemberStatus::Removed)) => {
                warn!(%status, "this member was {status}: stopping");
                let _ = self.membership.send(Membership::Stopped(format!("member {status}")));
                return;
            }
            Some(MemberStatus::Joining) | None => {}
        }
        if snapshot.version != self.last_version {
            self.last_version = snapshot.version;
            self.stability.changed(now.into());
        }
        // Every member tracks instability, so that one that becomes leader does not inherit a stale period.
        self.stability.observe(View::from_snapshot(&snapshot, &me).has_unreachable());

        let linked = self.transport.connected().await;
        self.dial(&snapshot, &linked).await;
        self.heartbeat(&snapshot, &linked, now).await;
        let leader = self
            .leases
            .holder(LEADER)
            .await
            .ok()
            .flatten()
            .filter(|h| h.expires_at > std::time::SystemTime::now() - Duration::from_secs(1));
        {
            let mut view = self.context.view.write().expect("view lock");
            view.snapshot = Some(snapshot.clone());
            view.linked = linked.clone();
            view.leader = leader.as_ref().map(|h| h.holder.to_string());
        }
        self.lead(&snapshot, &linked, now).await;
    }

    /// Links to every live member without a link (and, now and then, to seeds and DNS-discovered addresses).
    async fn dial(&mut self, snapshot: &ClusterSnapshot, linked: &HashSet<String>) {
        // Dials back off exponentially (a blackholed peer accepts the TCP connection and never answers the
        // handshake, which ractor_cluster does not time out); a link resets the backoff.
        let base = Duration::from_millis(self.context.config.heartbeat_interval_ms.max(500));
        for member in snapshot.members.iter().filter(|m| linked.contains(&m.id.to_string())) {
            self.last_dial.remove(&member.address);
        }
        let mut targets: Vec<String> = snapshot
            .members
            .iter()
            .filter(|m| m.id != self.context.me && !m.status.is_terminal() && m.lease_valid)
            .filter(|m| !linked.contains(&m.id.to_string()))
            .map(|m| m.address.clone())
            .collect();
        // Seeds and discovered addresses help while some live member has no link yet (or none is known): its
        // recorded address may not be reachable from here while another route to it is.
        let unlinked = targets.len();
        let discover = self.last_discovery.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if discover && (linked.is_empty() || unlinked > 0) {
            self.last_discovery = Some(Instant::now());
            let linked_addresses: HashSet<&str> = snapshot
                .members
                .iter()
                .filter(|m| linked.contains(&m.id.to_string()))
                .map(|m| m.address.as_str())
                .collect();
            let mut found = self.context.config.seeds.clone();
            found.extend(super::discovery::discover(&self.context.service_name, &self.context.config).await);
            targets.extend(found.into_iter().filter(|a| !linked_addresses.contains(a.as_str())));
        }
        let me_address = format!("{}:{}", advertised_host(&self.context.config), self.context.config.port);
        for address in targets {
            let attempts = self.last_dial.get(&address).map_or(0, |(_, n)| *n);
            let wait = base
                .checked_mul(2u32.saturating_pow(attempts.saturating_sub(1)))
                .map_or(Duration::from_secs(5), |w| w.min(Duration::from_secs(5)));
            if address == me_address || self.last_dial.get(&address).is_some_and(|(t, _)| t.elapsed() < wait) {
                continue;
            }
            self.last_dial.insert(address.clone(), (Instant::now(), attempts + 1));
            let transport = self.transport.clone();
            tokio::spawn(async move {
                if let Err(e) = transport.dial(&address).await {
                    debug!(%address, error = %e, "dial failed");
                }
            });
        }
    }

    /// Pings every live member, updates the detectors, reports reachability changes, and tears down the links
    /// of members it convicts (ractor_cluster would keep a dead link open forever).
    async fn heartbeat(&mut self, snapshot: &ClusterSnapshot, linked: &HashSet<String>, now: Instant) {
        let c = &self.context.config;
        let others: Vec<MemberId> = snapshot
            .members
            .iter()
            .filter(|m| {
                m.id != self.context.me
                    && matches!(
                        m.status,
                        MemberStatus::Up | MemberStatus::Leaving | MemberStatus::Joining | MemberStatus::Exiting
                    )
            })
            .map(|m| m.id.clone())
            .collect();
        // Members no longer live (downed, removed): a downed member may still hold a link that nothing will close
        // (cut off, it sends no FIN), and regions would keep forwarding its old shards' requests over it.
        let gone: Vec<MemberId> = self.detectors.keys().filter(|m| !others.contains(m)).cloned().collect();
        for member in gone {
            self.member_gone(&member, "member no longer live").await;
        }
        self.detectors.retain(|m, _| others.contains(m));
        self.reported_unreachable.retain(|m| others.contains(m));
        self.sequence += 1;
        for member in &others {
            let detector = self.detectors.entry(member.clone()).or_insert_with(|| {
                PhiAccrual::new(
                    c.phi_threshold,
                    Duration::from_millis(c.acceptable_heartbeat_pause_ms),
                    Duration::from_millis(c.heartbeat_interval_ms),
                    now,
                )
            });
            let key = member.to_string();
            if linked.contains(&key) {
                let context = self.context.clone();
                let pongs = self.pongs.0.clone();
                let member = member.clone();
                let sequence = self.sequence;
                let timeout = Duration::from_millis(c.acceptable_heartbeat_pause_ms);
                tokio::spawn(async move {
                    let ping = peer_request::Kind::Ping(pb::Ping { sequence });
                    if let Ok(pb::PeerReply { kind: Some(peer_reply::Kind::Pong(_)) }) =
                        context.request(&key, ping, timeout).await
                    {
                        let _ = pongs.send(member);
                    }
                });
            }
            let available = detector.is_available(now);
            let reported = self.reported_unreachable.contains(member);
            if !available && !reported {
                warn!(%member, "member unreachable");
                if self.context.membership.report(&self.context.me, member, false).await.is_ok() {
                    self.reported_unreachable.insert(member.clone());
                }
                self.member_gone(member, "failure detector").await;
            } else if available && reported && linked.contains(&member.to_string()) {
                info!(%member, "member reachable again");
                if self.context.membership.report(&self.context.me, member, true).await.is_ok() {
                    self.reported_unreachable.remove(member);
                }
            }
        }
    }

    /// Tears down `member`'s link (ractor_cluster would keep a dead one open forever) and tells the region, which
    /// forgets the shard homes it had there.
    async fn member_gone(&self, member: &MemberId, why: &str) {
        debug!(%member, why, "member gone");
        self.transport.disconnect(&member.to_string()).await;
        if let Some(region) = self.context.region() {
            let _ = region.send_message(RegionMessage::MemberGone { member: member.to_string() });
        }
    }

    /// The leader's duties, if this member is (or should be) the leader.
    async fn lead(&mut self, snapshot: &Arc<ClusterSnapshot>, linked: &HashSet<String>, now: Instant) {
        let me = self.context.me.clone();
        if !self.is_leader_candidate(snapshot) {
            self.leader_epoch = None;
            self.stop_coordinator();
            return;
        }
        let ttl = Duration::from_millis(self.context.config.lease_ttl_ms);
        let epoch = match self.leases.acquire(LEADER, &me, ttl).await {
            Ok(Some(epoch)) => epoch,
            Ok(None) => {
                self.leader_epoch = None;
                self.stop_coordinator();
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot renew the leader lease");
                return;
            }
        };
        if self.leader_epoch != Some(epoch) {
            info!(epoch, "this member leads the cluster");
            self.stop_coordinator();
            self.leader_epoch = Some(epoch);
        }
        // The first node forms the cluster once the required contact points have joined (COS_REPLICA_COUNT). Only
        // members with an authenticated link to the leader are promoted: the database alone does not make a node a
        // member (one with the wrong cookie or certificate has a row, but never a link).
        let live = snapshot.members.iter().filter(|m| !m.status.is_terminal() && m.lease_valid).count();
        let any_up = snapshot.members.iter().any(|m| m.status == MemberStatus::Up);
        let eligible = |member: &MemberId| *member == me || linked.contains(&member.to_string());
        if (any_up || live >= self.context.config.replica_count)
            && let Err(e) = self.context.membership.promote_joining_if(&me, 1, &eligible).await
        {
            warn!(error = %e, "cannot promote joining members");
        }
        // Dead members: their lease expired, so they have stopped writing; down them at once (no SBR wait).
        let expired: Vec<MemberId> = snapshot
            .members
            .iter()
            .filter(|m| m.id != me && !m.lease_valid && !m.status.is_terminal())
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            info!(?expired, "downing members whose lease expired");
            let _ = self.context.membership.down(&expired, snapshot.version, &me).await;
            // Their shards need not wait for the next tick: the coordinator deallocates the shards of members whose
            // lease expired, which this snapshot already shows.
            if let Some(coordinator) = self.context.local_coordinator() {
                let _ = coordinator.send_message(CoordinatorMessage::Members(snapshot.clone()));
            }
            return;
        }
        for member in snapshot.members.iter().filter(|m| m.id != me && !m.lease_valid) {
            if matches!(member.status, MemberStatus::Down | MemberStatus::Exiting) {
                let _ = self.context.membership.remove(&member.id).await;
            }
        }
        self.resolve_split_brain(snapshot, now).await;
        self.ensure_coordinator(snapshot, epoch).await;
    }

    fn is_leader_candidate(&self, snapshot: &ClusterSnapshot) -> bool {
        let me = &self.context.me;
        let unreachable = &self.reported_unreachable;
        let mut up: Vec<_> = snapshot
            .members
            .iter()
            // Akka's leader is the first member that is up or leaving: a leaving leader keeps leading (and
            // coordinating its own hand-off) until it releases the lease.
            .filter(|m| m.status.may_write() && m.lease_valid && !unreachable.contains(&m.id))
            .collect();
        if up.is_empty() {
            // No cluster yet: the oldest joining member forms it.
            let mut joining: Vec<_> =
                snapshot.members.iter().filter(|m| m.status == MemberStatus::Joining && m.lease_valid).collect();
            joining.sort_by_key(|m| (m.joined_at, m.id.clone()));
            return joining.first().is_some_and(|m| &m.id == me);
        }
        up.sort_by_key(|m| (m.up_number, m.id.clone()));
        up.first().is_some_and(|m| &m.id == me)
    }

    async fn resolve_split_brain(&mut self, snapshot: &ClusterSnapshot, now: Instant) {
        let me = &self.context.me;
        let view = View::from_snapshot(snapshot, me);
        let targets = match self.stability.tick(now.into(), view.has_unreachable()) {
            Tick::Wait => return,
            Tick::Decide => {
                let decision = sbr::decide(self.strategy, &view);
                // Lease-majority: the leader lease is the lease; holding it, this side wins.
                let decision = match decision {
                    sbr::Decision::AcquireLeaseAndDownUnreachable { .. } => sbr::Decision::DownUnreachable,
                    sbr::Decision::AcquireLeaseAndDownIndirectlyConnected { .. } => {
                        sbr::Decision::DownIndirectlyConnected
                    }
                    other => other,
                };
                warn!(?decision, strategy = ?self.strategy, "split-brain resolver decided");
                sbr::nodes_to_down(self.strategy, &view, decision)
            }
            Tick::DownAllUnstable => {
                warn!("the cluster stayed unstable too long: downing every member");
                view.members.iter().map(|m| m.id.clone()).collect()
            }
        };
        if targets.is_empty() {
            return;
        }
        match self.context.membership.down(&targets, snapshot.version, me).await {
            Ok(true) => self.stability.decided(now.into()),
            Ok(false) => debug!("split-brain decision not applied: the view changed"),
            Err(e) => warn!(error = %e, "cannot apply the split-brain decision"),
        }
    }

    async fn ensure_coordinator(&mut self, snapshot: &Arc<ClusterSnapshot>, epoch: i64) {
        let existing = self.context.local_coordinator();
        if let Some(coordinator) = existing
            && coordinator.get_status() == ractor::ActorStatus::Running
        {
            let _ = coordinator.send_message(CoordinatorMessage::Members(snapshot.clone()));
            return;
        }
        let args = CoordinatorArgs { context: self.context.clone(), epoch, snapshot: snapshot.clone() };
        match Actor::spawn(None, Coordinator, args).await {
            Ok((coordinator, _)) => *self.context.coordinator.lock().expect("coordinator lock") = Some(coordinator),
            Err(e) => warn!(error = %e, "cannot start the shard coordinator"),
        }
    }

    fn stop_coordinator(&self) {
        if let Some(coordinator) = self.context.coordinator.lock().expect("coordinator lock").take() {
            info!("stopping the shard coordinator");
            coordinator.stop(Some("not the leader".into()));
        }
    }
}

/// `/cluster` for a cluster member.
struct StatusSource {
    context: Arc<ClusterContext>,
}

#[async_trait::async_trait]
impl ClusterStatusSource for StatusSource {
    async fn status(&self) -> ClusterStatus {
        // The shard map is read when asked for (an admin request, a metrics scrape), not on every daemon tick;
        // if the database does not answer, the last map read is shown.
        if let Ok(shards) = self.context.allocations.load().await {
            self.context.view.write().expect("view lock").shards = shards.into_iter().collect();
        }
        let view = self.context.view.read().expect("view lock");
        let now = std::time::SystemTime::now();
        let unreachable: BTreeSet<MemberId> =
            view.snapshot.as_ref().map(|s| s.unreachable().into_iter().collect()).unwrap_or_default();
        let members: Vec<MemberStatusView> = view
            .snapshot
            .as_ref()
            .map(|s| {
                s.members
                    .iter()
                    .filter(|m| m.status != MemberStatus::Removed)
                    .map(|m| {
                        let key = m.id.to_string();
                        MemberStatusView {
                            id: key.clone(),
                            node: m.id.node.clone(),
                            incarnation: m.id.incarnation.clone(),
                            address: m.address.clone(),
                            status: m.status.to_string(),
                            up_number: m.up_number,
                            reachable: !unreachable.contains(&m.id),
                            lease_expires_in_ms: match m.lease_expires_at.duration_since(now) {
                                Ok(d) => d.as_millis() as i64,
                                Err(e) => -(e.duration().as_millis() as i64),
                            },
                            connected: key == self.context.me_key || view.linked.contains(&key),
                            shards: view.shards.iter().filter(|(_, o)| *o == m.id).count() as u32,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let oldest = members
            .iter()
            .filter(|m| m.status == "up" && m.up_number.is_some())
            .min_by_key(|m| m.up_number)
            .map(|m| m.id.clone());
        let self_member = members.iter().find(|m| m.id == self.context.me_key).cloned().unwrap_or_default();
        ClusterStatus {
            enabled: true,
            self_member,
            leader: view.leader.clone(),
            coordinator: view.leader.clone(),
            oldest,
            members,
            num_shards: self.context.num_shards,
            shards: view
                .shards
                .iter()
                .map(|(shard, m)| ShardHomeView { shard: *shard, member: m.to_string(), node: m.node.clone() })
                .collect(),
        }
    }
}

/// The host name of this machine (`/proc/sys/kernel/hostname`, then `HOSTNAME`), for the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "regent".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect()
}

/// The host other nodes reach this one at: `REGENT_CLUSTER_HOST`, else `POD_IP`, else the host name.
fn advertised_host(config: &ClusterConfig) -> String {
    if !config.host.is_empty() {
        config.host.clone()
    } else if !config.pod_ip.is_empty() {
        config.pod_ip.clone()
    } else {
        host_name()
    }
}
