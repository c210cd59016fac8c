//! Membership in PostgreSQL: the `cluster_members`, `cluster_state` and `cluster_reachability` tables of
//! migration 0005.
//!
//! Rules the SQL below keeps:
//! - Every expiry is computed and compared with the database's clock (`clock_timestamp()`), so nodes' clocks
//!   never matter; a member's lease is valid while `lease_expires_at > clock_timestamp()`.
//! - Every change of membership or reachability bumps `cluster_state.version` in the same transaction, and takes
//!   that row's lock *first* (the bump is the lock), so membership changes are serialised and cannot deadlock one
//!   another. Renewing a lease is not a change and does not take it.
//! - The split-brain resolver reads a [`ClusterSnapshot`], decides, and applies its decision with [`down`], a
//!   compare-and-set on that snapshot's version: if anything changed in between, or the caller lost the `leader`
//!   lease, nothing is applied.
//! - A downed or removed incarnation is a tombstone: it never renews its lease again nor rejoins.
//!
//! [`down`]: MembershipStore::down

use deadpool_postgres::{Pool, Transaction, tokio_postgres};
use std::time::{Duration, SystemTime};

use super::lease::{LEADER, Leases};
use super::{Error, MemberId, MemberStatus, Result, db, millis, pool};
use crate::config::PostgresConfig;

/// The fencing predicate of journal writes: true only while the writer is `up` or `leaving` and its lease is
/// valid, by the database's clock. `$1` is the writer's node name and `$2` its incarnation (both `TEXT`).
///
/// The journal's write batch puts it in the `WHERE` of its `INSERT … SELECT`, and treats fewer rows inserted than
/// events sent as "fenced" (nothing of the batch is written, nothing may be acknowledged). Use
/// [`writer_valid_predicate`] to number the parameters differently.
///
/// Under `READ COMMITTED` the predicate is evaluated on the statement's snapshot: a `down` that commits while a
/// batch is being inserted does not stop that batch. That window is one statement long; the primary key on
/// `(entity_id, revision)` still refuses a second writer of the same revision (`shared/spec/reliability.md` §4.4).
pub const WRITER_VALID_SQL: &str = "EXISTS (SELECT 1 FROM cluster_members WHERE node = $1 AND incarnation = $2 \
     AND status IN ('up', 'leaving') AND lease_expires_at > clock_timestamp())";

/// [`WRITER_VALID_SQL`]: the predicate fragment for the journal's fencing, with `$1` = node, `$2` = incarnation.
pub fn is_writer_valid_sql() -> &'static str {
    WRITER_VALID_SQL
}

/// [`WRITER_VALID_SQL`] with the node name as parameter `$node` and the incarnation as `$incarnation`.
pub fn writer_valid_predicate(node: usize, incarnation: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM cluster_members WHERE node = ${node} AND incarnation = ${incarnation} \
         AND status IN ('up', 'leaving') AND lease_expires_at > clock_timestamp())"
    )
}

/// A row of `cluster_members`, with the validity of its lease as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    /// Where peers reach it (`host:port`).
    pub address: String,
    pub status: MemberStatus,
    /// Set when it became `up`: the lower, the older.
    pub up_number: Option<i64>,
    pub joined_at: SystemTime,
    pub lease_expires_at: SystemTime,
    /// `lease_expires_at > clock_timestamp()` when the row was read.
    pub lease_valid: bool,
}

/// One failure detector's last word about another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub observer: MemberId,
    pub subject: MemberId,
    pub reachable: bool,
}

/// A consistent view of the cluster: what the split-brain resolver decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// `cluster_state.version`: pass it to [`MembershipStore::down`] to apply a decision taken on this view.
    pub version: i64,
    /// Every member, oldest first (by up number, then joining order).
    pub members: Vec<Member>,
    /// The observations of members that are neither down nor removed, about such members.
    pub observations: Vec<Observation>,
}

