//! Akka's split-brain resolver (`sbr/DowningStrategy.scala`; `shared/spec/cluster.md` B.5, C.6) as pure
//! functions: [`decide`] takes a [`View`] of the members from one side of a partition and a [`Strategy`], and
//! returns a [`Decision`]; [`nodes_to_down`] turns it into the members to set `down`. The runner (the holder of
//! the `leader` lease) applies that with [`MembershipStore::down`](super::membership::MembershipStore::down), a
//! compare-and-set on the cluster version, so only one side's decision is ever applied. [`Stability`] is the
//! `stable-after` / `down-all-when-unstable` timing, over instants the caller passes.
//!
//! Counting follows Akka: the members that count are `up` and `leaving` ones; `joining` (Akka's `Joining` and
//! `WeaklyUp`), `exiting`, `down` and `removed` members do not. Members are ordered by address (then node name and
//! incarnation) for "the lowest address", and by up number for "the oldest". Regent has no roles and a single
//! data centre, so the role filter of Akka's strategies is absent.
//!
//! A [`View`] is one side's view: with PostgreSQL as the referee every node sees every observation, and a clean
//! split (A reports B unreachable, B reports A) would look like an indirect connection. [`View::from_snapshot`]
//! therefore keeps only the observations made from the deciding member's side, as Akka's gossip does.

use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

use super::membership::ClusterSnapshot;
use super::{MemberId, MemberStatus};

/// A member as the resolver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbrMember {
    pub id: MemberId,
    pub address: String,
    pub status: MemberStatus,
    pub up_number: Option<i64>,
    /// Whether it is on the deciding member's side of the partition (reachable from it).
    pub reachable: bool,
}

/// One side's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub members: Vec<SbrMember>,
    /// Unreachability observations `(observer, subject)` made on this side, used to detect indirectly connected
    /// members (both observer and subject). May be empty when only the `reachable` flags are known.
    pub observations: Vec<(MemberId, MemberId)>,
}

impl View {
    /// The view of `me`: its side is the members it does not itself observe as unreachable; the observations
    /// kept are those made by members of its side; a member is unreachable when one of them reports it so.
    /// Down and removed members are left out.
    pub fn from_snapshot(snapshot: &ClusterSnapshot, me: &MemberId) -> Self {
        let unreachable_by_me: BTreeSet<&MemberId> =
            snapshot.observations.iter().filter(|o| !o.reachable && &o.observer == me).map(|o| &o.subject).collect();
        let observations: Vec<(MemberId, MemberId)> = snapshot
            .observations
            .iter()
            .filter(|o| !o.reachable && !unreachable_by_me.contains(&o.observer))
            .map(|o| (o.observer.clone(), o.subject.clone()))
            .collect();
        let unreachable: BTreeSet<&MemberId> = observations.iter().map(|(_, subject)| subject).collect();
        let members = snapshot
            .members
            .iter()
            .filter(|m| !m.status.is_terminal())
            .map(|m| SbrMember {
                id: m.id.clone(),
                address: m.address.clone(),
                status: m.status,
                up_number: m.up_number,
                reachable: !unreachable.contains(&m.id),
            })
            .collect();
        Self { members, observations }
    }

    /// Whether any member is unreachable: the resolver has something to decide.
    pub fn has_unreachable(&self) -> bool {
        self.members.iter().any(|m| !m.reachable && !m.status.is_terminal())
    }

    /// Members that count, ordered by address: `up` and `leaving`, plus `joining` when `possibly_up` (they may be
    /// up on the other side), minus `leaving` when `excluding_possibly_exiting` (they may be exiting there).
    fn counted(&self, possibly_up: bool, excluding_possibly_exiting: bool) -> Vec<&SbrMember> {
        let mut counted: Vec<&SbrMember> = self
            .members
            .iter()
            .filter(|m| match m.status {
                MemberStatus::Up => true,
                MemberStatus::Leaving => !excluding_possibly_exiting,
                MemberStatus::Joining => possibly_up,
                MemberStatus::Exiting | MemberStatus::Down | MemberStatus::Removed => false,
            })
            .collect();
        counted.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
        counted
    }

    /// (this side, other side) sizes among [`counted`](Self::counted) members.
    fn sides(&self, possibly_up: bool, excluding_possibly_exiting: bool) -> (usize, usize) {
        let counted = self.counted(possibly_up, excluding_possibly_exiting);
        let reachable = counted.iter().filter(|m| m.reachable).count();
        (reachable, counted.len() - reachable)
    }

