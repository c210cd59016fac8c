//! The engine lane's own in-process write handler: every command yields exactly one event whose payload is
//! `payload` bytes (a counter, then padding); the state is the counter and the last event's first bytes, so each
//! new state depends on the prior one.

use prost_types::Any;
use regent::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};
use regent::write_side::WriteSide;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub const CREATE: &str = "type.googleapis.com/regent.bench.Create";
pub const UPDATE: &str = "type.googleapis.com/regent.bench.Update";
const EVENT: &str = "type.googleapis.com/regent.bench.Event";
const STATE: &str = "type.googleapis.com/regent.bench.State";

/// Emits one event of `payload` bytes (at least 8) per command.
pub struct PaddedHandler {
    /// The event's bytes after the counter: pseudo-random, so that PostgreSQL cannot compress them away.
    padding: Vec<u8>,
}

impl PaddedHandler {
    pub fn new(payload: usize) -> PaddedHandler {
        PaddedHandler { padding: noise(payload.saturating_sub(8)) }
    }
}

/// `n` pseudo-random bytes (xorshift64*): incompressible filler, the same on every run.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// `n` pseudo-random printable characters (6 bits of entropy each), for string fields.
pub fn noise_text(n: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    noise(n).into_iter().map(|b| ALPHABET[(b & 63) as usize] as char).collect()
}

fn counter(bytes: &[u8]) -> u64 {
    bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0)
}

#[async_trait::async_trait]
impl WriteSide for PaddedHandler {
    async fn handle_command(
        &self,
        request: HandleCommandRequest,
        _: MetadataMap,
    ) -> Result<HandleCommandResponse, Status> {
        let command = request.command.unwrap_or_default();
        // A new entity has revision 0 (its prior state may still be an empty `Any`).
        let revision = request.prior_event_meta.as_ref().map(|m| m.revision_number).unwrap_or(0);
        let prior = (revision > 0).then(|| request.prior_state.as_ref().map(|s| counter(&s.value)).unwrap_or(0));
        match (command.type_url.as_str(), prior) {
            (CREATE, Some(_)) => return Err(Status::already_exists("entity already created")),
            (UPDATE, None) => return Err(Status::not_found("entity does not exist")),
            (CREATE | UPDATE, _) => {}
            (other, _) => return Err(Status::invalid_argument(format!("unknown command {other}"))),
        }
        let mut value = (prior.unwrap_or(0) + 1).to_le_bytes().to_vec();
        value.extend_from_slice(&self.padding);
        #[allow(deprecated)]
        Ok(HandleCommandResponse { event: None, events: vec![Any { type_url: EVENT.into(), value }] })
    }

    async fn handle_event(&self, request: HandleEventRequest) -> Result<HandleEventResponse, Status> {
        let event = request.event.unwrap_or_default();
        let mut value = event.value.get(..16).unwrap_or(&event.value).to_vec();
        value.resize(16, 0);
        Ok(HandleEventResponse { resulting_state: Some(Any { type_url: STATE.into(), value }) })
    }
}
