//! Reading a node's `GET /actors`: a JSON tree of `{kind, ..., children}` nodes whose kinds include `region`, `shard`
//! and `entity`. Everything the suite assumes about that format is in this file, so that a change of the endpoint
//! is one edit here.
//!
//! Assumed: a `shard` carries its number (`shard`, `shard_id`, `number` or `id`: an integer or a string of
//! digits); an `entity` its id (`entity_id`, `entity`, `id` or `name`). The top may be one object or an array, and
//! may hold other kinds (the node, the cluster daemon, ...), which are walked through and ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What one node's tree holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostedActors {
    pub regions: usize,
    /// Shard numbers under a region.
    pub shards: BTreeSet<u32>,
    /// Entity id → the shard it sits under (`None`: not under a shard, which is a violation of the tree).
    pub entities: BTreeMap<String, Option<u32>>,
    /// Shards or entities found outside a region, or with no number/id.
    pub misplaced: Vec<String>,
}

fn field<'a>(object: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|name| object.get(*name))
}

fn as_u32(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Walks the tree.
pub fn hosted(tree: &Value) -> HostedActors {
    let mut out = HostedActors::default();
    walk(tree, false, None, &mut out);
    out
}

fn walk(value: &Value, in_region: bool, shard: Option<u32>, out: &mut HostedActors) {
    let object = match value {
        Value::Array(items) => {
            for item in items {
                walk(item, in_region, shard, out);
            }
            return;
        }
        Value::Object(object) => object,
        _ => return,
    };
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let (mut in_region, mut shard) = (in_region, shard);
    match kind.as_str() {
        "region" => {
            out.regions += 1;
            in_region = true;
        }
        "shard" => match field(object, &["shard", "shard_id", "number", "id"]).and_then(as_u32) {
            Some(number) if in_region => {
                out.shards.insert(number);
                shard = Some(number);
            }
            Some(number) => out.misplaced.push(format!("shard {number} outside a region")),
            None => out.misplaced.push(format!("a shard without a number: {}", Value::Object(object.clone()))),
        },
        "entity" => match field(object, &["entity_id", "entity", "id", "name"]).and_then(as_text) {
            Some(id) => {
                if let Some(previous) = out.entities.insert(id.clone(), shard) {
                    out.misplaced.push(format!("entity {id} listed twice (under shard {previous:?} and {shard:?})"));
                }
            }
            None => out.misplaced.push(format!("an entity without an id: {}", Value::Object(object.clone()))),
        },
        _ => {}
    }
    // The endpoint's top level is `{node, counts, roots: [...]}`; each actor lists its `children`.
    for key in ["roots", "children"] {
        if let Some(children) = object.get(key) {
            walk(children, in_region, shard, out);
        }
    }
}
