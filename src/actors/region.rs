//! `ShardRegion`: the entry point of a node's entities. Unsupervised root of the node's actor tree (the node's
//! composition root owns it); supervises one [`ShardActor`] per shard hosted here, spawned on first use and
//! restarted on the next message if it fails.
//!
//! Alone, a node hosts every shard. In a cluster ([`RegionArgs::cluster`]) the region learns each shard's home
//! from the shard coordinator, as Akka's regions do (`shared/spec/cluster.md` B.4, C.5): it buffers a shard's
//! requests while it asks, then delivers them to its own shard or forwards them to the owner's region over
//! ractor_cluster. It hosts a shard only once the coordinator told it to (`HostShard`), and stops it when told
//! to hand it off; a request forwarded to it for a shard it does not host is refused as "wrong home", and the
//! sender asks again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, warn};

use super::entity::{EntityMessage, EntitySettings};
use super::read_side_supervisor::SupervisorMessage;
use super::shard::{ShardActor, ShardArgs, ShardMessage};
use super::{CommandError, shard_of};
use crate::cluster::runtime::ClusterContext;

/// Requests buffered per shard while its home is unknown; beyond that, requests fail at once.
const MAX_BUFFERED_PER_SHARD: usize = 10_000;
/// How often a region asks again for a shard whose home the coordinator could not give yet.
const LOOKUP_RETRY: Duration = Duration::from_millis(200);
/// How many times one request is re-routed (its home moved while it was in flight) before it fails.
const MAX_REROUTES: u8 = 5;

pub struct ShardRegion;

/// The shards hosted here, as the region publishes them: callers on this node send a request straight to its
/// shard when it is listed, and through the region otherwise (first use, a remote or unknown home, a hand-off).
/// The region lists a shard once its actor runs here and unlists it before it stops hosting it, so a request sent
/// straight to a listed shard is one the region would have delivered there too.
pub struct LocalShards {
    num_shards: u32,
    shards: RwLock<Vec<Option<ActorRef<ShardMessage>>>>,
}

