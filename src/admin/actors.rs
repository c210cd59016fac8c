//! `/actors`: the live supervision tree of a node, walked from its roots with ractor's `get_children`.
//!
//! An actor's kind comes from its message type (ractor records the `TypeId` of each actor's message), not from
//! a name, since Regent's actors are unnamed. Shards are asked for their number and the entity id of each of
//! their entity actors ([`ShardMessage::Describe`]); a shard that does not answer within
//! [`DESCRIBE_TIMEOUT`] is listed with an `error` and its entities without ids.
//!
//! A shard may hold a hundred thousand entities: at most `max_entities` entity leaves are listed under each
//! actor (the first by entity id), the others are counted in its `omitted`; [`ActorTree::counts`] stay exact.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef};
use serde::{Deserialize, Serialize};

use crate::actors::shard::ShardDescription;
use crate::actors::{EntityMessage, ProcessorMessage, RegionMessage, ShardMessage, SupervisorMessage};

/// Entity leaves listed per actor when the request does not say.
pub const DEFAULT_MAX_ENTITIES: usize = 1000;

/// How long a shard gets to describe itself.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/actors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorTree {
    /// The node walked.
    pub node: String,
    /// Entity leaves listed at most per actor.
    pub max_entities: usize,
    /// Actors of each kind, those not listed included.
    pub counts: BTreeMap<ActorKind, usize>,
    pub roots: Vec<ActorNode>,
}

/// What an actor is, told by its message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    Region,
    Shard,
    Entity,
    ReadSideSupervisor,
    ReadSideProcessor,
    /// The node's remotable actor, through which other members reach it.
    Peer,
    /// The shard coordinator (on the leader).
    Coordinator,
    /// ractor_cluster's `NodeServer`: its children are the links to other nodes and their remote proxies.
    NodeServer,
    Other,
}

impl ActorKind {
    pub fn of(cell: &ActorCell) -> ActorKind {
        let is = |kind: Option<bool>| kind == Some(true);
        if is(cell.is_message_type_of::<EntityMessage>()) {
            ActorKind::Entity
        } else if is(cell.is_message_type_of::<ShardMessage>()) {
            ActorKind::Shard
        } else if is(cell.is_message_type_of::<RegionMessage>()) {
            ActorKind::Region
        } else if is(cell.is_message_type_of::<ProcessorMessage>()) {
            ActorKind::ReadSideProcessor
        } else if is(cell.is_message_type_of::<SupervisorMessage>()) {
            ActorKind::ReadSideSupervisor
        } else if is(cell.is_message_type_of::<crate::cluster::wire::PeerMessage>()) {
            ActorKind::Peer
        } else if is(cell.is_message_type_of::<crate::cluster::coordinator::CoordinatorMessage>()) {
            ActorKind::Coordinator
        } else if is(cell.is_message_type_of::<ractor_cluster::NodeServerMessage>()) {
            ActorKind::NodeServer
        } else {
            ActorKind::Other
        }
    }

    /// The name `/actors` uses (`read-side-processor`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Region => "region",
            ActorKind::Shard => "shard",
            ActorKind::Entity => "entity",
            ActorKind::ReadSideSupervisor => "read-side-supervisor",
            ActorKind::ReadSideProcessor => "read-side-processor",
            ActorKind::Peer => "peer",
            ActorKind::Coordinator => "coordinator",
            ActorKind::NodeServer => "node-server",
            ActorKind::Other => "other",
        }
    }
}

/// One actor of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorNode {
    pub kind: ActorKind,
    /// ractor's actor id (`0.42`: node 0, the local one, actor 42).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ractor's status: `running`, `stopping`...
    pub status: String,
    /// A shard's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// An entity's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// An entity asked to passivate that has not stopped yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passivating: bool,
    /// Why the actor could not be described fully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Entity children left out of `children` (beyond `max_entities`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ActorNode>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ActorNode {
    fn new(kind: ActorKind, cell: &ActorCell) -> ActorNode {
        ActorNode {
            name: cell.get_name(),
            status: format!("{:?}", cell.get_status()).to_lowercase(),
            ..ActorNode::leaf(kind, cell.get_id().to_string())
        }
    }

    /// A running actor of `kind` with nothing else known (no name, shard, entity or children).
    pub fn leaf(kind: ActorKind, id: impl Into<String>) -> ActorNode {
        ActorNode {
            kind,
            id: id.into(),
            name: None,
            status: "running".into(),
            shard: None,
            entity_id: None,
            passivating: false,
            error: None,
            omitted: 0,
            children: Vec::new(),
        }
    }

    /// The order siblings are listed in: by kind, then shard number, entity id, actor id.
    fn sort_key(&self) -> (ActorKind, Option<u32>, Option<&str>, &str) {
        (self.kind, self.shard, self.entity_id.as_deref(), &self.id)
    }
}

/// Walks the trees under `roots`.
pub async fn walk(node: &str, roots: Vec<ActorCell>, max_entities: usize) -> ActorTree {
    let mut roots = join_all(roots.into_iter().map(|cell| describe(cell, max_entities))).await;
    roots.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let mut counts = BTreeMap::new();
    count(&roots, &mut counts);
    ActorTree { node: node.into(), max_entities, counts, roots }
}