impl ClusterSnapshot {
    /// Members that some live observer reports unreachable (see [`MembershipStore::unreachable_subjects`]).
    pub fn unreachable(&self) -> Vec<MemberId> {
        let mut subjects: Vec<MemberId> =
            self.observations.iter().filter(|o| !o.reachable).map(|o| o.subject.clone()).collect();
        subjects.sort();
        subjects.dedup();
        subjects
    }
}

const MEMBER_COLUMNS: &str =
    "node, incarnation, address, status, up_number, joined_at, lease_expires_at, lease_expires_at > clock_timestamp()";

/// Renews the lease of a member that is neither down nor removed, and returns its status in both cases; no row
/// means the member is unknown. One statement, used by [`MembershipStore::renew`] and the lease keeper.
const RENEW_SQL: &str = "WITH renewed AS ( \
         UPDATE cluster_members SET lease_expires_at = clock_timestamp() + $3::BIGINT * interval '1 millisecond' \
         WHERE node = $1 AND incarnation = $2 AND status NOT IN ('down', 'removed') RETURNING status \
     ) \
     SELECT status FROM renewed \
     UNION ALL \
     SELECT status FROM cluster_members WHERE node = $1 AND incarnation = $2 AND status IN ('down', 'removed')";

/// Unreachable observations that count: observer and subject are both neither down nor removed.
const LIVE_OBSERVATIONS: &str = "SELECT r.observer_node, r.observer_incarnation, r.subject_node, \
         r.subject_incarnation, r.reachable \
     FROM cluster_reachability r \
     JOIN cluster_members o ON o.node = r.observer_node AND o.incarnation = r.observer_incarnation \
     JOIN cluster_members s ON s.node = r.subject_node AND s.incarnation = r.subject_incarnation \
     WHERE o.status NOT IN ('down', 'removed') AND s.status NOT IN ('down', 'removed')";

/// Membership operations on a pool whose connections use the cluster's schema (`search_path`).
#[derive(Clone)]
pub struct MembershipStore {
    pool: Pool,
}

impl std::fmt::Debug for MembershipStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipStore").field("pool", &self.pool.status()).finish()
    }
}

impl MembershipStore {
    /// Uses `pool`, whose connections must have `search_path` set to the schema holding the cluster tables.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Builds its own pool to the configured schema, like the PostgreSQL store's. It does not migrate: open the
    /// store ([`PostgresStore::open`](crate::persistence::postgres::PostgresStore::open)) first.
    pub fn connect(config: &PostgresConfig) -> Result<Self> {
        crate::persistence::postgres::validate_identifier(&config.schema)?;
        Ok(Self::new(crate::persistence::postgres::build_pool(config)?))
    }

