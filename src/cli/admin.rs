//! `regent admin ...`: a node's admin endpoint (`/health`, `/ready`, `/cluster`, `/actors`), printed for people.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hyper::StatusCode;
use serde_json::Value;

use super::AdminCommand;
use crate::admin::actors::{ActorKind, ActorNode, ActorTree};
use crate::admin::{Readiness, client};
use crate::cluster::status::ClusterStatus;

/// Runs one `regent admin` command.
pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Health(node) => {
            let health: Value = client::get_json_with_token(&node.node, "/health", &[], node.token()).await?;
            println!("{}", health["status"].as_str().unwrap_or("unknown"));
        }
        AdminCommand::Ready(node) => {
            let readiness: Readiness =
                client::get_json_with_token(&node.node, "/ready", &[StatusCode::SERVICE_UNAVAILABLE], node.token())
                    .await?;
            if !readiness.ready {
                bail!("not ready: {}", readiness.reason);
            }
            println!("ready");
        }
        AdminCommand::Cluster(node) => {
            let status: ClusterStatus = client::get_json_with_token(&node.node, "/cluster", &[], node.token()).await?;
            print!("{}", render_cluster(&status));
        }
        AdminCommand::Actors { max_entities, node } => {
            let path = format!("/actors?max_entities={max_entities}");
            let tree: ActorTree = client::get_json_with_token(&node.node, &path, &[], node.token()).await?;
            print!("{}", render_actors(&tree));
        }
    }
    Ok(())
}

/// `/cluster` as a summary, a table of members and the shard → member map.
pub fn render_cluster(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let me = &status.self_member.id;
    if status.enabled {
        let _ = writeln!(out, "cluster of {} members, {} shards", status.members.len(), status.num_shards);
    } else {
        let _ = writeln!(out, "single node (clustering disabled), {} shards", status.num_shards);
    }
    let or_none = |id: &Option<String>| id.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "this node:   {me}");
    if status.enabled {
        let _ = writeln!(out, "leader:      {}", or_none(&status.leader));
        let _ = writeln!(out, "coordinator: {}", or_none(&status.coordinator));
        let _ = writeln!(out, "oldest:      {}", or_none(&status.oldest));
    }

    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "node",
        "incarnation",
        "address",
        "status",
        "up#",
        "reachable",
        "connected",
        "shards",
        "lease",
    ]);
    for m in &status.members {
        let node = if &m.id == me { format!("{} (self)", m.node) } else { m.node.clone() };
        let lease = match (status.enabled, m.lease_expires_in_ms) {
            (false, _) => "-".to_string(),
            (true, ms) if ms >= 0 => format!("{:.1} s left", ms as f64 / 1000.0),
            (true, ms) => format!("expired {:.1} s ago", -ms as f64 / 1000.0),
        };
        table.add_row([
            node,
            m.incarnation.clone(),
            m.address.clone(),
            m.status.clone(),
            m.up_number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            yes_no(m.reachable).into(),
            yes_no(m.connected).into(),
            if status.enabled { m.shards.to_string() } else { "-".into() },
            lease,
        ]);
    }
    let _ = writeln!(out, "{table}");

    if !status.enabled {
        let _ = writeln!(out, "shards: all {} on this node", status.num_shards);
        return out;
    }
    let mut by_member: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for home in &status.shards {
        by_member.entry(&home.member).or_default().push(home.shard);
    }
    let _ = writeln!(out, "shards:");
    for (member, shards) in &by_member {
        let _ = writeln!(out, "  {member}: {} ({})", ranges(shards), shards.len());
    }
    let allocated: BTreeSet<u32> = status.shards.iter().map(|home| home.shard).collect();
    let unallocated: Vec<u32> = (0..status.num_shards).filter(|s| !allocated.contains(s)).collect();
    if !unallocated.is_empty() {
        let _ = writeln!(out, "  not allocated: {} ({})", ranges(&unallocated), unallocated.len());
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Shard numbers as ranges: `0-3, 7, 9-10`.
pub fn ranges(shards: &[u32]) -> String {
    let sorted: BTreeSet<u32> = shards.iter().copied().collect();
    let mut spans: Vec<(u32, u32)> = Vec::new();
    for shard in sorted {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == shard => *end = shard,
            _ => spans.push((shard, shard)),
        }
    }
    let span = |(start, end): &(u32, u32)| if start == end { start.to_string() } else { format!("{start}-{end}") };
    spans.iter().map(span).collect::<Vec<_>>().join(", ")
}

