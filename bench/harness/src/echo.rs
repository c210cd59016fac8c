//! The tonic echo ceiling: `grpc.health.v1.Health/Check` served by a separate process (this binary's
//! `echo-server` subcommand), called in a closed loop at a given concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::load::histogram;

/// Serves the health service on `127.0.0.1:port` until killed.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve(format!("127.0.0.1:{port}").parse()?)
        .await?;
    Ok(())
}

pub async fn channels(endpoint: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..count.max(1) {
        out.push(Endpoint::from_shared(endpoint.to_string())?.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoResult {
    pub clients: usize,
    pub calls_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub server_cpu_s: f64,
    pub harness_cpu_s: f64,
}

/// Calls Check in a loop from `clients` tasks over `channels` for `duration` (after `warmup`).
pub async fn run(
    channels: &[Channel],
    clients: usize,
    warmup: Duration,
    duration: Duration,
    server_pid: u32,
    ticks: f64,
) -> EchoResult {
    let channels = Arc::new(channels.to_vec());
    let run_for = |d: Duration| {
        let channels = channels.clone();
        async move {
            let deadline = Instant::now() + d;
            let mut tasks = JoinSet::new();
            for k in 0..clients {
                let mut client = HealthClient::new(channels[k % channels.len()].clone());
                tasks.spawn(async move {
                    let mut h = histogram();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let _ = client.check(HealthCheckRequest { service: String::new() }).await;
                        h.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    h
                });
            }
            let mut h = histogram();
            while let Some(Ok(part)) = tasks.join_next().await {
                h.add(&part).expect("same bounds");
            }
            h
        }
    };
    run_for(warmup).await;
    let me = std::process::id();
    let (s0, h0) = (crate::procs::cpu_secs(server_pid, ticks), crate::procs::cpu_secs(me, ticks));
    let start = Instant::now();
    let h = run_for(duration).await;
    let elapsed = start.elapsed().as_secs_f64();
    EchoResult {
        clients,
        calls_per_sec: h.len() as f64 / elapsed,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        server_cpu_s: crate::procs::cpu_secs(server_pid, ticks) - s0,
        harness_cpu_s: crate::procs::cpu_secs(me, ticks) - h0,
    }
}
