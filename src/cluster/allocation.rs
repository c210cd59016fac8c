//! Shard allocation: the `shard_allocations` table the coordinator writes (fenced on its leader lease epoch),
//! and Akka's `LeastShardAllocationStrategy` as pure functions (`shared/spec/cluster.md` B.4).

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Pool;

use super::lease::LEADER;
use super::{MemberId, Result, db, pool};

/// `$1` node, `$2` incarnation, `$3` epoch: the caller still holds the leader lease it was given.
const FENCE: &str = "EXISTS (SELECT 1 FROM cluster_leases WHERE name = 'leader' AND holder_node = $1 \
     AND holder_incarnation = $2 AND epoch = $3 AND expires_at > clock_timestamp())";

/// The allocation table, written only under the leader lease.
#[derive(Clone)]
pub struct AllocationStore {
    pool: Pool,
}

impl std::fmt::Debug for AllocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocationStore").finish_non_exhaustive()
    }
}

impl AllocationStore {
    pub fn new(pool: Pool) -> Self {
        debug_assert_eq!(LEADER, "leader");
        Self { pool }
    }

    /// Every allocated shard and its member.
    pub async fn load(&self) -> Result<BTreeMap<u32, MemberId>> {
        let client = self.pool.get().await.map_err(pool)?;
        let rows = client.query("SELECT shard, node, incarnation FROM shard_allocations", &[]).await.map_err(db)?;
        rows.iter()
            .map(|row| {
                let shard: i32 = row.try_get(0).map_err(db)?;
                let member =
                    MemberId::new(row.try_get::<_, String>(1).map_err(db)?, row.try_get::<_, String>(2).map_err(db)?);
                Ok((u32::try_from(shard).unwrap_or_default(), member))
            })
            .collect()
    }

