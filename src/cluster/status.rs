//! What a node knows of its cluster, as the admin endpoint's `/cluster` serves it (JSON) and `regent admin
//! cluster` prints it.

use serde::{Deserialize, Serialize};

/// `/cluster`: this node's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Whether this node runs in a cluster (`REGENT_CLUSTER_ENABLED`); a single node lists itself only.
    pub enabled: bool,
    /// This node.
    pub self_member: MemberStatusView,
    /// `node.incarnation` of the leader (holder of the leader lease), which also runs the shard coordinator.
    pub leader: Option<String>,
    /// `node.incarnation` of the shard coordinator (the cluster singleton).
    pub coordinator: Option<String>,
    /// `node.incarnation` of the oldest `up` member.
    pub oldest: Option<String>,
    /// Every member the database lists (removed ones excluded), oldest first.
    pub members: Vec<MemberStatusView>,
    /// The number of shards of the cluster (`COS_NUM_SHARDS`).
    pub num_shards: u32,
    /// Where each allocated shard lives; a shard not listed is not allocated yet (it will be on first use).
    pub shards: Vec<ShardHomeView>,
}

/// One member, as `/cluster` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberStatusView {
    /// `node.incarnation`
    pub id: String,
    pub node: String,
    pub incarnation: String,
    /// `host:port` of its node-to-node listener.
    pub address: String,
    /// `joining`, `up`, `leaving`, `exiting`, `down`, `removed`.
    pub status: String,
    /// Its age rank: the lowest is the oldest member.
    pub up_number: Option<i64>,
    /// Whether no member currently reports it unreachable.
    pub reachable: bool,
    /// Milliseconds until its lease expires (negative: expired).
    pub lease_expires_in_ms: i64,
    /// Whether this node has a live link to it (always true for the node itself).
    pub connected: bool,
    /// Shards allocated to it.
    pub shards: u32,
}

/// One shard's home.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHomeView {
    pub shard: u32,
    /// `node.incarnation` of the member hosting it.
    pub member: String,
    pub node: String,
}

/// Whatever can produce a [`ClusterStatus`] (the running cluster, or a single node describing itself).
#[async_trait::async_trait]
pub trait ClusterStatusSource: Send + Sync + 'static {
    async fn status(&self) -> ClusterStatus;
}
