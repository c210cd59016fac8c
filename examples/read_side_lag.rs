//! Measures read-side delivery: the lag from commit to `HandleReadSide` (p50/p99) under a steady trickle of
//! commands, and how many events/s one read side sustains when it catches up on a backlog.
//!
//! ```sh
//! # embedded store
//! cargo run --release --example read_side_lag -- --commands 2000
//! # PostgreSQL (e.g. the server scripts/pg.sh starts)
//! REGENT_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55433/postgres \
//!   cargo run --release --example read_side_lag -- --commands 2000
//! ```
//! Everything runs in this process on loopback: the node, the bundled bank handler and a read handler that
//! answers `successful = true` at once.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use regent::config::read_sides::{FailurePolicy, ReadSideProtocol, ReadSideSettings};
use regent::config::{Backend, Config};
use regent::example::bank::{self, pack};
use regent::proto::bank::{Deposit, OpenAccount};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::read_side_handler_service_server::{
    ReadSideHandlerService, ReadSideHandlerServiceServer,
};
use regent::proto::chief_of_state::v1::read_side_manager_service_client::ReadSideManagerServiceClient;
use regent::proto::chief_of_state::v1::{
    HandleReadSideRequest, HandleReadSideResponse, ProcessCommandRequest, ResumeReadSideRequest,
};
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
struct Recorder {
    lags: Arc<Mutex<Vec<Duration>>>,
}

#[tonic::async_trait]
impl ReadSideHandlerService for Recorder {
    async fn handle_read_side(
        &self,
        request: Request<HandleReadSideRequest>,
    ) -> Result<Response<HandleReadSideResponse>, Status> {
        let date = request.get_ref().meta.as_ref().and_then(|m| m.revision_date).unwrap_or_default();
        let written = SystemTime::try_from(date).unwrap_or(SystemTime::UNIX_EPOCH);
        let lag = SystemTime::now().duration_since(written).unwrap_or_default();
        self.lags.lock().unwrap().push(lag);
        Ok(Response::new(HandleReadSideResponse { successful: true }))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut commands = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--commands" => commands = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let read_port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ReadSideHandlerServiceServer::new(recorder.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let (handler, serve) = bank::bind("127.0.0.1:0", std::future::pending()).await?;
    tokio::spawn(serve);

    let data = tempfile::tempdir()?;
    let mut config = Config::default();
    config.server.address = "127.0.0.1".into();
    config.server.port = 0;
    config.admin.port = 0;
    config.write_side.host = "127.0.0.1".into();
    config.write_side.port = handler.port();
    config.read_side.enabled = true;
    config.store.data_dir = data.path().to_path_buf();
    if let Ok(url) = std::env::var("REGENT_BENCH_DATABASE_URL") {
        let pg = tokio_postgres::Config::from_str(&url)?;
        config.store.backend = Backend::Postgres;
        if let Some(tokio_postgres::config::Host::Tcp(host)) = pg.get_hosts().first() {
            config.store.postgres.host = host.clone();
        }
        config.store.postgres.port = pg.get_ports().first().copied().unwrap_or(5432);
        config.store.postgres.user = pg.get_user().unwrap_or("postgres").into();
        config.store.postgres.password = String::from_utf8_lossy(pg.get_password().unwrap_or_default()).into();
        config.store.postgres.database = pg.get_dbname().unwrap_or("postgres").into();
        config.store.postgres.schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    }
    let mut read_side = ReadSideSettings::with_defaults("lag");
    read_side.protocol = ReadSideProtocol::Grpc;
    read_side.host = "127.0.0.1".into();
    read_side.port = read_port;
    read_side.failure_policy = FailurePolicy::Stop;
    let backend = config.store.backend;
    let node = regent::Node::start_with(config.clone(), vec![read_side.clone()]).await?;
    let url = format!("http://{}", node.local_addr());
    let mut client = ChiefOfStateServiceClient::connect(url.clone()).await?;

    // 1. Lag under a trickle: one client, one command at a time, 100 entities.
    for i in 0..100 {
        let command = pack(&OpenAccount { owner: "lag".into(), initial_balance: 0 });
        client.process_command(ProcessCommandRequest { entity_id: format!("a{i}"), command: Some(command) }).await?;
    }
    for i in 0..commands {
        let command = pack(&Deposit { amount: 1 });
        client
            .process_command(ProcessCommandRequest { entity_id: format!("a{}", i % 100), command: Some(command) })
            .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = commands + 100;
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorder.lags.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags = std::mem::take(&mut *recorder.lags.lock().unwrap());
    lags.sort();
    println!(
        "{backend:?}: delivery lag over {} events: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );
    node.shutdown().await?;

    // 2. Catch-up throughput: a backlog written while the read side is paused, then resumed.
    read_side.auto_start = false;
    let node = regent::Node::start_with(config, vec![read_side]).await?;
    let url = format!("http://{}", node.local_addr());
    let client = ChiefOfStateServiceClient::connect(url.clone()).await?;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let mut client = client.clone();
        let per = commands / 16;
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let command = pack(&Deposit { amount: 1 });
                client
                    .process_command(ProcessCommandRequest { entity_id: format!("a{worker}"), command: Some(command) })
                    .await?;
            }
            Ok::<_, Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let backlog = (commands / 16) * 16;
    let start = Instant::now();
    ReadSideManagerServiceClient::connect(url)
        .await?
        .resume_read_side(ResumeReadSideRequest { read_side_id: "lag".into() })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorder.lags.lock().unwrap().len() < backlog && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = recorder.lags.lock().unwrap().len();
    println!(
        "{backend:?}: one read side caught up on {delivered} events in {:?}: {:.0} events/s",
        start.elapsed(),
        delivered as f64 / start.elapsed().as_secs_f64()
    );
    node.shutdown().await?;
    Ok(())
}
