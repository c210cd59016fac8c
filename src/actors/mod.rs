//! The actors that keep entities: a node's supervision tree is
//!
//! ```text
//! ShardRegion                      (one per node: routes a request to the shard of its entity)
//!  └── Shard 0..num_shards        (spawned on first use: owns the entities of one shard, passivates idle ones)
//!       └── Entity <entity_id>     (one per live entity: recovers, then processes its messages one at a time)
//!
//! ReadSideSupervisor               (one per node when read sides are enabled)
//!  └── ReadSideProcessor           (one per read side × shard: delivers the shard's events in order)
//! ```
//!
//! The cluster issue places shards on other nodes; the region already routes by shard so that only the
//! region needs to learn where a shard lives.

pub mod entity;
pub mod read_side_processor;
pub mod read_side_supervisor;
pub mod region;
pub mod shard;

pub use entity::{EntityActor, EntityMessage, EntitySettings};
pub use read_side_processor::{ProcessorMessage, ReadSideProcessor};
pub use read_side_supervisor::{ReadSideOp, ReadSideSupervisor, SupervisorMessage};
pub use region::{RegionMessage, ShardRegion};
pub use shard::{ShardActor, ShardMessage};

use crate::persistence;
use crate::proto::chief_of_state::v1::{Header, StateWrapper};

/// What a caller gets back from an entity.
pub type EntityReply = Result<StateWrapper, CommandError>;

/// A command as the entity receives it.
#[derive(Debug, Clone)]
pub struct CommandEnvelope {
    pub command: prost_types::Any,
    /// Incoming metadata forwarded to `HandleCommand` (`COS_WRITE_SIDE_PROPAGATED_HEADERS`).
    pub propagated_headers: tonic::metadata::MetadataMap,
    /// Incoming metadata stored on each new event (`COS_WRITE_PERSISTED_HEADERS`).
    pub persisted_headers: Vec<Header>,
    /// The trace context of the request (W3C), so that the entity's spans join the caller's trace.
    pub trace_context: crate::telemetry::TraceContext,
}

/// Why an entity could not process a request: the caller's business, sent back in the reply.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The write handler answered with a gRPC error (or could not be reached): relayed as is.
    #[error("write handler: {}", .0.message())]
    Handler(tonic::Status),
    /// The handler's reply broke the contract or failed validation.
    #[error("{0}")]
    InvalidArgument(String),
    /// `GetState` of an entity that has no event.
    #[error("entity not found")]
    NotFound,
    /// The entity's revision number would overflow `uint32`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The entity already has `entities.queue_limit` requests waiting: this one is refused, not queued.
    #[error("entity {entity_id:?} has {limit} requests waiting (REGENT_ENTITY_QUEUE_LIMIT); try again later")]
    Overloaded { entity_id: String, limit: usize },
    /// In a cluster: the request reached a node that does not host the entity's shard (its home moved).
    #[error("shard {shard} is not hosted on this node")]
    WrongHome { shard: u32 },
    /// The journal or snapshot store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] persistence::Error),
}

/// The shard of an entity: `abs(java_string_hash(entity_id)) % num_shards`, as Chief of State computes it, so
/// that shard numbers and read-side offsets per shard match a CoS database.
///
/// Java's `Math.abs(Integer.MIN_VALUE)` stays negative; the few ids hashing there get `2^31 % num_shards` here.
pub fn shard_of(entity_id: &str, num_shards: u32) -> u32 {
    (java_string_hash(entity_id).unsigned_abs()) % num_shards
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, wrapping at 32 bits.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_known_values() {
        // Values from java.lang.String#hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(java_string_hash("entity-1"), -2_102_100_793);
        // A character outside the BMP counts as two UTF-16 units.
        assert_eq!(java_string_hash("😀"), 1_772_899);
    }

    #[test]
    fn shard_is_in_range_and_stable() {
        for id in ["", "a", "hello", "polygenelubricants", "entity-1", "😀"] {
            let s = shard_of(id, 16);
            assert!(s < 16);
            assert_eq!(s, shard_of(id, 16));
        }
        assert_eq!(shard_of("hello", 9), 99_162_322 % 9);
        assert_eq!(shard_of("entity-1", 16), 2_102_100_793 % 16);
    }
}
