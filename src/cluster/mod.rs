//! The cluster's authority layer: PostgreSQL is the referee (`shared/spec/cluster.md` C.2, C.4, C.6).
//!
//! Nothing here talks to other nodes; the transport (ractor_cluster), the failure detector and the shard
//! coordinator build on it. What it settles, in the database and with the database's clock:
//!
//! - [`membership`]: who is in the cluster, in which state (`joining` → `up` → `leaving` → `exiting` →
//!   `removed`, or `down`), with an `up_number` giving each member's age; each member's lease; reachability
//!   observations; the compare-and-set on the cluster version with which the split-brain resolver downs members;
//!   the predicate that fences journal writes of a member that is no longer allowed to write.
//! - [`lease`]: named leases (`leader`, `singleton:<name>`) with an epoch, the fencing token of their holder.
//! - [`keeper`]: the task that renews a node's own lease on a dedicated connection and fences the node (a
//!   [`keeper::Health`] watch) as soon as it cannot be sure its lease is still valid, or learns it was downed.
//! - [`sbr`]: Akka's split-brain resolver strategies as pure functions over a view of the members.
//!
//! A member is identified by its stable node name and its incarnation (one per boot), [`MemberId`]. A downed or
//! removed incarnation never comes back: a restarted node joins as a new incarnation, which removes the old one.

pub mod allocation;
pub mod coordinator;
pub mod detector;
pub mod discovery;
pub mod keeper;
pub mod lease;
pub mod membership;
pub mod peer;
pub mod runtime;
pub mod sbr;
pub mod status;
pub mod transport;
pub mod wire;

use std::fmt;
use std::str::FromStr;

/// One incarnation of a node: its stable name (configuration, host name) and a value unique to this boot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    pub node: String,
    pub incarnation: String,
}

impl MemberId {
    pub fn new(node: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self { node: node.into(), incarnation: incarnation.into() }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.incarnation)
    }
}

/// A member's state, Akka's lifecycle without `WeaklyUp` and the shutdown-preparation states.
///
/// `joining` → `up` (by the leader, with an up number) → `leaving` (graceful leave) → `exiting` (shards handed
/// off) → `removed`; any state but `removed` → `down` (by the split-brain resolver or an operator) → `removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberStatus {
    Joining,
    Up,
    Leaving,
    Exiting,
    Down,
    Removed,
}

impl MemberStatus {
    /// The value stored in `cluster_members.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Up => "up",
            Self::Leaving => "leaving",
            Self::Exiting => "exiting",
            Self::Down => "down",
            Self::Removed => "removed",
        }
    }

    /// Whether a member in this state may write to the journal (with a valid lease): `up` or `leaving`.
    pub fn may_write(self) -> bool {
        matches!(self, Self::Up | Self::Leaving)
    }

    /// `down` or `removed`: the incarnation is finished and must stop.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Down | Self::Removed)
    }

    /// Whether the lifecycle allows going from `self` to `to` (see the type's documentation).
    pub fn can_become(self, to: Self) -> bool {
        use MemberStatus::*;
        matches!(
            (self, to),
            (Joining, Up)
                | (Up, Leaving)
                | (Leaving, Exiting)
                | (Exiting, Removed)
                | (Down, Removed)
                | (Joining | Up | Leaving | Exiting, Down)
        )
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "joining" => Self::Joining,
            "up" => Self::Up,
            "leaving" => Self::Leaving,
            "exiting" => Self::Exiting,
            "down" => Self::Down,
            "removed" => Self::Removed,
            other => return Err(Error::Corrupt(format!("unknown member status {other:?}"))),
        })
    }
}

/// Errors of the cluster layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database failed or could not be reached (classified as the store classifies it).
    #[error(transparent)]
    Store(#[from] crate::persistence::Error),
    /// The member has no row: it never joined, or its row was deleted. It must not act as a member.
    #[error("unknown cluster member {0}")]
    UnknownMember(MemberId),
    /// The incarnation was downed or removed and can never rejoin: the node must restart as a new incarnation.
    #[error("cluster member {0} is {1} and cannot rejoin; restart with a new incarnation")]
    Tombstoned(MemberId, MemberStatus),
    /// A status change the lifecycle does not allow.
    #[error("cluster member cannot go from {from} to {to}")]
    InvalidTransition { from: MemberStatus, to: MemberStatus },
    /// A row the code cannot interpret.
    #[error("unexpected cluster data: {0}")]
    Corrupt(String),
    /// The node-to-node TLS files (`cluster.tls_*`) cannot be used.
    #[error("node-to-node TLS: {0}")]
    Tls(#[from] crate::tls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A duration as whole milliseconds for SQL (`$n::BIGINT * interval '1 millisecond'`), at least 1.
pub(crate) fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A tokio-postgres error, classified like the store's.
pub(crate) fn db(err: deadpool_postgres::tokio_postgres::Error) -> Error {
    Error::Store(crate::persistence::postgres::map_error(err))
}

/// A pool error, classified like the store's.
pub(crate) fn pool(err: deadpool_postgres::PoolError) -> Error {
    Error::Store(crate::persistence::postgres::map_error(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_sql_names() {
        use MemberStatus::*;
        for status in [Joining, Up, Leaving, Exiting, Down, Removed] {
            assert_eq!(status.as_str().parse::<MemberStatus>().unwrap(), status);
        }
        assert!(matches!("weakly-up".parse::<MemberStatus>(), Err(Error::Corrupt(_))));
    }

    #[test]
    fn the_lifecycle_only_moves_forward() {
        use MemberStatus::*;
        assert!(Joining.can_become(Up));
        assert!(Up.can_become(Down));
        assert!(Down.can_become(Removed));
        assert!(!Down.can_become(Up));
        assert!(!Removed.can_become(Down));
        assert!(!Up.can_become(Joining));
        assert!(!Leaving.can_become(Up));
    }
}