    /// The oldest counted member (lowest up number, then lowest address).
    fn oldest(&self, excluding_possibly_exiting: bool) -> Option<&SbrMember> {
        self.counted(false, excluding_possibly_exiting).into_iter().min_by(|a, b| {
            (a.up_number.unwrap_or(i64::MAX), &a.address, &a.id).cmp(&(
                b.up_number.unwrap_or(i64::MAX),
                &b.address,
                &b.id,
            ))
        })
    }

    /// Members both observing and observed unreachable: a cycle in the unreachability graph, which a clean
    /// split or a crash never produces.
    pub fn indirectly_connected(&self) -> BTreeSet<MemberId> {
        let observers: BTreeSet<&MemberId> = self.observations.iter().map(|(o, _)| o).collect();
        self.observations.iter().filter(|(_, s)| observers.contains(s)).map(|(_, s)| s.clone()).collect()
    }
}

/// A downing strategy (Akka's `active-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Keep the side with more members; on a tie the side with the member of lowest address. CoS's choice.
    KeepMajority,
    /// Keep a side with at least `quorum_size` members; down all if there are more than `2 × quorum_size − 1`.
    StaticQuorum { quorum_size: usize },
    /// Keep the side with the oldest member; with `down_if_alone`, not if the oldest is alone against ≥ 2.
    KeepOldest { down_if_alone: bool },
    /// Always down every member.
    DownAll,
    /// Keep the side that acquires the SBR lease; the minority waits `acquire_delay_for_minority` before trying.
    LeaseMajority { acquire_delay_for_minority: Duration },
}

/// What one side decides (Akka's `DowningStrategy.Decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Down the other side.
    DownUnreachable,
    /// Down this side (the deciding member included).
    DownReachable,
    /// Down everyone.
    DownAll,
    /// Down the indirectly connected members, plus what the strategy decides without their observations.
    DownIndirectlyConnected,
    /// Lease-majority: acquire the lease after `delay`, then down the other side; if not acquired, [`reverse`].
    AcquireLeaseAndDownUnreachable { delay: Duration },
    /// Lease-majority with indirectly connected members.
    AcquireLeaseAndDownIndirectlyConnected { delay: Duration },
    /// Lease-majority lost with indirectly connected members: down them and this side.
    ReverseDownIndirectlyConnected,
}

impl Decision {
    pub fn is_indirectly_connected(self) -> bool {
        matches!(
            self,
            Self::DownIndirectlyConnected
                | Self::AcquireLeaseAndDownIndirectlyConnected { .. }
                | Self::ReverseDownIndirectlyConnected
        )
    }
}

/// The decision when a lease-majority side could not acquire the lease.
pub fn reverse(decision: Decision) -> Decision {
    match decision {
        Decision::AcquireLeaseAndDownUnreachable { .. } => Decision::DownReachable,
        Decision::AcquireLeaseAndDownIndirectlyConnected { .. } => Decision::ReverseDownIndirectlyConnected,
        other => other,
    }
}

/// Applies `strategy` to `view` (call it only when [`View::has_unreachable`] and the view has been stable).
pub fn decide(strategy: Strategy, view: &View) -> Decision {
    let indirect = !view.indirectly_connected().is_empty();
    match strategy {
        Strategy::DownAll => Decision::DownAll,
        Strategy::StaticQuorum { quorum_size } => {
            let (reachable, unreachable) = view.sides(false, false);
            if reachable + unreachable > (quorum_size * 2).saturating_sub(1) {
                Decision::DownAll
            } else if indirect {
                Decision::DownIndirectlyConnected
            } else if reachable >= quorum_size {
                Decision::DownUnreachable
            } else {
                Decision::DownReachable
            }
        }
        _ if indirect => match strategy {
            Strategy::LeaseMajority { .. } => {
                Decision::AcquireLeaseAndDownIndirectlyConnected { delay: Duration::ZERO }
            }
            _ => Decision::DownIndirectlyConnected,
        },
        Strategy::KeepMajority => keep_majority(view),
        Strategy::KeepOldest { down_if_alone } => keep_oldest(view, down_if_alone),
        Strategy::LeaseMajority { acquire_delay_for_minority } => {
            let delay = if is_minority(view) { acquire_delay_for_minority } else { Duration::ZERO };
            Decision::AcquireLeaseAndDownUnreachable { delay }
        }
    }
}

