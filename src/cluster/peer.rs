//! `PeerActor`: the one remotable actor of a node (pg group [`PEER_GROUP`]), through which other nodes reach its
//! region and, when this node leads, its shard coordinator. Entities and shards are never remotable
//! (`shared/spec/cluster.md` A.8, C.1).
//!
//! Each request is served on its own task, so that a slow one (a command waiting for its handler, a hand-off
//! stopping entities) never delays a heartbeat.

use std::sync::Arc;

use prost::Message as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use super::runtime::ClusterContext;
use super::wire::{PEER_GROUP, PeerMessage};
use crate::proto::regent::v1::peer_request;

pub struct PeerActor;

impl Actor for PeerActor {
    type Msg = PeerMessage;
    type State = Arc<ClusterContext>;
    type Arguments = Arc<ClusterContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMessage>,
        context: Arc<ClusterContext>,
    ) -> Result<Arc<ClusterContext>, ActorProcessingErr> {
        ractor::pg::join(PEER_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(context)
    }

    async fn handle(
        &self,
        _: ActorRef<PeerMessage>,
        message: PeerMessage,
        context: &mut Arc<ClusterContext>,
    ) -> Result<(), ActorProcessingErr> {
        let PeerMessage::Request(bytes, reply) = message;
        let request = match super::wire::decode_request(&bytes) {
            Ok(request) => request,
            Err(why) => {
                let _ = reply.send(super::wire::refused(why, false).encode_to_vec());
                return Ok(());
            }
        };
        // Heartbeats are answered at once, in order.
        if let Some(peer_request::Kind::Ping(ping)) = &request.kind {
            let _ = reply.send(super::wire::pong(ping.sequence).encode_to_vec());
            return Ok(());
        }
        let context = context.clone();
        tokio::spawn(async move {
            debug!(from = %request.from, "peer request");
            let answer = context.serve(request).await;
            let _ = reply.send(super::wire::encode_reply(&answer));
        });
        Ok(())
    }
}