    /// The named leases, on the same pool.
    pub fn leases(&self) -> Leases {
        Leases::new(self.pool.clone())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool)
    }

    /// Inserts `id` as `joining` with a lease of `ttl`, or, if it already joined and is neither down nor removed,
    /// only renews its lease (joining is idempotent). A downed or removed incarnation gets
    /// [`Error::Tombstoned`].
    pub async fn join(&self, id: &MemberId, address: &str, ttl: Duration) -> Result<Member> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        bump_version(&tx).await?;
        let sql = format!(
            "INSERT INTO cluster_members (node, incarnation, address, status, lease_expires_at) \
             VALUES ($1, $2, $3, 'joining', clock_timestamp() + $4::BIGINT * interval '1 millisecond') \
             ON CONFLICT (node, incarnation) DO NOTHING RETURNING {MEMBER_COLUMNS}"
        );
        if let Some(row) = tx.query_opt(&sql, &[&id.node, &id.incarnation, &address, &millis(ttl)]).await.map_err(db)? {
            let member = member_from_row(&row)?;
            tx.commit().await.map_err(db)?;
            tracing::info!(member = %id, address, "cluster member joining");
            return Ok(member);
        }
        // Joined before: not a membership change (the rollback undoes the version bump), only a renewal.
        tx.rollback().await.map_err(db)?;
        let status = renew_on(&client, id, ttl).await?;
        if status.is_terminal() {
            return Err(Error::Tombstoned(id.clone(), status));
        }
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM cluster_members WHERE node = $1 AND incarnation = $2");
        let row = client.query_opt(&sql, &[&id.node, &id.incarnation]).await.map_err(db)?;
        member_from_row(&row.ok_or_else(|| Error::UnknownMember(id.clone()))?)
    }

    /// Extends the lease of `id` by `ttl` from now (database time) and returns its status. A `down` or
    /// `removed` member's lease is not extended, and its status tells it to stop; [`Error::UnknownMember`] means
    /// it has no row at all (it must stop too).
    pub async fn renew(&self, id: &MemberId, ttl: Duration) -> Result<MemberStatus> {
        let client = self.client().await?;
        renew_on(&client, id, ttl).await
    }

    /// Every member, oldest first: by up number, then (for those not up yet) by joining time.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM cluster_members \
             ORDER BY up_number NULLS LAST, joined_at, node, incarnation"
        );
        client.query(&sql, &[]).await.map_err(db)?.iter().map(member_from_row).collect()
    }

    /// One member's row.
    pub async fn member(&self, id: &MemberId) -> Result<Option<Member>> {
        let client = self.client().await?;
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM cluster_members WHERE node = $1 AND incarnation = $2");
        client
            .query_opt(&sql, &[&id.node, &id.incarnation])
            .await
            .map_err(db)?
            .as_ref()
            .map(member_from_row)
            .transpose()
    }

    /// `cluster_state.version`.
    pub async fn version(&self) -> Result<i64> {
        let client = self.client().await?;
        let row = client.query_one("SELECT version FROM cluster_state WHERE id = 1", &[]).await.map_err(db)?;
        row.try_get(0).map_err(db)
    }

    /// The version, the members and the live observations, read in one `REPEATABLE READ` transaction.
    pub async fn snapshot(&self) -> Result<ClusterSnapshot> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let version: i64 = tx
            .query_one("SELECT version FROM cluster_state WHERE id = 1", &[])
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM cluster_members \
             ORDER BY up_number NULLS LAST, joined_at, node, incarnation"
        );
        let members = tx.query(&sql, &[]).await.map_err(db)?.iter().map(member_from_row).collect::<Result<_>>()?;
        let observations = tx
            .query(&format!("{LIVE_OBSERVATIONS} ORDER BY 1, 2, 3, 4"), &[])
            .await
            .map_err(db)?
            .iter()
            .map(observation_from_row)
            .collect::<Result<_>>()?;
        tx.commit().await.map_err(db)?;
        Ok(ClusterSnapshot { version, members, observations })
    }

    /// The leader's promotion of `joining` members to `up`, each with the next up number in joining order.
    ///
    /// Nothing happens (an empty list) unless `leader` holds the `leader` lease and is itself a `joining` or
    /// `up` member with a valid lease, at least `min_members` members are `joining` or `up` with a valid lease
    /// (Akka's `min-nr-of-members`), and no live member is unreachable (Akka's convergence). Joining members
    /// whose lease expired are not promoted. Returns the promoted members.
    pub async fn promote_joining(&self, leader: &MemberId, min_members: usize) -> Result<Vec<Member>> {
        self.promote_joining_if(leader, min_members, &|_| true).await
    }

    /// [`promote_joining`](Self::promote_joining), of the joining members for which `eligible` holds only (the
    /// leader passes those it has an authenticated link with: a node that cannot link, e.g. with the wrong cookie
    /// or certificate, stays `joining`).
    pub async fn promote_joining_if(
        &self,
        leader: &MemberId,
        min_members: usize,
        eligible: &(dyn Fn(&MemberId) -> bool + Sync),
    ) -> Result<Vec<Member>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        bump_version(&tx).await?;
        let allowed: bool = tx
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM cluster_leases WHERE name = $3 AND holder_node = $1 \
                     AND holder_incarnation = $2 AND expires_at > clock_timestamp() FOR SHARE) \
                 AND EXISTS (SELECT 1 FROM cluster_members WHERE node = $1 AND incarnation = $2 \
                     AND status IN ('joining', 'up') AND lease_expires_at > clock_timestamp()) \
                 AND (SELECT count(*) FROM cluster_members WHERE status IN ('joining', 'up') \
                     AND lease_expires_at > clock_timestamp()) >= $4 \
                 AND NOT EXISTS (SELECT 1 FROM ({LIVE_OBSERVATIONS}) AS live WHERE NOT live.reachable)"
                ),
                &[&leader.node, &leader.incarnation, &LEADER, &i64::try_from(min_members).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if !allowed {
            return Ok(Vec::new()); // rolls back the version bump
        }
        let joining = tx
            .query(
                "SELECT node, incarnation FROM cluster_members \
                 WHERE status = 'joining' AND lease_expires_at > clock_timestamp() \
                 ORDER BY joined_at, node, incarnation FOR UPDATE",
                &[],
            )
            .await
            .map_err(db)?;
        let promote = format!(
            "UPDATE cluster_members SET status = 'up', up_number = nextval('cluster_up_number') \
             WHERE node = $1 AND incarnation = $2 AND status = 'joining' RETURNING {MEMBER_COLUMNS}"
        );
        let mut promoted = Vec::with_capacity(joining.len());
        for row in &joining {
            let (node, incarnation): (String, String) = (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
            if !eligible(&MemberId::new(node.clone(), incarnation.clone())) {
                continue;
            }
            if let Some(row) = tx.query_opt(&promote, &[&node, &incarnation]).await.map_err(db)? {
                promoted.push(member_from_row(&row)?);
            }
        }
        if !promoted.is_empty() {
            tx.commit().await.map_err(db)?;
            for member in &promoted {
                tracing::info!(member = %member.id, up_number = member.up_number, "cluster member up");
            }
        }
        Ok(promoted)
    }

    /// Moves `id` from `from` to `to` if it is in `from` (a compare-and-set on its status) and the lifecycle
    /// allows it ([`MemberStatus::can_become`], else [`Error::InvalidTransition`]). Becoming `up` assigns an up
    /// number if it has none. Returns whether the member changed (then the version was bumped).
    pub async fn set_status(&self, id: &MemberId, from: MemberStatus, to: MemberStatus) -> Result<bool> {
        if !from.can_become(to) {
            return Err(Error::InvalidTransition { from, to });
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        bump_version(&tx).await?;
        let changed = tx
            .execute(
                "UPDATE cluster_members SET status = $4, up_number = CASE WHEN $4 = 'up' \
                     THEN COALESCE(up_number, nextval('cluster_up_number')) ELSE up_number END \
                 WHERE node = $1 AND incarnation = $2 AND status = $3",
                &[&id.node, &id.incarnation, &from.as_str(), &to.as_str()],
            )
            .await
            .map_err(db)?;
        if changed == 0 {
            return Ok(false);
        }
        tx.commit().await.map_err(db)?;
        tracing::info!(member = %id, %from, %to, "cluster member status changed");
        Ok(true)
    }

    /// A graceful leave starts: `up` → `leaving`.
    pub async fn leave(&self, id: &MemberId) -> Result<bool> {
        self.set_status(id, MemberStatus::Up, MemberStatus::Leaving).await
    }

    /// The leaving member handed off its shards: `leaving` → `exiting`.
    pub async fn exiting(&self, id: &MemberId) -> Result<bool> {
        self.set_status(id, MemberStatus::Leaving, MemberStatus::Exiting).await
    }

    /// The end of an `exiting` or `down` member: → `removed`.
    pub async fn remove(&self, id: &MemberId) -> Result<bool> {
        Ok(self.set_status(id, MemberStatus::Exiting, MemberStatus::Removed).await?
            || self.set_status(id, MemberStatus::Down, MemberStatus::Removed).await?)
    }

    /// Applies a split-brain decision: in one transaction, if `cluster_state.version` still is
    /// `expected_version`, `by_leader` is `up` or `leaving` with a valid lease and holds the `leader` lease, sets
    /// every target that is neither down nor removed to `down` and bumps the version. Returns false, changing
    /// nothing, when any of those checks fails (another decision or membership change came first, or the caller
    /// lost its authority): the caller re-reads the cluster and decides again. The caller may be among the
    /// targets (Akka downs itself last; here all go down at once).
    pub async fn down(&self, targets: &[MemberId], expected_version: i64, by_leader: &MemberId) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let bumped = tx
            .query_opt(
                "UPDATE cluster_state SET version = version + 1 WHERE id = 1 AND version = $1 RETURNING version",
                &[&expected_version],
            )
            .await
            .map_err(db)?;
        if bumped.is_none() {
            tracing::debug!(expected_version, "down lost the compare-and-set on the cluster version");
            return Ok(false);
        }
        let authorised: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cluster_members WHERE node = $1 AND incarnation = $2 \
                     AND status IN ('up', 'leaving') AND lease_expires_at > clock_timestamp()) \
                 AND EXISTS (SELECT 1 FROM cluster_leases WHERE name = $3 AND holder_node = $1 \
                     AND holder_incarnation = $2 AND expires_at > clock_timestamp() FOR SHARE)",
                &[&by_leader.node, &by_leader.incarnation, &LEADER],
            )
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if !authorised {
            tracing::debug!(leader = %by_leader, "down refused: the caller is not an up member holding the leader lease");
            return Ok(false);
        }
        let (nodes, incarnations): (Vec<&str>, Vec<&str>) =
            targets.iter().map(|t| (t.node.as_str(), t.incarnation.as_str())).unzip();
        tx.execute(
            "UPDATE cluster_members SET status = 'down' \
             WHERE (node, incarnation) IN (SELECT * FROM unnest($1::TEXT[], $2::TEXT[])) \
             AND status NOT IN ('down', 'removed')",
            &[&nodes, &incarnations],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::warn!(leader = %by_leader, targets = ?targets, "cluster members downed");
        Ok(true)
    }

    /// Akka's rule for a restarted node: every other incarnation of `node` than `new_incarnation` that is not
    /// removed yet is downed and removed at once (a node runs one incarnation at a time, so the old one is dead
    /// or a zombie, and either way must not write). Returns the incarnations removed.
    pub async fn down_old_incarnations(&self, node: &str, new_incarnation: &str) -> Result<Vec<MemberId>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        bump_version(&tx).await?;
        let rows = tx
            .query(
                "UPDATE cluster_members SET status = 'removed' \
                 WHERE node = $1 AND incarnation <> $2 AND status <> 'removed' RETURNING node, incarnation",
                &[&node, &new_incarnation],
            )
            .await
            .map_err(db)?;
        let removed = rows
            .iter()
            .map(|row| {
                Ok(MemberId::new(row.try_get::<_, String>(0).map_err(db)?, row.try_get::<_, String>(1).map_err(db)?))
            })
            .collect::<Result<Vec<_>>>()?;
        if !removed.is_empty() {
            tx.commit().await.map_err(db)?;
            tracing::warn!(node, new_incarnation, removed = ?removed, "old incarnations removed");
        }
        Ok(removed)
    }

    /// Records what `observer`'s failure detector says about `subject`. Returns whether that changed the
    /// observation (then the version was bumped).
    pub async fn report(&self, observer: &MemberId, subject: &MemberId, reachable: bool) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        bump_version(&tx).await?;
        let changed = tx
            .execute(
                "INSERT INTO cluster_reachability \
                     (observer_node, observer_incarnation, subject_node, subject_incarnation, reachable) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (observer_node, observer_incarnation, subject_node, subject_incarnation) \
                 DO UPDATE SET reachable = EXCLUDED.reachable, updated_at = clock_timestamp() \
                 WHERE cluster_reachability.reachable <> EXCLUDED.reachable",
                &[&observer.node, &observer.incarnation, &subject.node, &subject.incarnation, &reachable],
            )
            .await
            .map_err(db)?;
        if changed == 0 {
            return Ok(false);
        }
        tx.commit().await.map_err(db)?;
        tracing::info!(%observer, %subject, reachable, "reachability changed");
        Ok(true)
    }

    /// Members (neither down nor removed) that at least one live observer reports unreachable: a member is
    /// reachable again only when every observer that reported it unreachable reports it reachable (Akka's rule).
    pub async fn unreachable_subjects(&self) -> Result<Vec<MemberId>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT DISTINCT live.subject_node, live.subject_incarnation FROM ({LIVE_OBSERVATIONS}) AS live \
             WHERE NOT live.reachable ORDER BY 1, 2"
        );
        client
            .query(&sql, &[])
            .await
            .map_err(db)?
            .iter()
            .map(|row| {
                Ok(MemberId::new(row.try_get::<_, String>(0).map_err(db)?, row.try_get::<_, String>(1).map_err(db)?))
            })
            .collect()
    }

    /// Evaluates [`WRITER_VALID_SQL`] for `id`: whether a journal write by it would be accepted now.
    pub async fn is_writer_valid(&self, id: &MemberId) -> Result<bool> {
        let client = self.client().await?;
        let row =
            client.query_one(&format!("SELECT {WRITER_VALID_SQL}"), &[&id.node, &id.incarnation]).await.map_err(db)?;
        row.try_get(0).map_err(db)
    }
}

