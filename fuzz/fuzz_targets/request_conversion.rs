//! Request conversion: the bytes of a `ProcessCommand` or `GetState` request body, and the metadata sent with it,
//! decoded as tonic-prost does and turned into what the entity receives (`regent::grpc::service::command_of`).
//!
//! Input: first byte even = `ProcessCommand`, odd = `GetState`; then metadata lines `key: value` up to a blank
//! line (`\n\n`); the rest is the protobuf body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use regent::config::WriteSideConfig;
use regent::grpc::service::{command_of, get_state_of};
use regent::proto::chief_of_state::v1::{GetStateRequest, ProcessCommandRequest, header};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

fn metadata(text: &[u8]) -> MetadataMap {
    let mut map = MetadataMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (key, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if key.ends_with(b"-bin") {
            if let Ok(key) = MetadataKey::from_bytes(key) {
                map.append_bin(key, MetadataValue::from_bytes(value));
            }
        } else if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key), MetadataValue::try_from(value)) {
            map.append(key, value);
        }
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (headers, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    if selector % 2 == 1 {
        if let Ok(request) = GetStateRequest::decode(body) {
            if let Ok(id) = get_state_of(request) {
                assert!(!id.is_empty() && !id.contains('\0'));
            }
        }
        return;
    }
    let Ok(request) = ProcessCommandRequest::decode(body) else { return };
    // What decodes re-encodes to something that decodes to the same request.
    assert_eq!(ProcessCommandRequest::decode(request.encode_to_vec().as_slice()).as_ref(), Ok(&request));
    let write_side = WriteSideConfig {
        propagated_headers: vec!["x-user".into(), "x-trace-bin".into(), "X-Upper".into(), "bad key".into()],
        persisted_headers: vec!["x-user".into(), "x-trace-bin".into(), "".into()],
        ..WriteSideConfig::default()
    };
    let metadata = metadata(headers);
    let sent = request.command.clone().unwrap_or_default();
    if let Ok((id, envelope)) = command_of(request, &metadata, &write_side) {
        assert!(!id.is_empty() && !id.contains('\0'));
        assert_eq!(envelope.command, sent, "the command reaches the handler as sent");
        for h in &envelope.persisted_headers {
            assert!(h.key == "x-user" || h.key == "x-trace-bin", "unconfigured header persisted: {}", h.key);
            assert_eq!(h.key.ends_with("-bin"), matches!(h.value, Some(header::Value::BytesValue(_))));
        }
        assert!(envelope.propagated_headers.len() <= metadata.len());
    }
});