/// `/actors` as an indented tree under a line of counts.
pub fn render_actors(tree: &ActorTree) -> String {
    let counts: Vec<String> = tree.counts.iter().map(|(kind, n)| format!("{} {n}", kind.as_str())).collect();
    let mut out =
        format!("node {}: {}\n", tree.node, if counts.is_empty() { "no actors".into() } else { counts.join(", ") });
    for root in &tree.roots {
        render_actor(root, 0, tree.max_entities, &mut out);
    }
    out
}

fn render_actor(actor: &ActorNode, depth: usize, max_entities: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let mut line = format!("{indent}{}", actor.kind.as_str());
    match actor.kind {
        ActorKind::Shard => line += &actor.shard.map(|s| format!(" {s}")).unwrap_or_default(),
        ActorKind::Entity => line += &format!(" {}", actor.entity_id.as_deref().unwrap_or("?")),
        _ => {}
    }
    if let Some(name) = &actor.name {
        line += &format!(" {name:?}");
    }
    line += &format!("  [{}] {}", actor.id, actor.status);
    if actor.passivating {
        line += ", passivating";
    }
    if let Some(error) = &actor.error {
        line += &format!("  ({error})");
    }
    let _ = writeln!(out, "{line}");
    for child in &actor.children {
        render_actor(child, depth + 1, max_entities, out);
    }
    if actor.omitted > 0 {
        let _ = writeln!(out, "{indent}  … {} more entities (at most {max_entities} listed)", actor.omitted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::status::{MemberStatusView, ShardHomeView};

    #[test]
    fn shard_ranges_are_compact() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[7, 0, 1, 2, 3, 9, 10, 3]), "0-3, 7, 9-10");
    }

    fn member(node: &str, shards: u32, lease_ms: i64) -> MemberStatusView {
        MemberStatusView {
            id: format!("{node}.i1"),
            node: node.into(),
            incarnation: "i1".into(),
            address: format!("{node}:25520"),
            status: "up".into(),
            up_number: Some(1),
            reachable: true,
            lease_expires_in_ms: lease_ms,
            connected: true,
            shards,
        }
    }

    #[test]
    fn a_cluster_shows_members_leader_and_where_shards_live() {
        let home = |shard, node: &str| ShardHomeView { shard, member: format!("{node}.i1"), node: node.into() };
        let status = ClusterStatus {
            enabled: true,
            self_member: member("a", 3, 8_000),
            leader: Some("a.i1".into()),
            coordinator: Some("a.i1".into()),
            oldest: Some("a.i1".into()),
            members: vec![member("a", 3, 8_000), member("b", 1, -1_500)],
            num_shards: 6,
            shards: vec![home(0, "a"), home(1, "a"), home(2, "a"), home(4, "b")],
        };
        let text = render_cluster(&status);
        assert!(text.contains("cluster of 2 members, 6 shards"), "{text}");
        assert!(text.contains("leader:      a.i1"), "{text}");
        assert!(text.contains("a (self)"), "{text}");
        assert!(text.contains("8.0 s left") && text.contains("expired 1.5 s ago"), "{text}");
        assert!(text.contains("  a.i1: 0-2 (3)\n  b.i1: 4 (1)\n  not allocated: 3, 5 (2)"), "{text}");
    }

    #[test]
    fn the_tree_is_indented_with_counts_and_omissions() {
        let node = |kind, id: &str| ActorNode::leaf(kind, id);
        let mut entity = node(ActorKind::Entity, "0.3");
        entity.entity_id = Some("acct-1".into());
        entity.passivating = true;
        let mut shard = node(ActorKind::Shard, "0.2");
        shard.shard = Some(5);
        shard.children = vec![entity];
        shard.omitted = 2;
        let mut region = node(ActorKind::Region, "0.1");
        region.children = vec![shard];
        let tree = ActorTree {
            node: "n1".into(),
            max_entities: 1,
            counts: BTreeMap::from([(ActorKind::Region, 1), (ActorKind::Shard, 1), (ActorKind::Entity, 3)]),
            roots: vec![region],
        };
        assert_eq!(
            render_actors(&tree),
            "node n1: region 1, shard 1, entity 3\n\
             region  [0.1] running\n  \
             shard 5  [0.2] running\n    \
             entity acct-1  [0.3] running, passivating\n    \
             … 2 more entities (at most 1 listed)\n"
        );
    }
}