impl LocalShards {
    pub fn new(num_shards: u32) -> LocalShards {
        LocalShards { num_shards, shards: RwLock::new(vec![None; num_shards as usize]) }
    }

    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    /// The actor of `shard` if it is hosted here and running.
    pub fn get(&self, shard: u32) -> Option<ActorRef<ShardMessage>> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).get(shard as usize).cloned().flatten()
    }

    fn set(&self, shard: u32, actor: Option<ActorRef<ShardMessage>>) {
        if let Some(slot) = self.shards.write().unwrap_or_else(|e| e.into_inner()).get_mut(shard as usize) {
            *slot = actor;
        }
    }

    /// Unlists `shard` if `actor` is the one listed.
    fn unset_if(&self, shard: u32, actor: &ActorId) {
        if let Some(slot) = self.shards.write().unwrap_or_else(|e| e.into_inner()).get_mut(shard as usize)
            && slot.as_ref().is_some_and(|a| a.get_id() == *actor)
        {
            *slot = None;
        }
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum RegionMessage {
    /// Route a message to the entity's shard, wherever it lives.
    Route { entity_id: String, message: EntityMessage },
    /// A request forwarded by another node's region: deliver it only if the shard is hosted here.
    Deliver { entity_id: String, message: EntityMessage },
    /// The coordinator's answer: `home` is `node.incarnation`, `None` when it could not say yet.
    ShardHome { shard: u32, home: Option<String> },
    /// Ask the coordinator again for shards still without a home.
    RetryLookups,
    /// A request whose forward failed because its home moved: route it again.
    Reroute { entity_id: String, message: EntityMessage, stale_home: String, attempts: u8 },
    /// The coordinator allocated `shard` here.
    HostShard { shard: u32, reply: RpcReplyPort<bool> },
    /// The coordinator is moving `shard`: forget its home and ask again.
    BeginHandOff { shard: u32, reply: RpcReplyPort<()> },
    /// The coordinator is moving `shard` away from here: stop its entities, then reply.
    HandOff { shard: u32, reply: RpcReplyPort<()> },
    /// A shard stopped by a hand-off has terminated.
    ShardStopped { shard: u32 },
    /// The link to a member is gone: forget the homes on it.
    MemberGone { member: String },
}

pub struct RegionArgs {
    pub num_shards: u32,
    pub settings: EntitySettings,
    pub passivation_idle: Option<Duration>,
    /// At most this many live entities on this node, shared evenly by the shards hosted here (`None`: no limit).
    pub active_entity_limit: Option<usize>,
    /// `Some` in a cluster: shards are hosted where the coordinator says.
    pub cluster: Option<Arc<ClusterContext>>,
    /// The read sides, whose processors follow the shards hosted here (in a cluster).
    pub read_sides: Option<ActorRef<SupervisorMessage>>,
    /// Where the region lists the shards running here, for callers to reach them without the region's hop.
    pub local_shards: Arc<LocalShards>,
}

/// Where a shard lives, as this region knows it.
enum Home {
    Local,
    Remote(String),
    /// Unknown: requests wait here while the coordinator is asked.
    Unknown {
        buffer: Vec<(String, EntityMessage)>,
        asking: bool,
    },
}

pub struct RegionState {
    args: RegionArgs,
    shards: HashMap<u32, ActorRef<ShardMessage>>,
    by_actor: HashMap<ActorId, u32>,
    homes: HashMap<u32, Home>,
    /// Shards handed off whose actors have not terminated yet: not hosted again until they have.
    stopping: HashSet<u32>,
    retry_scheduled: bool,
}

impl Actor for ShardRegion {
    type Msg = RegionMessage;
    type State = RegionState;
    type Arguments = RegionArgs;

    async fn pre_start(&self, _: ActorRef<RegionMessage>, args: RegionArgs) -> Result<RegionState, ActorProcessingErr> {
        Ok(RegionState {
            args,
            shards: HashMap::new(),
            by_actor: HashMap::new(),
            homes: HashMap::new(),
            stopping: HashSet::new(),
            retry_scheduled: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RegionMessage>,
        message: RegionMessage,
        state: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegionMessage::Route { entity_id, message } => state.route(&myself, entity_id, message, 0).await,
            RegionMessage::Reroute { entity_id, message, stale_home, attempts } => {
                let shard = state.shard_of(&entity_id);
                if matches!(state.homes.get(&shard), Some(Home::Remote(home)) if *home == stale_home) {
                    state.homes.remove(&shard);
                }
                if attempts >= MAX_REROUTES {
                    message.fail(&format!("shard {shard} keeps moving; try again"));
                } else {
                    state.route(&myself, entity_id, message, attempts + 1).await;
                }
            }
            RegionMessage::Deliver { entity_id, message } => {
                let shard = state.shard_of(&entity_id);
                if state.is_local(shard) {
                    state.deliver_local(&myself, shard, entity_id, message).await;
                } else {
                    message.reply_err(CommandError::WrongHome { shard });
                }
            }
            RegionMessage::ShardHome { shard, home } => state.shard_home(&myself, shard, home).await,
            RegionMessage::RetryLookups => {
                state.retry_scheduled = false;
                let waiting: Vec<u32> = state
                    .homes
                    .iter()
                    .filter(|(_, h)| matches!(h, Home::Unknown { asking: false, .. }))
                    .map(|(s, _)| *s)
                    .collect();
                for shard in waiting {
                    state.prune_abandoned(shard);
                    state.ask_home(&myself, shard);
                }
            }
            RegionMessage::HostShard { shard, reply } => {
                if state.stopping.contains(&shard) {
                    let _ = reply.send(false);
                    return Ok(());
                }
                let previous = state.homes.insert(shard, Home::Local);
                let _ = reply.send(true);
                debug!(shard, "hosting shard");
                if let (Some(read_sides), None | Some(Home::Unknown { .. } | Home::Remote(_))) =
                    (&state.args.read_sides, &previous)
                {
                    let _ = read_sides.send_message(SupervisorMessage::HostShard(shard));
                }
                if let Some(Home::Unknown { buffer, .. }) = previous {
                    for (entity_id, message) in buffer {
                        state.deliver_local(&myself, shard, entity_id, message).await;
                    }
                }
            }
            RegionMessage::BeginHandOff { shard, reply } => {
                if matches!(state.homes.get(&shard), Some(Home::Remote(_))) {
                    state.homes.insert(shard, Home::Unknown { buffer: Vec::new(), asking: false });
                    state.schedule_retry(&myself);
                }
                let _ = reply.send(());
            }
            RegionMessage::HandOff { shard, reply } => state.hand_off(&myself, shard, reply),
            RegionMessage::ShardStopped { shard } => {
                state.stopping.remove(&shard);
            }
            RegionMessage::MemberGone { member } => {
                let gone: Vec<u32> = state
                    .homes
                    .iter()
                    .filter(|(_, h)| matches!(h, Home::Remote(home) if *home == member))
                    .map(|(s, _)| *s)
                    .collect();
                for shard in gone {
                    state.homes.remove(&shard);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<RegionMessage>,
        event: SupervisionEvent,
        state: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match &event {
            SupervisionEvent::ActorTerminated(cell, ..) => cell,
            SupervisionEvent::ActorFailed(cell, error) => {
                warn!(error = %error, "shard actor failed; it restarts on its next message");
                cell
            }
            _ => return Ok(()),
        };
        if let Some(shard) = state.by_actor.remove(&cell.get_id()) {
            state.args.local_shards.unset_if(shard, &cell.get_id());
            if state.shards.get(&shard).is_some_and(|a| a.get_id() == cell.get_id()) {
                state.shards.remove(&shard);
                state.share_limit();
            }
        }
        Ok(())
    }
}

impl RegionState {
    fn shard_of(&self, entity_id: &str) -> u32 {
        shard_of(entity_id, self.args.num_shards)
    }

    fn is_local(&self, shard: u32) -> bool {
        self.args.cluster.is_none() || matches!(self.homes.get(&shard), Some(Home::Local))
    }

    async fn route(
        &mut self,
        myself: &ActorRef<RegionMessage>,
        entity_id: String,
        message: EntityMessage,
        attempts: u8,
    ) {
        let shard = self.shard_of(&entity_id);
        if self.is_local(shard) {
            self.deliver_local(myself, shard, entity_id, message).await;
            return;
        }
        match self.homes.entry(shard).or_insert_with(|| Home::Unknown { buffer: Vec::new(), asking: false }) {
            Home::Local => unreachable!("handled above"),
            Home::Remote(home) => {
                let home = home.clone();
                self.forward(myself, home, entity_id, message, attempts);
            }
            Home::Unknown { buffer, asking } => {
                if buffer.len() >= MAX_BUFFERED_PER_SHARD {
                    message.fail(&format!(
                        "shard {shard} has no home yet and {MAX_BUFFERED_PER_SHARD} requests wait for it"
                    ));
                    return;
                }
                buffer.push((entity_id, message));
                if !*asking {
                    self.ask_home(myself, shard);
                }
            }
        }
    }

    /// Asks the coordinator where `shard` lives; the answer comes back as [`RegionMessage::ShardHome`].
    fn ask_home(&mut self, myself: &ActorRef<RegionMessage>, shard: u32) {
        let Some(Home::Unknown { asking, .. }) = self.homes.get_mut(&shard) else { return };
        let Some(cluster) = self.args.cluster.clone() else { return };
        *asking = true;
        let region = myself.clone();
        tokio::spawn(async move {
            let home = cluster.shard_home(shard).await;
            let _ = region.send_message(RegionMessage::ShardHome { shard, home });
        });
    }

    async fn shard_home(&mut self, myself: &ActorRef<RegionMessage>, shard: u32, home: Option<String>) {
        let Some(cluster) = self.args.cluster.clone() else { return };
        let Some(Home::Unknown { .. }) = self.homes.get(&shard) else { return };
        match home {
            Some(home) if home != cluster.me_key() => {
                let Some(Home::Unknown { buffer, .. }) = self.homes.insert(shard, Home::Remote(home.clone())) else {
                    return;
                };
                for (entity_id, message) in buffer {
                    self.forward(myself, home.clone(), entity_id, message, 0);
                }
            }
            // Not known yet, or said to be here although no `HostShard` arrived (it moved meanwhile): ask again.
            _ => {
                if let Some(Home::Unknown { asking, .. }) = self.homes.get_mut(&shard) {
                    *asking = false;
                }
                self.schedule_retry(myself);
            }
        }
    }

    fn schedule_retry(&mut self, myself: &ActorRef<RegionMessage>) {
        if !self.retry_scheduled {
            self.retry_scheduled = true;
            myself.send_after(LOOKUP_RETRY, || RegionMessage::RetryLookups);
        }
    }

    /// Drops buffered requests whose caller gave up (ask timeout).
    fn prune_abandoned(&mut self, shard: u32) {
        if let Some(Home::Unknown { buffer, .. }) = self.homes.get_mut(&shard) {
            buffer.retain(|(_, message)| !message.is_abandoned());
        }
    }

    fn forward(
        &self,
        myself: &ActorRef<RegionMessage>,
        home: String,
        entity_id: String,
        message: EntityMessage,
        attempts: u8,
    ) {
        let Some(cluster) = self.args.cluster.clone() else { return };
        let region = myself.clone();
        let shard = self.shard_of(&entity_id);
        tokio::spawn(async move {
            if let Some(message) = cluster.forward(&home, shard, &entity_id, message).await {
                // Its home moved or is gone: route it again.
                let _ = region.send_message(RegionMessage::Reroute { entity_id, message, stale_home: home, attempts });
            }
        });
    }

    async fn deliver_local(
        &mut self,
        myself: &ActorRef<RegionMessage>,
        shard: u32,
        entity_id: String,
        message: EntityMessage,
    ) {
        let actor = match self.shards.get(&shard) {
            Some(actor) => actor.clone(),
            None => {
                let args = ShardArgs {
                    shard,
                    settings: self.args.settings.clone(),
                    passivation_idle: self.args.passivation_idle,
                    active_limit: self.shard_limit(self.shards.len() + 1),
                };
                match Actor::spawn_linked(None, ShardActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        self.by_actor.insert(actor.get_id(), shard);
                        self.shards.insert(shard, actor.clone());
                        self.args.local_shards.set(shard, Some(actor.clone()));
                        self.share_limit();
                        actor
                    }
                    Err(e) => {
                        message.fail(&format!("could not start shard {shard}: {e}"));
                        return;
                    }
                }
            }
        };
        if let Err(e) = actor.send_message(ShardMessage::Deliver { entity_id, message }) {
            // The shard is stopping; its termination event removes it and the next message restarts it.
            self.shards.remove(&shard);
            self.args.local_shards.set(shard, None);
            if let ractor::MessagingErr::SendErr(ShardMessage::Deliver { message, .. }) = e {
                message.fail(&format!("shard {shard} is restarting"));
            }
        }
    }

    /// A shard's share of the node's active-entity limit when `shards` shards are live.
    fn shard_limit(&self, shards: usize) -> Option<usize> {
        self.args.active_entity_limit.map(|limit| (limit / shards.max(1)).max(1))
    }

    /// Tells every live shard its share of the limit (the number of shards changed).
    fn share_limit(&self) {
        if self.args.active_entity_limit.is_none() {
            return;
        }
        let limit = self.shard_limit(self.shards.len());
        for shard in self.shards.values() {
            let _ = shard.send_message(ShardMessage::SetActiveLimit(limit));
        }
    }

    /// Stops the shard's entities (each finishes what it is processing) and the shard, then replies. Requests
    /// arriving meanwhile wait for the shard's new home.
    fn hand_off(&mut self, myself: &ActorRef<RegionMessage>, shard: u32, reply: RpcReplyPort<()>) {
        self.args.local_shards.set(shard, None);
        if matches!(self.homes.get(&shard), Some(Home::Local)) {
            self.homes.insert(shard, Home::Unknown { buffer: Vec::new(), asking: false });
            self.schedule_retry(myself);
        }
        let actor = self.shards.remove(&shard);
        self.share_limit();
        self.stopping.insert(shard);
        let timeout = self.args.cluster.as_ref().map(|c| c.handoff_timeout()).unwrap_or(Duration::from_secs(10));
        let region = myself.clone();
        let read_sides = self.args.read_sides.clone();
        tokio::spawn(async move {
            if let Some(actor) = actor {
                actor.stop_children_and_wait(Some("hand-off".into()), Some(timeout)).await;
                let _ = actor.stop_and_wait(Some("hand-off".into()), Some(Duration::from_secs(5))).await;
            }
            if let Some(read_sides) = read_sides {
                let _ = read_sides
                    .call(|reply| SupervisorMessage::ReleaseShard(shard, reply), Some(Duration::from_secs(15)))
                    .await;
            }
            debug!(shard, "shard handed off");
            let _ = region.send_message(RegionMessage::ShardStopped { shard });
            let _ = reply.send(());
        });
    }
}
