//! `ShardRegion`: the entry point of a node's entities. Unsupervised root of the node's actor tree (the node's
//! composition root owns it); supervises one [`ShardActor`] per shard in use, spawned on first use and restarted
//! on the next message if it fails.
//!
//! Every shard is local for now; the cluster issue teaches the region where remote shards live.

use std::collections::HashMap;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::warn;

use super::entity::{EntityMessage, EntitySettings};
use super::shard::{ShardActor, ShardArgs, ShardMessage};
use super::shard_of;

pub struct ShardRegion;

#[derive(ractor_cluster::RactorMessage)]
pub enum RegionMessage {
    /// Route a message to the entity's shard.
    Route { entity_id: String, message: EntityMessage },
}

pub struct RegionArgs {
    pub num_shards: u32,
    pub settings: EntitySettings,
    pub passivation_idle: Option<Duration>,
}

pub struct RegionState {
    args: RegionArgs,
    shards: HashMap<u32, ActorRef<ShardMessage>>,
    by_actor: HashMap<ActorId, u32>,
}

impl Actor for ShardRegion {
    type Msg = RegionMessage;
    type State = RegionState;
    type Arguments = RegionArgs;

    async fn pre_start(&self, _: ActorRef<RegionMessage>, args: RegionArgs) -> Result<RegionState, ActorProcessingErr> {
        Ok(RegionState { args, shards: HashMap::new(), by_actor: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<RegionMessage>,
        message: RegionMessage,
        state: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        let RegionMessage::Route { entity_id, message } = message;
        let shard = shard_of(&entity_id, state.args.num_shards);
        let actor = match state.shards.get(&shard) {
            Some(actor) => actor.clone(),
            None => {
                let args = ShardArgs {
                    shard,
                    settings: state.args.settings.clone(),
                    passivation_idle: state.args.passivation_idle,
                };
                match Actor::spawn_linked(None, ShardActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), shard);
                        state.shards.insert(shard, actor.clone());
                        actor
                    }
                    Err(e) => {
                        message.fail(&format!("could not start shard {shard}: {e}"));
                        return Ok(());
                    }
                }
            }
        };
        if let Err(e) = actor.send_message(ShardMessage::Deliver { entity_id, message }) {
            // The shard is stopping; its termination event removes it and the next message restarts it.
            state.shards.remove(&shard);
            if let ractor::MessagingErr::SendErr(ShardMessage::Deliver { message, .. }) = e {
                message.fail(&format!("shard {shard} is restarting"));
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
            state.shards.remove(&shard);
        }
        Ok(())
    }
}