/// Adds the actors of `nodes` and their subtrees to `counts`, omitted entities included.
pub fn count(nodes: &[ActorNode], counts: &mut BTreeMap<ActorKind, usize>) {
    for node in nodes {
        *counts.entry(node.kind).or_default() += 1;
        if node.omitted > 0 {
            *counts.entry(ActorKind::Entity).or_default() += node.omitted;
        }
        count(&node.children, counts);
    }
}

/// One actor and its subtree (boxed: the walk recurses).
fn describe(cell: ActorCell, max_entities: usize) -> BoxFuture<'static, ActorNode> {
    async move {
        let kind = ActorKind::of(&cell);
        let mut node = ActorNode::new(kind, &cell);
        let mut shard = None;
        if kind == ActorKind::Shard {
            match describe_shard(&cell).await {
                Ok(description) => {
                    node.shard = Some(description.shard);
                    shard = Some(description);
                }
                Err(error) => node.error = Some(error),
            }
        }

        let (entities, others): (Vec<ActorCell>, Vec<ActorCell>) =
            cell.get_children().into_iter().partition(|child| ActorKind::of(child) == ActorKind::Entity);
        let mut entities = entity_leaves(entities, shard.as_ref());
        entities.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        node.omitted = entities.len().saturating_sub(max_entities);
        entities.truncate(max_entities);

        let mut children = join_all(others.into_iter().map(|child| describe(child, max_entities))).await;
        children.extend(entities);
        children.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        node.children = children;
        node
    }
    .boxed()
}

/// Entity actors as leaves, with the ids their shard gave (entities have no children).
fn entity_leaves(cells: Vec<ActorCell>, shard: Option<&ShardDescription>) -> Vec<ActorNode> {
    let passivating: HashSet<&str> =
        shard.map(|s| s.passivating.iter().map(String::as_str).collect()).unwrap_or_default();
    cells
        .iter()
        .map(|cell| {
            let mut leaf = ActorNode::new(ActorKind::Entity, cell);
            leaf.entity_id = shard.and_then(|s| s.entities.get(&cell.get_id())).cloned();
            leaf.passivating = leaf.entity_id.as_deref().is_some_and(|id| passivating.contains(id));
            leaf
        })
        .collect()
}

async fn describe_shard(cell: &ActorCell) -> Result<ShardDescription, String> {
    let shard = ActorRef::<ShardMessage>::from(cell.clone());
    match shard.call(ShardMessage::Describe, Some(DESCRIBE_TIMEOUT)).await {
        Ok(CallResult::Success(description)) => Ok(description),
        Ok(CallResult::Timeout) => Err(format!("the shard did not describe itself within {DESCRIBE_TIMEOUT:?}")),
        Ok(CallResult::SenderError) | Err(_) => Err("the shard stopped before describing itself".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(kind: ActorKind, id: &str) -> ActorNode {
        ActorNode::leaf(kind, id)
    }

    #[test]
    fn counts_include_omitted_entities() {
        let mut shard = leaf(ActorKind::Shard, "0.2");
        shard.children = vec![leaf(ActorKind::Entity, "0.3"), leaf(ActorKind::Entity, "0.4")];
        shard.omitted = 5;
        let mut region = leaf(ActorKind::Region, "0.1");
        region.children = vec![shard, leaf(ActorKind::Shard, "0.5")];
        let mut counts = BTreeMap::new();
        count(&[region, leaf(ActorKind::ReadSideSupervisor, "0.6")], &mut counts);
        assert_eq!(
            counts,
            BTreeMap::from([
                (ActorKind::Region, 1),
                (ActorKind::Shard, 2),
                (ActorKind::Entity, 7),
                (ActorKind::ReadSideSupervisor, 1),
            ])
        );
    }

    #[test]
    fn kinds_serialize_as_their_names_also_as_map_keys() {
        for kind in [
            ActorKind::Region,
            ActorKind::Shard,
            ActorKind::Entity,
            ActorKind::ReadSideSupervisor,
            ActorKind::ReadSideProcessor,
            ActorKind::Other,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        }
        let counts = BTreeMap::from([(ActorKind::ReadSideProcessor, 3)]);
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(json, r#"{"read-side-processor":3}"#);
        assert_eq!(serde_json::from_str::<BTreeMap<ActorKind, usize>>(&json).unwrap(), counts);
    }

    #[test]
    fn a_leaf_leaves_out_what_it_does_not_have() {
        let json = serde_json::to_value(leaf(ActorKind::Entity, "0.3")).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "entity", "id": "0.3", "status": "running"}));
    }

    #[tokio::test]
    async fn kinds_come_from_message_types() {
        use ractor::{Actor, ActorProcessingErr, ActorRef};

        struct Plain;
        impl Actor for Plain {
            type Msg = ();
            type State = ();
            type Arguments = ();
            async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
                Ok(())
            }
        }
        let (actor, handle) = Actor::spawn(None, Plain, ()).await.unwrap();
        assert_eq!(ActorKind::of(&actor.get_cell()), ActorKind::Other);
        let tree = walk("n1", vec![actor.get_cell()], 10).await;
        assert_eq!(tree.counts, BTreeMap::from([(ActorKind::Other, 1)]));
        assert_eq!(tree.roots[0].kind, ActorKind::Other);
        actor.stop(None);
        handle.await.unwrap();
    }
}
