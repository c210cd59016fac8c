//! Named leases in `cluster_leases` (migration 0005): `leader` (the member allowed to promote and down members),
//! `singleton:<name>` (the shard coordinator and other cluster singletons).
//!
//! A lease is held by one member until `expires_at`, by the database's clock. Its **epoch is the fencing token**
//! of the holder: it is bumped whenever the lease changes hands, and only then. A renewal by the current holder
//! keeps the epoch, including a holder re-acquiring its own expired or released lease that nobody took in between:
//! no one else held it, so the writes it fenced are still its own. Anything written under a lease carries its
//! epoch (`WHERE coordinator_epoch = $epoch`), so a holder that lost the lease without noticing writes nothing.
//! The first holder of a lease gets epoch 1.

use deadpool_postgres::{Pool, tokio_postgres};
use std::time::{Duration, SystemTime};

use super::{MemberId, Result, db, millis, pool};

/// The lease of the cluster leader (the oldest up member, in principle): only its holder promotes joining
/// members and applies split-brain decisions.
pub const LEADER: &str = "leader";

/// The current holder of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: MemberId,
    pub epoch: i64,
    pub expires_at: SystemTime,
}

/// Acquires or renews a lease: inserts it if missing; takes it if it expired (bumping the epoch if the holder
/// changes); extends it if `$2, $3` already hold it. `$1` name, `$2` node, `$3` incarnation, `$4` TTL in ms.
/// Returns the epoch, or no row when another member holds a valid lease.
const ACQUIRE_SQL: &str = "INSERT INTO cluster_leases AS l (name, holder_node, holder_incarnation, epoch, expires_at) \
     VALUES ($1, $2, $3, 1, clock_timestamp() + $4::BIGINT * interval '1 millisecond') \
     ON CONFLICT (name) DO UPDATE SET \
         epoch = CASE WHEN (l.holder_node, l.holder_incarnation) IS NOT DISTINCT FROM ($2, $3) \
             THEN l.epoch ELSE l.epoch + 1 END, \
         holder_node = EXCLUDED.holder_node, \
         holder_incarnation = EXCLUDED.holder_incarnation, \
         expires_at = EXCLUDED.expires_at \
     WHERE l.expires_at <= clock_timestamp() OR (l.holder_node, l.holder_incarnation) IS NOT DISTINCT FROM ($2, $3) \
     RETURNING epoch";

/// The named leases, over a pool whose connections use the cluster's schema.
#[derive(Clone)]
pub struct Leases {
    pool: Pool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("pool", &self.pool.status()).finish()
    }
}

impl Leases {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool)
    }

    /// Acquires lease `name` for `holder` for `ttl` from now (database time), or renews it if `holder` has it.
    /// Returns its epoch (see the module documentation), or `None` when another member holds it.
    pub async fn acquire(&self, name: &str, holder: &MemberId, ttl: Duration) -> Result<Option<i64>> {
        let client = self.client().await?;
        acquire_on(&client, name, holder, ttl).await
    }

    /// Gives lease `name` up if `holder` holds it (it expires now, so anyone may take it at once). Returns
    /// whether it did. The holder must stop whatever the lease protects *before* releasing it.
    pub async fn release(&self, name: &str, holder: &MemberId) -> Result<bool> {
        let client = self.client().await?;
        let released = client
            .execute(
                "UPDATE cluster_leases SET expires_at = clock_timestamp() \
                 WHERE name = $1 AND holder_node = $2 AND holder_incarnation = $3 AND expires_at > clock_timestamp()",
                &[&name, &holder.node, &holder.incarnation],
            )
            .await
            .map_err(db)?;
        Ok(released > 0)
    }

    /// The holder of lease `name`, if its lease is valid now.
    pub async fn holder(&self, name: &str) -> Result<Option<LeaseHolder>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT holder_node, holder_incarnation, epoch, expires_at FROM cluster_leases \
                 WHERE name = $1 AND expires_at > clock_timestamp() AND holder_node IS NOT NULL",
                &[&name],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LeaseHolder {
            holder: MemberId::new(row.try_get::<_, String>(0).map_err(db)?, row.try_get::<_, String>(1).map_err(db)?),
            epoch: row.try_get(2).map_err(db)?,
            expires_at: row.try_get(3).map_err(db)?,
        }))
    }
}

/// [`Leases::acquire`] on a given connection (a dedicated one, like the lease keeper's; its `search_path` must be
/// the cluster's schema).
pub async fn acquire_on(
    client: &tokio_postgres::Client,
    name: &str,
    holder: &MemberId,
    ttl: Duration,
) -> Result<Option<i64>> {
    let row =
        client.query_opt(ACQUIRE_SQL, &[&name, &holder.node, &holder.incarnation, &millis(ttl)]).await.map_err(db)?;
    row.map(|row| row.try_get(0).map_err(db)).transpose()
}
