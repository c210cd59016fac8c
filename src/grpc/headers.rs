//! The metadata rules of spec §3.2 step 2: pick the configured keys from a request's metadata. Keys ending in
//! `-bin` are binary (`bytes_value`), others text (`string_value`); every value of a repeated key is kept, in order.

use tonic::metadata::{AsciiMetadataKey, BinaryMetadataKey, MetadataMap};

use crate::proto::chief_of_state::v1::{Header, header};

/// The `Header`s for the configured `keys` found in `metadata`.
pub fn persisted(metadata: &MetadataMap, keys: &[String]) -> Vec<Header> {
    let mut headers = Vec::new();
    for key in keys {
        let key = key.to_ascii_lowercase();
        if key.ends_with("-bin") {
            let Ok(k) = BinaryMetadataKey::from_bytes(key.as_bytes()) else { continue };
            for value in metadata.get_all_bin(k) {
                if let Ok(bytes) = value.to_bytes() {
                    headers.push(Header { key: key.clone(), value: Some(header::Value::BytesValue(bytes.to_vec())) });
                }
            }
        } else {
            let Ok(k) = AsciiMetadataKey::from_bytes(key.as_bytes()) else { continue };
            for value in metadata.get_all(k) {
                let text = String::from_utf8_lossy(value.as_encoded_bytes()).into_owned();
                headers.push(Header { key: key.clone(), value: Some(header::Value::StringValue(text)) });
            }
        }
    }
    headers
}

/// The subset of `metadata` to forward to the write handler.
pub fn propagated(metadata: &MetadataMap, keys: &[String]) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in keys {
        let key = key.to_ascii_lowercase();
        if key.ends_with("-bin") {
            let Ok(k) = BinaryMetadataKey::from_bytes(key.as_bytes()) else { continue };
            for value in metadata.get_all_bin(&k) {
                out.append_bin(k.clone(), value.clone());
            }
        } else {
            let Ok(k) = AsciiMetadataKey::from_bytes(key.as_bytes()) else { continue };
            for value in metadata.get_all(&k) {
                out.append(k.clone(), value.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn sample() -> MetadataMap {
        let mut md = MetadataMap::new();
        md.append("x-user", "alice".parse().unwrap());
        md.append("x-user", "bob".parse().unwrap());
        md.append_bin("x-token-bin", MetadataValue::from_bytes(b"\x00\x01"));
        md.append("x-other", "no".parse().unwrap());
        md
    }

    #[test]
    fn persisted_keeps_every_value_in_order_and_binary_as_bytes() {
        let keys = vec!["X-User".to_string(), "x-token-bin".to_string(), "absent".to_string()];
        let h = persisted(&sample(), &keys);
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].value, Some(header::Value::StringValue("alice".into())));
        assert_eq!(h[1].value, Some(header::Value::StringValue("bob".into())));
        assert_eq!(
            (h[2].key.as_str(), h[2].value.clone()),
            ("x-token-bin", Some(header::Value::BytesValue(vec![0, 1])))
        );
    }

    #[test]
    fn propagated_copies_only_configured_keys() {
        let out = propagated(&sample(), &["x-user".to_string(), "x-token-bin".to_string()]);
        assert_eq!(out.get_all("x-user").iter().count(), 2);
        assert!(out.get("x-other").is_none());
        assert_eq!(out.get_bin("x-token-bin").unwrap().to_bytes().unwrap().as_ref(), b"\x00\x01");
    }
}
