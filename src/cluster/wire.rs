//! What travels between nodes: one ractor_cluster RPC, [`PeerMessage::Request`], whose bytes are our own
//! versioned protobuf envelope (`regent.v1.PeerRequest`, answered by a `PeerReply`; see
//! `proto/regent/v1/cluster.proto`). ractor_cluster silently drops messages it cannot decode
//! (`shared/spec/cluster.md` A.8); with one envelope of our own, a node of another wire version gets a clear
//! `Refused` instead.

use prost::Message as _;
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::proto::regent::v1 as pb;

/// The version of the envelope this build speaks; a request of another version is refused.
pub const WIRE_VERSION: u32 = 1;

/// The largest encoded `PeerRequest` or `PeerReply` a node sends. ractor_cluster 0.16.5 ends the whole session
/// (every request between the two nodes) when a frame is above its `DEFAULT_MAX_INBOUND_FRAME_SIZE` of 16 MiB, so
/// a message that would not fit is answered with `OUT_OF_RANGE` by the sender instead; 64 KiB are left for
/// ractor_cluster's own framing around our bytes.
pub const MAX_PEER_MESSAGE_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

/// The process group every node's [`PeerActor`](super::peer::PeerActor) joins, and the prefix of its name.
pub const PEER_GROUP: &str = "regent.peers";

/// The name of a member's peer actor: `regent.peer.<node>.<incarnation>`.
pub fn peer_actor_name(member: &str) -> String {
    format!("regent.peer.{member}")
}

/// The message of the one remotable actor per node. Never rename the variant: it is its identity on the wire.
#[derive(RactorClusterMessage)]
pub enum PeerMessage {
    /// An encoded `PeerRequest`, answered with an encoded `PeerReply`.
    #[rpc]
    Request(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// Metadata as it crosses the wire (ASCII and binary entries).
pub fn metadata_to_wire(metadata: &MetadataMap) -> Vec<pb::MetadataEntry> {
    metadata
        .iter()
        .map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => pb::MetadataEntry {
                key: key.as_str().to_string(),
                value: Some(pb::metadata_entry::Value::Ascii(value.to_str().unwrap_or_default().to_string())),
            },
            KeyAndValueRef::Binary(key, value) => pb::MetadataEntry {
                key: key.as_str().to_string(),
                value: Some(pb::metadata_entry::Value::Binary(value.to_bytes().unwrap_or_default().to_vec())),
            },
        })
        .collect()
}

/// The inverse of [`metadata_to_wire`]; entries that are not valid metadata are skipped.
pub fn metadata_from_wire(entries: Vec<pb::MetadataEntry>) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for entry in entries {
        match entry.value {
            Some(pb::metadata_entry::Value::Ascii(value)) => {
                if let (Ok(key), Ok(value)) =
                    (MetadataKey::from_bytes(entry.key.as_bytes()), MetadataValue::try_from(value.as_str()))
                {
                    metadata.append(key, value);
                }
            }
            Some(pb::metadata_entry::Value::Binary(value)) => {
                if let Ok(key) = MetadataKey::from_bytes(entry.key.as_bytes()) {
                    metadata.append_bin(key, MetadataValue::from_bytes(&value));
                }
            }
            None => {}
        }
    }
    metadata
}

/// A status as the owner node answered it.
pub fn status_to_wire(status: &Status) -> pb::Failure {
    pb::Failure {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: status.details().to_vec(),
        metadata: metadata_to_wire(status.metadata()),
    }
}

/// The inverse of [`status_to_wire`].
pub fn status_from_wire(failure: pb::Failure) -> Status {
    Status::with_details_and_metadata(
        Code::from_i32(failure.code),
        failure.message,
        failure.details.into(),
        metadata_from_wire(failure.metadata),
    )
}

/// Decodes a request from another node (untrusted bytes): the `PeerRequest`, or why it is refused (it does not
/// decode, or speaks another wire version; answer with [`refused`]). Never panics, whatever the bytes.
pub fn decode_request(bytes: &[u8]) -> Result<pb::PeerRequest, String> {
    let request = pb::PeerRequest::decode(bytes).map_err(|e| format!("undecodable request: {e}"))?;
    if request.version != WIRE_VERSION {
        return Err(format!("wire version {} is not {WIRE_VERSION}", request.version));
    }
    Ok(request)
}

