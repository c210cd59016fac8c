//! The shard coordinator: the cluster singleton that decides where each shard lives (Akka's `ShardCoordinator`,
//! `shared/spec/cluster.md` B.4, C.5). It runs on the leader, the holder of the `leader` lease, and every
//! allocation it writes to `shard_allocations` is fenced on that lease's epoch, so a deposed coordinator writes
//! nothing; its successor reloads the table and carries on.
//!
//! - `GetShardHome`: the shard's owner if it is alive; otherwise the member with the fewest shards (among up
//!   members with a valid lease and a live link) gets it: the row is written, the owner is told to host it
//!   (`HostShard`), then the answer is given. A loaded allocation is confirmed with its owner the same way before
//!   it is first given out.
//! - Shards of members that are down, removed or whose lease expired are deallocated (their journal writes are
//!   fenced already, so no second writer can appear).
//! - Rebalance, every `rebalance_interval` when nothing is joining or unreachable: least-shard, in bounded steps.
//! - Hand-off (rebalance, graceful leave): `BeginHandOff` to every region, `HandOff` to the owner (which stops
//!   the shard's entities), then the shard is deallocated and the next request allocates it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::allocation::{least_shards, orphaned, shards_to_rebalance};
use super::membership::ClusterSnapshot;
use super::runtime::ClusterContext;
use super::{MemberId, MemberStatus};
use crate::proto::regent::v1 as pb;

/// How long the coordinator waits for a region to confirm it hosts a shard.
const HOST_SHARD_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Coordinator;

#[derive(ractor_cluster::RactorMessage)]
pub enum CoordinatorMessage {
    /// Where `shard` lives (`node.incarnation`), allocating it if needed; `None`: ask again shortly.
    GetShardHome { shard: u32, reply: RpcReplyPort<Option<String>> },
    /// The latest view of the members (from the cluster daemon).
    Members(Arc<ClusterSnapshot>),
    /// Time to look for shards to move.
    Rebalance,
    /// A hand-off finished (`ok`: the owner stopped the shard).
    HandOffDone { shard: u32, ok: bool },
    /// Hand off every shard of `member` (it is leaving); `true` once it owns none.
    GracefulLeave { member: String, reply: RpcReplyPort<bool> },
}

pub struct CoordinatorArgs {
    pub context: Arc<ClusterContext>,
    /// The epoch of the leader lease this coordinator runs under.
    pub epoch: i64,
    pub snapshot: Arc<ClusterSnapshot>,
}

pub struct CoordinatorState {
    context: Arc<ClusterContext>,
    epoch: i64,
    snapshot: Arc<ClusterSnapshot>,
    allocations: BTreeMap<u32, MemberId>,
    /// Allocations confirmed (`HostShard`) with their owner by this coordinator.
    confirmed: BTreeSet<u32>,
    handing_off: BTreeSet<u32>,
    /// Members leaving: they get no shard, and wait for theirs to be handed off.
    leaving: HashMap<MemberId, Vec<RpcReplyPort<bool>>>,
    /// Members told they may go: they get no shard either, though the snapshot may still list them up for a while.
    left: BTreeSet<MemberId>,
}