/// Renews `id`'s lease on `client` (see [`MembershipStore::renew`]).
pub async fn renew_on(client: &tokio_postgres::Client, id: &MemberId, ttl: Duration) -> Result<MemberStatus> {
    let row = client.query_opt(RENEW_SQL, &[&id.node, &id.incarnation, &millis(ttl)]).await.map_err(db)?;
    let row = row.ok_or_else(|| Error::UnknownMember(id.clone()))?;
    row.try_get::<_, &str>(0).map_err(db)?.parse()
}

/// Bumps `cluster_state.version`, which locks its row until the transaction ends: every membership change
/// starts with it, so they are serialised (and a change rolled back leaves the version as it was).
async fn bump_version(tx: &Transaction<'_>) -> Result<i64> {
    let row = tx
        .query_one("UPDATE cluster_state SET version = version + 1 WHERE id = 1 RETURNING version", &[])
        .await
        .map_err(db)?;
    row.try_get(0).map_err(db)
}

/// A row whose first columns are [`MEMBER_COLUMNS`].
fn member_from_row(row: &tokio_postgres::Row) -> Result<Member> {
    Ok(Member {
        id: MemberId::new(row.try_get::<_, String>(0).map_err(db)?, row.try_get::<_, String>(1).map_err(db)?),
        address: row.try_get(2).map_err(db)?,
        status: row.try_get::<_, &str>(3).map_err(db)?.parse()?,
        up_number: row.try_get(4).map_err(db)?,
        joined_at: row.try_get(5).map_err(db)?,
        lease_expires_at: row.try_get(6).map_err(db)?,
        lease_valid: row.try_get(7).map_err(db)?,
    })
}

/// A row of [`LIVE_OBSERVATIONS`].
fn observation_from_row(row: &tokio_postgres::Row) -> Result<Observation> {
    Ok(Observation {
        observer: MemberId::new(row.try_get::<_, String>(0).map_err(db)?, row.try_get::<_, String>(1).map_err(db)?),
        subject: MemberId::new(row.try_get::<_, String>(2).map_err(db)?, row.try_get::<_, String>(3).map_err(db)?),
        reachable: row.try_get(4).map_err(db)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predicate_can_be_renumbered() {
        assert_eq!(writer_valid_predicate(1, 2), WRITER_VALID_SQL);
        assert!(writer_valid_predicate(6, 7).contains("node = $6 AND incarnation = $7"));
    }
}
