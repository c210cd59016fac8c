//! The cluster peer envelope: bytes from another node are untrusted. Decodes them as a `PeerRequest` the way the
//! peer actor does (`cluster::wire::decode_request`), and as a `PeerReply` the way a forwarding node does, then
//! turns what a request or reply carries into metadata and statuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use regent::cluster::wire::{decode_request, metadata_from_wire, metadata_to_wire, status_from_wire, status_to_wire};
use regent::proto::regent::v1::{PeerReply, entity_reply, peer_reply, peer_request};

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            if let Some(peer_request::Kind::Entity(entity)) = request.kind {
                let metadata = metadata_from_wire(entity.propagated_headers);
                // What was accepted crosses the wire again unchanged.
                let again = metadata_from_wire(metadata_to_wire(&metadata));
                assert_eq!(again.len(), metadata.len());
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
    if let Ok(PeerReply { kind: Some(peer_reply::Kind::Entity(reply)) }) = PeerReply::decode(data) {
        if let Some(entity_reply::Outcome::Failure(failure)) = reply.outcome {
            let status = status_from_wire(failure);
            let back = status_from_wire(status_to_wire(&status));
            assert_eq!(back.code(), status.code());
            assert_eq!(back.message(), status.message());
        }
    }
});