impl Actor for Coordinator {
    type Msg = CoordinatorMessage;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMessage>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        let allocations = args.context.allocations().load().await?;
        info!(epoch = args.epoch, allocated = allocations.len(), "shard coordinator started");
        myself.send_interval(args.context.rebalance_interval(), || CoordinatorMessage::Rebalance);
        let mut state = CoordinatorState {
            context: args.context,
            epoch: args.epoch,
            snapshot: args.snapshot,
            allocations,
            confirmed: BTreeSet::new(),
            handing_off: BTreeSet::new(),
            leaving: HashMap::new(),
            left: BTreeSet::new(),
        };
        state.deallocate_orphans(&myself).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMessage>,
        message: CoordinatorMessage,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMessage::GetShardHome { shard, reply } => {
                let home = state.shard_home(&myself, shard).await;
                let _ = reply.send(home);
            }
            CoordinatorMessage::Members(snapshot) => {
                state.snapshot = snapshot;
                let snapshot = &state.snapshot;
                state.left.retain(|m| snapshot.members.iter().any(|listed| listed.id == *m));
                state.deallocate_orphans(&myself).await;
                state.answer_leavers();
            }
            CoordinatorMessage::Rebalance => state.rebalance(&myself),
            CoordinatorMessage::HandOffDone { shard, ok } => {
                state.handing_off.remove(&shard);
                let owner_alive = state.allocations.get(&shard).is_some_and(|o| state.is_alive(o));
                if ok || !owner_alive {
                    state.deallocate(&myself, shard).await;
                }
                state.answer_leavers();
            }
            CoordinatorMessage::GracefulLeave { member, reply } => {
                let Some(member) =
                    state.snapshot.members.iter().find(|m| m.id.to_string() == member).map(|m| m.id.clone())
                else {
                    let _ = reply.send(true);
                    return Ok(());
                };
                info!(%member, "member leaving: handing its shards off");
                state.leaving.entry(member.clone()).or_default().push(reply);
                let shards: Vec<u32> =
                    state.allocations.iter().filter(|(_, o)| **o == member).map(|(s, _)| *s).collect();
                for shard in shards {
                    state.start_hand_off(&myself, shard);
                }
                state.answer_leavers();
            }
        }
        Ok(())
    }
}

impl CoordinatorState {
    /// Members that may get new shards, oldest first.
    fn candidates(&self) -> Vec<MemberId> {
        let unreachable: BTreeSet<MemberId> = self.snapshot.unreachable().into_iter().collect();
        let mut up: Vec<_> = self
            .snapshot
            .members
            .iter()
            .filter(|m| m.status == MemberStatus::Up && m.lease_valid)
            .filter(|m| !unreachable.contains(&m.id) && !self.leaving.contains_key(&m.id) && !self.left.contains(&m.id))
            .filter(|m| self.context.is_linked(&m.id.to_string()))
            .collect();
        up.sort_by_key(|m| (m.up_number, m.id.clone()));
        up.into_iter().map(|m| m.id.clone()).collect()
    }

    /// Whether `member` may still host shards: up or leaving, with a valid lease.
    fn is_alive(&self, member: &MemberId) -> bool {
        self.snapshot.members.iter().any(|m| &m.id == member && m.status.may_write() && m.lease_valid)
    }

    async fn shard_home(&mut self, myself: &ActorRef<CoordinatorMessage>, shard: u32) -> Option<String> {
        if shard >= self.context.num_shards() || self.handing_off.contains(&shard) {
            return None;
        }
        if let Some(owner) = self.allocations.get(&shard).cloned() {
            if !self.is_alive(&owner) {
                self.deallocate(myself, shard).await;
            } else if self.confirmed.contains(&shard) {
                return Some(owner.to_string());
            } else if self.host(&owner, shard).await {
                self.confirmed.insert(shard);
                return Some(owner.to_string());
            } else {
                return None;
            }
        }
        let owner = least_shards(&self.allocations, &self.candidates())?;
        match self.context.allocations().allocate(shard, &owner, self.context.me(), self.epoch).await {
            Ok(true) => {}
            Ok(false) => {
                warn!("the leader lease moved: this coordinator stops");
                myself.stop(Some("lost the leader lease".into()));
                return None;
            }
            Err(e) => {
                warn!(error = %e, shard, "could not record a shard allocation");
                return None;
            }
        }
        self.allocations.insert(shard, owner.clone());
        if self.host(&owner, shard).await {
            self.confirmed.insert(shard);
            info!(shard, %owner, "shard allocated");
            Some(owner.to_string())
        } else {
            None
        }
    }

    /// Tells `owner` to host `shard`; true once it confirmed.
    async fn host(&self, owner: &MemberId, shard: u32) -> bool {
        let request = pb::peer_request::Kind::HostShard(pb::HostShard { shard, epoch: self.epoch });
        matches!(
            self.context.request(&owner.to_string(), request, HOST_SHARD_TIMEOUT).await,
            Ok(pb::PeerReply { kind: Some(pb::peer_reply::Kind::Ack(_)) })
        )
    }

