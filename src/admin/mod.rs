//! The admin endpoint: JSON over HTTP on its own listener (`admin.address:admin.port`, default
//! `127.0.0.1:8558`), for probes and operators rather than clients.
//!
//! - `GET /health`: `200 {"status":"ok"}` while the process serves (liveness).
//! - `GET /ready`: `200 {"ready":true}` once the node takes traffic, else `503 {"ready":false,"reason":...}`
//!   (readiness). Whoever starts the node drives it through a [`Readiness`] watch.
//! - `GET /cluster`: the node's view of its cluster, a [`ClusterStatus`] from its [`ClusterStatusSource`]
//!   ([`SingleNode`] when the node runs alone).
//! - `GET /actors[?max_entities=N]`: the node's live actor tree, walked from its [`ActorRoots`] (see
//!   [`actors`]).
//! - `GET /readsides`: the read-side processors running on this node, with offset, status and lag
//!   ([`ReadSideView`](crate::metrics::ReadSideView)); `[]` when read sides are off.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text, see [`crate::metrics`]).
//! - `GET /`: the admin page ([`page`]): members, shard map, read sides and actor tree, refreshed live.
//!
//! With a token (`admin.token`), every route but `/health`, `/ready` and the page's own files (`/`, `/admin.css`,
//! `/admin.js`: static, no data) answers `401` unless the request carries `Authorization: Bearer <token>`.
//!
//! [`server`] serves them, [`client`] is the HTTP GET `regent admin` uses.

pub mod actors;
pub mod client;
pub mod page;
pub mod server;

use std::sync::{Arc, Mutex};

use ractor::{ActorCell, ActorStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::status::{ClusterStatus, ClusterStatusSource, MemberStatusView};

pub use server::{AdminServer, HttpServer};

/// What the admin endpoint serves from.
#[derive(Clone)]
pub struct AdminContext {
    /// How this node names itself in `/actors`.
    pub node: String,
    /// `/ready`: the node's current readiness.
    pub readiness: watch::Receiver<Readiness>,
    /// `/cluster`.
    pub cluster: Arc<dyn ClusterStatusSource>,
    /// `/actors`: where the walk starts.
    pub actors: ActorRoots,
    /// `/readsides` and the read-side metrics, when read sides are enabled.
    pub read_sides: Option<crate::grpc::manager::ReadSideManager>,
    /// The bearer token the data routes demand (empty = none).
    pub token: crate::config::Secret,
}

/// Whether the node takes traffic, and if not why (`/ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Readiness {
    pub fn ready() -> Readiness {
        Readiness { ready: true, reason: String::new() }
    }

    pub fn not_ready(reason: impl Into<String>) -> Readiness {
        Readiness { ready: false, reason: reason.into() }
    }
}

/// The roots of a node's actor tree, the actors `/actors` walks down from (the shard region, the read-side
/// supervisor, daemons). Cheap to clone; a root added while serving shows up in the next walk.
#[derive(Clone, Default)]
pub struct ActorRoots(Arc<Mutex<Vec<ActorCell>>>);

impl ActorRoots {
    pub fn new(roots: impl IntoIterator<Item = ActorCell>) -> ActorRoots {
        ActorRoots(Arc::new(Mutex::new(roots.into_iter().collect())))
    }

    /// Adds a root, forgetting the roots that have stopped.
    pub fn add(&self, root: ActorCell) {
        let mut roots = self.0.lock().expect("actor roots lock poisoned");
        roots.retain(|cell| cell.get_status() != ActorStatus::Stopped);
        roots.push(root);
    }

    pub fn cells(&self) -> Vec<ActorCell> {
        self.0.lock().expect("actor roots lock poisoned").clone()
    }
}

/// The [`ClusterStatusSource`] of a node that runs alone: `enabled: false`, itself as the only member, `up`,
/// without leader, coordinator or shard allocations.
pub struct SingleNode {
    /// The node's name.
    pub node: String,
    /// Where clients reach it (its gRPC address).
    pub address: String,
    pub num_shards: u32,
}

#[async_trait::async_trait]
impl ClusterStatusSource for SingleNode {
    async fn status(&self) -> ClusterStatus {
        let member = MemberStatusView {
            id: self.node.clone(),
            node: self.node.clone(),
            incarnation: String::new(),
            address: self.address.clone(),
            status: "up".into(),
            up_number: None,
            reachable: true,
            lease_expires_in_ms: 0,
            connected: true,
            shards: 0,
        };
        ClusterStatus {
            enabled: false,
            self_member: member.clone(),
            members: vec![member],
            num_shards: self.num_shards,
            ..ClusterStatus::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_serializes_its_reason_only_when_not_ready() {
        assert_eq!(serde_json::to_string(&Readiness::ready()).unwrap(), r#"{"ready":true}"#);
        assert_eq!(
            serde_json::to_string(&Readiness::not_ready("joining the cluster")).unwrap(),
            r#"{"ready":false,"reason":"joining the cluster"}"#
        );
        let parsed: Readiness = serde_json::from_str(r#"{"ready":true}"#).unwrap();
        assert_eq!(parsed, Readiness::ready());
    }

    #[tokio::test]
    async fn a_single_node_lists_itself_only() {
        let source = SingleNode { node: "n1".into(), address: "127.0.0.1:9000".into(), num_shards: 16 };
        let status = source.status().await;
        assert!(!status.enabled);
        assert_eq!(status.members, vec![status.self_member.clone()]);
        assert_eq!(status.self_member.node, "n1");
        assert_eq!(status.self_member.status, "up");
        assert_eq!(status.num_shards, 16);
        assert!(status.leader.is_none() && status.shards.is_empty());
    }
}