    /// Records `shard` → `member`, if `by` still holds the leader lease of `epoch`. Returns false when it does
    /// not (the caller must stop acting as coordinator).
    pub async fn allocate(&self, shard: u32, member: &MemberId, by: &MemberId, epoch: i64) -> Result<bool> {
        let client = self.pool.get().await.map_err(pool)?;
        let sql = format!(
            "INSERT INTO shard_allocations (shard, node, incarnation, epoch) SELECT $4, $5, $6, $3 WHERE {FENCE} \
             ON CONFLICT (shard) DO UPDATE SET node = EXCLUDED.node, incarnation = EXCLUDED.incarnation, \
             epoch = EXCLUDED.epoch, allocated_at = clock_timestamp() WHERE {FENCE}"
        );
        let shard = i32::try_from(shard).unwrap_or(i32::MAX);
        let n = client
            .execute(&sql, &[&by.node, &by.incarnation, &epoch, &shard, &member.node, &member.incarnation])
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Forgets where `shard` lives (its owner stopped it, or died), under the same fence as
    /// [`allocate`](Self::allocate). Returns false when the caller lost the lease.
    pub async fn deallocate(&self, shard: u32, by: &MemberId, epoch: i64) -> Result<bool> {
        let client = self.pool.get().await.map_err(pool)?;
        let fenced: bool = client
            .query_one(&format!("SELECT {FENCE}"), &[&by.node, &by.incarnation, &epoch])
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if !fenced {
            return Ok(false);
        }
        let sql = format!("DELETE FROM shard_allocations WHERE shard = $4 AND {FENCE}");
        let shard = i32::try_from(shard).unwrap_or(i32::MAX);
        client.execute(&sql, &[&by.node, &by.incarnation, &epoch, &shard]).await.map_err(db)?;
        Ok(true)
    }
}

/// The member that gets a new shard: the one with the fewest shards among `candidates` (ties: the first in
/// `candidates` order, which the caller sorts by age). `None` without candidates.
pub fn least_shards(allocations: &BTreeMap<u32, MemberId>, candidates: &[MemberId]) -> Option<MemberId> {
    candidates.iter().min_by_key(|m| allocations.values().filter(|owner| owner == m).count()).cloned()
}

/// Akka's rebalance of `LeastShardAllocationStrategy` (with an absolute limit): the shards to move now so that
/// every candidate ends up with about the same number. `limit = max(1, min(relative × shards, absolute))`.
pub fn shards_to_rebalance(
    allocations: &BTreeMap<u32, MemberId>,
    candidates: &[MemberId],
    relative_limit: f64,
    absolute_limit: usize,
) -> Vec<u32> {
    if candidates.is_empty() || allocations.is_empty() {
        return Vec::new();
    }
    let total = allocations.len();
    let limit = ((relative_limit * total as f64).floor() as usize).min(absolute_limit).max(1);
    let optimal = total.div_ceil(candidates.len());
    let by_member: Vec<(MemberId, Vec<u32>)> = candidates
        .iter()
        .map(|m| (m.clone(), allocations.iter().filter(|(_, owner)| *owner == m).map(|(s, _)| *s).collect()))
        .collect();
    // Phase 1: the shards above the optimal count, from the most loaded.
    let mut picked: Vec<u32> = Vec::new();
    let mut sorted = by_member.clone();
    sorted.sort_by_key(|(_, shards)| std::cmp::Reverse(shards.len()));
    for (_, shards) in &sorted {
        if shards.len() > optimal {
            picked.extend(shards.iter().take(shards.len() - optimal));
        }
    }
    // Shards of members that are not candidates any more (leaving) are not rebalanced here: hand-off does that.
    if !picked.is_empty() {
        picked.truncate(limit);
        return picked;
    }
    // Phase 2: one shard from each member at the optimal count while some member is below optimal − 1.
    let below: usize = by_member.iter().map(|(_, s)| (optimal - 1).saturating_sub(s.len())).sum();
    if below == 0 {
        return Vec::new();
    }
    let take = below.min(limit);
    sorted.iter().filter(|(_, s)| s.len() >= optimal).filter_map(|(_, s)| s.first().copied()).take(take).collect()
}

/// Members that own a shard but are not in `alive` (down, removed, expired): their shards must be reallocated.
pub fn orphaned(allocations: &BTreeMap<u32, MemberId>, alive: &BTreeSet<MemberId>) -> Vec<u32> {
    allocations.iter().filter(|(_, owner)| !alive.contains(owner)).map(|(s, _)| *s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: &str) -> MemberId {
        MemberId::new(n, "1")
    }

    fn alloc(pairs: &[(u32, &str)]) -> BTreeMap<u32, MemberId> {
        pairs.iter().map(|(s, n)| (*s, m(n))).collect()
    }

    #[test]
    fn new_shards_go_to_the_least_loaded_member() {
        let a = alloc(&[(0, "a"), (1, "a"), (2, "b")]);
        assert_eq!(least_shards(&a, &[m("a"), m("b"), m("c")]), Some(m("c")));
        assert_eq!(least_shards(&a, &[m("a"), m("b")]), Some(m("b")));
        assert_eq!(least_shards(&a, &[]), None);
    }

    #[test]
    fn a_new_member_gets_shards_in_bounded_steps() {
        let pairs: Vec<(u32, &str)> = (0..16).map(|s| (s, if s % 2 == 0 { "a" } else { "b" })).collect();
        let a = alloc(&pairs);
        let members = [m("a"), m("b"), m("c")];
        // optimal = 6: a and b each have 2 above it; the limit (0.1 × 16 → 1) allows one per round.
        assert_eq!(shards_to_rebalance(&a, &members, 0.1, 20).len(), 1);
        assert_eq!(shards_to_rebalance(&a, &members, 0.5, 20).len(), 4);
        assert_eq!(shards_to_rebalance(&a, &members, 0.5, 3).len(), 3);
    }

    #[test]
    fn a_balanced_cluster_moves_nothing() {
        let pairs: Vec<(u32, &str)> = (0..16).map(|s| (s, ["a", "b", "c"][s as usize % 3])).collect();
        assert!(shards_to_rebalance(&alloc(&pairs), &[m("a"), m("b"), m("c")], 1.0, 20).is_empty());
    }

    #[test]
    fn phase_two_evens_out_small_differences() {
        // 4 shards, 3 members: optimal 2; a=2, b=2, c=0 → c is below optimal − 1.
        let a = alloc(&[(0, "a"), (1, "a"), (2, "b"), (3, "b")]);
        assert_eq!(shards_to_rebalance(&a, &[m("a"), m("b"), m("c")], 1.0, 20).len(), 1);
    }

    #[test]
    fn shards_of_dead_members_are_orphaned() {
        let a = alloc(&[(0, "a"), (1, "b")]);
        let alive: BTreeSet<MemberId> = [m("a")].into();
        assert_eq!(orphaned(&a, &alive), vec![1]);
    }
}