    async fn deallocate(&mut self, myself: &ActorRef<CoordinatorMessage>, shard: u32) {
        match self.context.allocations().deallocate(shard, self.context.me(), self.epoch).await {
            Ok(true) => {
                self.allocations.remove(&shard);
                self.confirmed.remove(&shard);
            }
            Ok(false) => {
                warn!("the leader lease moved: this coordinator stops");
                myself.stop(Some("lost the leader lease".into()));
            }
            Err(e) => warn!(error = %e, shard, "could not deallocate a shard"),
        }
    }

    /// Deallocates the shards of members that can no longer write (down, removed, lease expired, gone).
    async fn deallocate_orphans(&mut self, myself: &ActorRef<CoordinatorMessage>) {
        let alive: BTreeSet<MemberId> = self
            .snapshot
            .members
            .iter()
            .filter(|m| m.status.may_write() && m.lease_valid)
            .map(|m| m.id.clone())
            .collect();
        for shard in orphaned(&self.allocations, &alive) {
            if !self.handing_off.contains(&shard) {
                info!(shard, owner = %self.allocations[&shard], "shard owner is gone: deallocating");
                self.deallocate(myself, shard).await;
            }
        }
    }

    fn rebalance(&mut self, myself: &ActorRef<CoordinatorMessage>) {
        if !self.handing_off.is_empty() {
            return;
        }
        let good_time = self.snapshot.unreachable().is_empty()
            && !self.snapshot.members.iter().any(|m| m.status == MemberStatus::Joining && m.lease_valid);
        if !good_time {
            return;
        }
        let candidates = self.candidates();
        let (relative, absolute) = self.context.rebalance_limits();
        let candidate_allocations: BTreeMap<u32, MemberId> =
            self.allocations.iter().filter(|(_, o)| candidates.contains(o)).map(|(s, o)| (*s, o.clone())).collect();
        for shard in shards_to_rebalance(&candidate_allocations, &candidates, relative, absolute) {
            info!(shard, from = %self.allocations[&shard], "rebalancing shard");
            self.start_hand_off(myself, shard);
        }
    }

    /// `BeginHandOff` to every live region, then `HandOff` to the owner, then [`CoordinatorMessage::HandOffDone`].
    fn start_hand_off(&mut self, myself: &ActorRef<CoordinatorMessage>, shard: u32) {
        let Some(owner) = self.allocations.get(&shard).cloned() else { return };
        if !self.handing_off.insert(shard) {
            return;
        }
        self.confirmed.remove(&shard);
        let regions: Vec<String> = self
            .snapshot
            .members
            .iter()
            .filter(|m| m.status.may_write() && m.lease_valid)
            .map(|m| m.id.to_string())
            .collect();
        let context = self.context.clone();
        let epoch = self.epoch;
        let coordinator = myself.clone();
        tokio::spawn(async move {
            let begin = regions.iter().map(|region| {
                let request = pb::peer_request::Kind::BeginHandOff(pb::BeginHandOff { shard, epoch });
                context.request(region, request, Duration::from_secs(2))
            });
            futures::future::join_all(begin).await;
            let request = pb::peer_request::Kind::HandOff(pb::HandOff { shard, epoch });
            let ok = matches!(
                context.request(&owner.to_string(), request, context.handoff_timeout() + Duration::from_secs(1)).await,
                Ok(pb::PeerReply { kind: Some(pb::peer_reply::Kind::Ack(_)) })
            );
            if !ok {
                warn!(shard, %owner, "hand-off not acknowledged");
            }
            let _ = coordinator.send_message(CoordinatorMessage::HandOffDone { shard, ok });
        });
    }

    /// Tells leaving members whose shards are all gone that they may go.
    fn answer_leavers(&mut self) {
        let done: Vec<MemberId> =
            self.leaving.keys().filter(|m| !self.allocations.values().any(|owner| owner == *m)).cloned().collect();
        for member in done {
            for reply in self.leaving.remove(&member).unwrap_or_default() {
                let _ = reply.send(true);
            }
            info!(%member, "leaving member owns no shard any more");
            self.left.insert(member);
        }
    }
}