fn keep_majority(view: &View) -> Decision {
    let counted = view.counted(false, false);
    let Some(lowest) = counted.first() else { return Decision::DownAll };
    let (reachable, unreachable) = view.sides(false, false);
    match majority(reachable, unreachable, lowest.reachable) {
        Decision::DownUnreachable => {
            // A membership change may have happened on the other side during the partition: count this side as
            // small as it may be (without leaving members, which may be exiting there) and the other as large
            // (with joining members, which may be up there). If the conclusion changes, down all.
            let cautious = view.counted(false, true);
            let Some(lowest) = cautious.first() else { return Decision::DownAll };
            let this_side = cautious.iter().filter(|m| m.reachable).count();
            let other_side = view.counted(true, false).iter().filter(|m| !m.reachable).count();
            match majority(this_side, other_side, lowest.reachable) {
                Decision::DownUnreachable => Decision::DownUnreachable,
                _ => Decision::DownAll,
            }
        }
        decision => decision,
    }
}

/// The bigger side stays; on a tie, the side with the lowest address.
fn majority(this_side: usize, other_side: usize, lowest_is_here: bool) -> Decision {
    if this_side > other_side || (this_side == other_side && lowest_is_here) {
        Decision::DownUnreachable
    } else {
        Decision::DownReachable
    }
}

fn keep_oldest(view: &View, down_if_alone: bool) -> Decision {
    let Some(oldest) = view.oldest(false) else { return Decision::DownAll };
    let (reachable, unreachable) = view.sides(false, false);
    match oldest_decision(oldest.reachable, reachable, unreachable, down_if_alone) {
        Decision::DownUnreachable => {
            // As for keep-majority: leaving members may be exiting on the other side; with down-if-alone, joining
            // members may be up there and change who is alone.
            let Some(oldest) = view.oldest(true) else { return Decision::DownAll };
            let (reachable, unreachable) = view.sides(down_if_alone, true);
            match oldest_decision(oldest.reachable, reachable, unreachable, down_if_alone) {
                Decision::DownUnreachable => Decision::DownUnreachable,
                _ => Decision::DownAll,
            }
        }
        decision => decision,
    }
}

fn oldest_decision(oldest_is_here: bool, this_side: usize, other_side: usize, down_if_alone: bool) -> Decision {
    if oldest_is_here {
        // Two members: the oldest stays even alone, the other side is no better.
        if down_if_alone && this_side == 1 && other_side >= 2 {
            Decision::DownReachable
        } else {
            Decision::DownUnreachable
        }
    } else if down_if_alone && other_side == 1 && this_side >= 2 {
        Decision::DownUnreachable
    } else {
        Decision::DownReachable
    }
}

/// Lease-majority's minority test: the unreachable are at least half, and on an exact half the lowest address is
/// on the other side.
fn is_minority(view: &View) -> bool {
    let counted = view.counted(false, false);
    let Some(lowest) = counted.first() else { return false };
    let unreachable = counted.iter().filter(|m| !m.reachable).count();
    match (unreachable * 2).cmp(&counted.len()) {
        std::cmp::Ordering::Equal => !lowest.reachable,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
    }
}

/// The members to set `down` for `decision`, sorted: among those neither exiting, down nor removed (joining ones
/// included), the unreachable ones, the reachable ones, or all. For the indirectly connected decisions, the
/// indirectly connected members plus what `strategy` decides once the observations between them are removed;
/// if that again finds indirectly connected members, everyone.
pub fn nodes_to_down(strategy: Strategy, view: &View, decision: Decision) -> Vec<MemberId> {
    let downable: Vec<&SbrMember> = view
        .members
        .iter()
        .filter(|m| matches!(m.status, MemberStatus::Joining | MemberStatus::Up | MemberStatus::Leaving))
        .collect();
    let select = |keep: &dyn Fn(&SbrMember) -> bool| -> BTreeSet<MemberId> {
        downable.iter().filter(|m| keep(m)).map(|m| m.id.clone()).collect()
    };
    let indirect = view.indirectly_connected();
    let chosen = match decision {
        Decision::DownUnreachable | Decision::AcquireLeaseAndDownUnreachable { .. } => select(&|m| !m.reachable),
        Decision::DownReachable => select(&|m| m.reachable),
        Decision::DownAll => select(&|_| true),
        Decision::ReverseDownIndirectlyConnected => select(&|m| m.reachable || indirect.contains(&m.id)),
        Decision::DownIndirectlyConnected | Decision::AcquireLeaseAndDownIndirectlyConnected { .. } => {
            let mut chosen = select(&|m| indirect.contains(&m.id));
            match without_indirect_observations(view, &indirect) {
                Some(rest) if rest.has_unreachable() => {
                    let again = decide(strategy, &rest);
                    if again.is_indirectly_connected() {
                        chosen = select(&|_| true);
                    } else {
                        chosen.extend(nodes_to_down(strategy, &rest, again));
                    }
                }
                _ => {}
            }
            chosen
        }
    };
    chosen.into_iter().collect()
}