/// The bytes of `reply`, or, when they are above [`MAX_PEER_MESSAGE_BYTES`], of an entity failure saying so: the
/// link must survive a reply too large to carry. (The command was applied on this node; only its answer is lost,
/// as when the caller's ask times out.)
pub fn encode_reply(reply: &pb::PeerReply) -> Vec<u8> {
    let bytes = reply.encode_to_vec();
    if bytes.len() <= MAX_PEER_MESSAGE_BYTES {
        return bytes;
    }
    let status = Status::out_of_range(format!(
        "the reply is too large to cross between nodes ({} bytes, at most {MAX_PEER_MESSAGE_BYTES}); the command \
         was applied on the node that owns the entity",
        bytes.len()
    ));
    let outcome = pb::entity_reply::Outcome::Failure(status_to_wire(&status));
    pb::PeerReply { kind: Some(pb::peer_reply::Kind::Entity(pb::EntityReply { outcome: Some(outcome) })) }
        .encode_to_vec()
}

/// The `PeerReply` to a heartbeat.
pub fn pong(sequence: u64) -> pb::PeerReply {
    pb::PeerReply { kind: Some(pb::peer_reply::Kind::Pong(pb::Pong { sequence })) }
}

/// A `PeerReply` refusing a request.
pub fn refused(reason: impl Into<String>, wrong_home: bool) -> pb::PeerReply {
    pb::PeerReply { kind: Some(pb::peer_reply::Kind::Refused(pb::Refused { reason: reason.into(), wrong_home })) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_too_large_for_the_link_becomes_out_of_range() {
        let small = pong(7);
        assert_eq!(encode_reply(&small), small.encode_to_vec());
        let state = pb::entity_reply::Outcome::State(crate::proto::chief_of_state::v1::StateWrapper {
            state: Some(prost_types::Any { type_url: "t".into(), value: vec![0; MAX_PEER_MESSAGE_BYTES] }),
            meta: None,
        });
        let big = pb::PeerReply { kind: Some(pb::peer_reply::Kind::Entity(pb::EntityReply { outcome: Some(state) })) };
        let bytes = encode_reply(&big);
        assert!(bytes.len() < 1024);
        let Some(pb::peer_reply::Kind::Entity(pb::EntityReply {
            outcome: Some(pb::entity_reply::Outcome::Failure(f)),
        })) = pb::PeerReply::decode(bytes.as_slice()).unwrap().kind
        else {
            panic!("not an entity failure")
        };
        assert_eq!(status_from_wire(f).code(), Code::OutOfRange);
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        for bytes in [&[0x0a, 0xff, 0xff][..], &[0x08, 0x02][..], &[0x0f][..]] {
            let why = decode_request(bytes).expect_err("refused");
            assert!(why.starts_with("undecodable request") || why.starts_with("wire version"), "{bytes:?}: {why}");
        }
        let ok = pb::PeerRequest { version: WIRE_VERSION, from: "n1.1".into(), kind: None }.encode_to_vec();
        assert_eq!(decode_request(&ok).unwrap().from, "n1.1");
    }

    #[test]
    fn statuses_cross_the_wire_with_details_and_metadata() {
        let mut md = MetadataMap::new();
        md.insert("x-custom", "v".parse().unwrap());
        md.insert_bin("x-raw-bin", MetadataValue::from_bytes(b"\x00\x01"));
        let status = Status::with_details_and_metadata(Code::NotFound, "no account", vec![8, 5].into(), md);
        let back = status_from_wire(status_to_wire(&status));
        assert_eq!(back.code(), Code::NotFound);
        assert_eq!(back.message(), "no account");
        assert_eq!(back.details(), &[8, 5]);
        assert_eq!(back.metadata().get("x-custom").unwrap(), "v");
        assert_eq!(back.metadata().get_bin("x-raw-bin").unwrap().to_bytes().unwrap().as_ref(), b"\x00\x01");
    }
}
