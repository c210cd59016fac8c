//! `ShardActor`: the entities of one shard. Supervised by the [`ShardRegion`](super::ShardRegion); supervises one
//! [`EntityActor`] per live entity, spawned on the entity's first message.
//!
//! Idle passivation follows Akka: every `idle / 4` the shard asks entities that received nothing for `idle` to
//! stop after their queued messages. Until the entity has stopped, new messages for it are buffered here and
//! delivered to its next incarnation, so an entity never runs twice and no message is lost.
//!
//! Every entity has a bounded queue: at most `entities.queue_limit` requests wait for it (in its mailbox, or here
//! while it passivates); beyond that a request is answered `RESOURCE_EXHAUSTED` at once, so a hot entity never
//! grows an unbounded backlog.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, warn};

use super::CommandError;
use super::entity::{EntityActor, EntityArgs, EntityMessage, EntitySettings};

pub struct ShardActor;

#[derive(ractor_cluster::RactorMessage)]
pub enum ShardMessage {
    /// Deliver a message to an entity of this shard.
    Deliver { entity_id: String, message: EntityMessage },
    /// Look for idle entities to passivate.
    PassivateIdle,
    /// At most this many live entities in this shard (its share of the node's limit); `None`: no limit.
    SetActiveLimit(Option<usize>),
    /// Report the shard's number and entities (the admin endpoint's `/actors`).
    Describe(RpcReplyPort<ShardDescription>),
}

/// What a shard reports of itself.
#[derive(Debug, Clone)]
pub struct ShardDescription {
    pub shard: u32,
    /// The entity id of each of its entity actors, those passivating included.
    pub entities: HashMap<ActorId, String>,
    /// Entities asked to passivate that have not stopped yet.
    pub passivating: Vec<String>,
}

pub struct ShardArgs {
    pub shard: u32,
    pub settings: EntitySettings,
    /// Stop entities idle for this long (`None`: never).
    pub passivation_idle: Option<Duration>,
    /// Passivate the least recently used entity beyond this many live ones (`None`: no limit).
    pub active_limit: Option<usize>,
}

pub struct ShardState {
    shard: u32,
    settings: EntitySettings,
    passivation_idle: Option<Duration>,
    active_limit: Option<usize>,
    active: HashMap<String, Live>,
    /// Entities asked to passivate that have not stopped yet, with the messages that arrived meanwhile.
    passivating: HashMap<String, Vec<EntityMessage>>,
    by_actor: HashMap<ActorId, String>,
}

struct Live {
    actor: ActorRef<EntityMessage>,
    last_message: Instant,
    /// Requests sent to the entity that it has not taken up yet (it counts them down).
    waiting: Arc<AtomicUsize>,
}

impl Actor for ShardActor {
    type Msg = ShardMessage;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMessage>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        if let Some(idle) = args.passivation_idle {
            let period = (idle / 4).max(Duration::from_millis(10));
            ractor::time::send_interval(period, myself.get_cell(), || ShardMessage::PassivateIdle);
        }
        Ok(ShardState {
            shard: args.shard,
            settings: args.settings,
            passivation_idle: args.passivation_idle,
            active_limit: args.active_limit,
            active: HashMap::new(),
            passivating: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMessage>,
        message: ShardMessage,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMessage::Deliver { entity_id, message } => state.deliver(&myself, entity_id, message).await,
            ShardMessage::PassivateIdle => state.passivate_idle(),
            ShardMessage::SetActiveLimit(limit) => {
                state.active_limit = limit;
                state.enforce_limit(0);
            }
            ShardMessage::Describe(reply) => {
                let _ = reply.send(state.describe());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMessage>,
        event: SupervisionEvent,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match &event {
            SupervisionEvent::ActorTerminated(cell, ..) => cell,
            SupervisionEvent::ActorFailed(cell, error) => {
                warn!(shard = state.shard, error = %error, "entity actor failed");
                cell
            }
            _ => return Ok(()),
        };
        let Some(entity_id) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
        if state.active.get(&entity_id).is_some_and(|live| live.actor.get_id() == cell.get_id()) {
            state.active.remove(&entity_id);
        }
        if let Some(buffered) = state.passivating.remove(&entity_id) {
            for message in buffered {
                state.deliver(&myself, entity_id.clone(), message).await;
            }
        }
        Ok(())
    }
}

impl ShardState {
    /// Hands `message` to its entity, starting the entity if needed. A request beyond `queue_limit` waiting
    /// for the entity (or for its passivation to end) is answered `RESOURCE_EXHAUSTED` instead of queued.
    async fn deliver(&mut self, myself: &ActorRef<ShardMessage>, entity_id: String, message: EntityMessage) {
        let limit = self.settings.queue_limit;
        if let Some(buffer) = self.passivating.get_mut(&entity_id) {
            if buffer.len() >= limit {
                message.reply_err(CommandError::Overloaded { entity_id, limit });
            } else {
                buffer.push(message);
            }
            return;
        }
        if let Some(live) = self.active.get_mut(&entity_id) {
            live.last_message = Instant::now();
            if live.waiting.load(Ordering::Relaxed) >= limit {
                message.reply_err(CommandError::Overloaded { entity_id, limit });
                return;
            }
            live.waiting.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = live.actor.send_message(message) {
                // The entity stopped on its own; its termination event will clean up. Answer the caller now.
                live.waiting.fetch_sub(1, Ordering::Relaxed);
                warn!(%entity_id, shard = self.shard, "entity mailbox closed");
                if let ractor::MessagingErr::SendErr(message) = e {
                    message.fail("entity stopped before it could take the request");
                }
            }
            return;
        }
        self.enforce_limit(1);
        let waiting = Arc::new(AtomicUsize::new(1));
        let args = EntityArgs {
            entity_id: entity_id.clone(),
            shard: self.shard,
            settings: self.settings.clone(),
            waiting: waiting.clone(),
        };
        match Actor::spawn_linked(None, EntityActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), entity_id.clone());
                let _ = actor.send_message(message);
                self.active.insert(entity_id, Live { actor, last_message: Instant::now(), waiting });
            }
            Err(e) => message.fail(&format!("could not start entity: {e}")),
        }
    }

    /// Passivates the least recently used entities until `room` more fit under the limit.
    fn enforce_limit(&mut self, room: usize) {
        let Some(limit) = self.active_limit else { return };
        while !self.active.is_empty() && self.active.len() + room > limit.max(1) {
            let (lru, _) = self
                .active
                .iter()
                .min_by_key(|(_, live)| live.last_message)
                .map(|(id, live)| (id.clone(), live.last_message))
                .expect("not empty");
            self.passivate(lru);
        }
    }

    fn passivate(&mut self, entity_id: String) {
        let Some(live) = self.active.remove(&entity_id) else { return };
        debug!(%entity_id, shard = self.shard, "passivating entity");
        if live.actor.send_message(EntityMessage::Passivate).is_ok() {
            self.passivating.insert(entity_id, Vec::new());
        }
    }

    fn describe(&self) -> ShardDescription {
        ShardDescription {
            shard: self.shard,
            entities: self.by_actor.clone(),
            passivating: self.passivating.keys().cloned().collect(),
        }
    }

    fn passivate_idle(&mut self) {
        let Some(idle) = self.passivation_idle else { return };
        let now = Instant::now();
        let idle_ids: Vec<String> = self
            .active
            .iter()
            .filter(|(_, live)| now.duration_since(live.last_message) >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for entity_id in idle_ids {
            self.passivate(entity_id);
        }
    }
}
