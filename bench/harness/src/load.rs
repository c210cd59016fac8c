//! The load generator: clients that each own a set of entities and send one command at a time, closed loop, or
//! paced to a fixed rate (open loop: latency is measured from the intended send time, so a stall is not hidden).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost_types::Any;
use regent::actors::CommandEnvelope;
use regent::engine::EngineHandle;
use regent::proto::chief_of_state::v1::ProcessCommandRequest;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Where commands go.
#[derive(Clone)]
pub enum Target {
    /// The node's `ProcessCommand` over gRPC (one client per channel, used round-robin by the load clients).
    Grpc(Arc<Vec<ChiefOfStateServiceClient<Channel>>>),
    /// The engine in process.
    Engine(EngineHandle),
}

impl Target {
    async fn send(&self, client: usize, entity_id: String, command: Any) -> Result<(), String> {
        let describe = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        match self {
            Target::Grpc(clients) => {
                let mut c = clients[client % clients.len()].clone();
                c.process_command(ProcessCommandRequest { entity_id, command: Some(command) })
                    .await
                    .map(drop)
                    .map_err(describe)
            }
            Target::Engine(handle) => {
                let envelope = CommandEnvelope {
                    command,
                    propagated_headers: Default::default(),
                    persisted_headers: vec![],
                    trace_context: Default::default(),
                };
                handle.process_command(entity_id, envelope).await.map(drop).map_err(describe)
            }
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// One load client: its entities (visited round-robin), and how many commands it may still send.
pub struct Client {
    pub index: usize,
    pub ids: Vec<String>,
    pub pos: usize,
    pub remaining: u64,
}

/// What a phase measured.
pub struct PhaseResult {
    pub histogram: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Runs every client until `duration` passes or its budget is spent; returns the clients (for the next phase)
/// and the merged latencies (µs). `rate`: total commands/s across clients, paced; `None` = closed loop.
pub async fn phase(
    target: &Target,
    clients: Vec<Client>,
    command: Any,
    duration: Duration,
    rate: Option<f64>,
) -> (Vec<Client>, PhaseResult) {
    let start = Instant::now();
    let deadline = start + duration;
    let n = clients.len().max(1);
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let target = target.clone();
        let command = command.clone();
        tasks.spawn(async move {
            let mut h = histogram();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            let interval = rate.map(|r| Duration::from_secs_f64(n as f64 / r));
            let mut intended = start + interval.map(|i| i.mul_f64(client.index as f64 / n as f64)).unwrap_or_default();
            while client.remaining > 0 && !client.ids.is_empty() {
                if interval.is_some() {
                    if intended >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(intended.into()).await;
                } else if Instant::now() >= deadline {
                    break;
                }
                let id = client.ids[client.pos % client.ids.len()].clone();
                client.pos += 1;
                client.remaining -= 1;
                let sent = if interval.is_some() { intended } else { Instant::now() };
                match target.send(client.index, id, command.clone()).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                h.saturating_record(sent.elapsed().as_micros() as u64);
                if let Some(step) = interval {
                    intended += step;
                }
            }
            (client, h, ok, errors, first_error)
        });
    }
    let mut result =
        PhaseResult { histogram: histogram(), ok: 0, errors: 0, first_error: None, elapsed: Duration::ZERO };
    let mut clients = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        let (client, h, ok, errors, first_error) = joined.expect("load client panicked");
        clients.push(client);
        result.histogram.add(&h).expect("same bounds");
        result.ok += ok;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    clients.sort_by_key(|c| c.index);
    (clients, result)
}

/// `clients` clients; client k owns the ids i ≡ k (mod clients) of `ids`, each with `per_entity` commands (so no
/// two in-flight commands share an entity unless `ids` has fewer entries than clients, as in the hot shape, where
/// every client gets the one id).
pub fn spread(ids: &[String], clients: usize, per_entity: u64) -> Vec<Client> {
    (0..clients)
        .map(|k| {
            let own: Vec<String> = if ids.len() < clients {
                vec![ids[k % ids.len()].clone()]
            } else {
                ids.iter().skip(k).step_by(clients).cloned().collect()
            };
            let remaining = if ids.len() < clients { u64::MAX } else { (own.len() as u64).saturating_mul(per_entity) };
            Client { index: k, ids: own, pos: 0, remaining }
        })
        .collect()
}