/// `view` without the observations between indirectly connected members, or `None` if nothing is left
/// unreachable but them.
fn without_indirect_observations(view: &View, indirect: &BTreeSet<MemberId>) -> Option<View> {
    let observations: Vec<(MemberId, MemberId)> =
        view.observations.iter().filter(|(o, s)| !(indirect.contains(o) && indirect.contains(s))).cloned().collect();
    let unreachable: BTreeSet<&MemberId> = observations.iter().map(|(_, s)| s).collect();
    if unreachable.iter().all(|s| indirect.contains(*s)) {
        return None;
    }
    let members =
        view.members.iter().map(|m| SbrMember { reachable: !unreachable.contains(&m.id), ..m.clone() }).collect();
    Some(View { members, observations })
}

/// When to act (Akka's `stable-after` and `down-all-when-unstable`), over instants the caller passes.
///
/// Feed it every change of membership or reachability with [`changed`](Self::changed) and ask [`tick`](Self::tick)
/// every second or so.
#[derive(Debug, Clone)]
pub struct Stability {
    stable_after: Duration,
    /// `None`: down-all-when-unstable is off.
    unstable_after: Option<Duration>,
    last_change: Option<Instant>,
    /// The first change since the cluster was last fully reachable.
    unstable_since: Option<Instant>,
}

/// What the resolver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing is unreachable, or the view changed less than `stable-after` ago.
    Wait,
    /// The view has been stable for `stable-after` with unreachable members: decide.
    Decide,
    /// Unreachability has been going on, with changes, for `stable-after` + the unstable margin: down all.
    DownAllUnstable,
}

impl Stability {
    /// `down_all_when_unstable`: Akka's default margin is 3/4 of `stable_after` and never less than 4 s.
    pub fn new(stable_after: Duration, down_all_when_unstable: bool) -> Self {
        let unstable_after =
            down_all_when_unstable.then(|| stable_after + (stable_after * 3 / 4).max(Duration::from_secs(4)));
        Self::with_unstable_after(stable_after, unstable_after)
    }

    /// As [`new`](Self::new), with an explicit total time before downing all (`stable_after` + margin).
    pub fn with_unstable_after(stable_after: Duration, unstable_after: Option<Duration>) -> Self {
        Self { stable_after, unstable_after, last_change: None, unstable_since: None }
    }

    /// Membership or reachability changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.last_change = Some(now);
        self.unstable_since.get_or_insert(now);
    }

    /// Whether the view has unreachable members at `now`, for every member on every tick, leader or not. With
    /// none (healed, downed or removed), the instability period ends. Without this, a member that never led kept
    /// the start of its first change (a join, long ago) as the start of instability, and on becoming leader after
    /// a crash found the cluster "unstable too long" at once and downed every member.
    pub fn observe(&mut self, has_unreachable: bool) {
        if !has_unreachable {
            self.unstable_since = None;
        }
    }

    /// What to do at `now`, given whether the view has unreachable members. With none (healed, downed or
    /// removed), the instability counter resets.
    pub fn tick(&mut self, now: Instant, has_unreachable: bool) -> Tick {
        if !has_unreachable {
            self.unstable_since = None;
            return Tick::Wait;
        }
        let since = *self.unstable_since.get_or_insert(now);
        let last_change = *self.last_change.get_or_insert(now);
        if self.unstable_after.is_some_and(|limit| now.duration_since(since) >= limit) {
            Tick::DownAllUnstable
        } else if now.duration_since(last_change) >= self.stable_after {
            Tick::Decide
        } else {
            Tick::Wait
        }
    }

    /// A decision was applied: the next one waits for a new stable period.
    pub fn decided(&mut self, now: Instant) {
        self.last_change = Some(now);
    }
}

#[cfg(test)]
mod tests;
