//! A simple throughput loop against a running node with the bundled bank handler
//! (`regent start --example-handler`): opens `--entities` accounts, then sends `--commands` deposits spread over
//! them from `--concurrency` clients, and prints commands/s and latency percentiles.
//!
//! ```sh
//! cargo run --release --example simple_loop -- --node http://127.0.0.1:9000 --commands 5000 --concurrency 16
//! ```
//! The benchmark harness of the performance issue supersedes this; it is the figure quoted in the first note.

use std::time::{Duration, Instant};

use regent::example::bank::pack;
use regent::proto::bank::{Deposit, OpenAccount};
use regent::proto::chief_of_state::v1::ProcessCommandRequest;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;

struct Args {
    node: String,
    entities: usize,
    commands: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args { node: "http://127.0.0.1:9000".into(), entities: 100, commands: 2000, concurrency: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--node" => args.node = value,
            "--entities" => args.entities = value.parse().expect("--entities N"),
            "--commands" => args.commands = value.parse().expect("--commands N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    let client = ChiefOfStateServiceClient::connect(args.node.clone()).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let account = |i: usize| format!("loop-{run}-{}", i % args.entities);
    for i in 0..args.entities {
        let command = pack(&OpenAccount { owner: "loop".into(), initial_balance: 0 });
        client.clone().process_command(ProcessCommandRequest { entity_id: account(i), command: Some(command) }).await?;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let mut client = client.clone();
        // Each worker owns the entities i ≡ worker (mod concurrency): no two in-flight commands share an entity.
        let ids: Vec<String> = (0..args.commands).filter(|i| i % args.concurrency == worker).map(account).collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(ids.len());
            for id in ids {
                let t = Instant::now();
                let command = pack(&Deposit { amount: 1 });
                client.process_command(ProcessCommandRequest { entity_id: id, command: Some(command) }).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} commands, concurrency {}, {} entities: {:.0} commands/s, p50 {:?}, p99 {:?}",
        latencies.len(),
        args.concurrency,
        args.entities,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
