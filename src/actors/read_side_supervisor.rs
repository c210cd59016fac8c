//! `ReadSideSupervisor`: starts one [`ReadSideProcessor`] per (enabled read side, shard), restarts a processor
//! that fails, and routes the operator's commands (pause, resume, restart, skip, report) to them. Unsupervised
//! root of the node's read-side tree (the node's composition root owns it).
//!
//! ```text
//! ReadSideSupervisor
//!  └── ReadSideProcessor (read side × shard)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{info, warn};

use super::read_side_processor::{
    ProcessorArgs, ProcessorMessage, ProcessorReport, ReadHandler, ReadSideProcessor, ReadTransport,
};
use crate::config::read_sides::{ReadSideProtocol, ReadSideSettings};
use crate::config::{BreakerSettings, Keepalive};
use crate::grpc::breaker::CircuitBreaker;
use crate::grpc::h2_channel::Target as HandlerTarget;
use crate::grpc::http_handler::HttpHandler;
use crate::persistence::{self, JournalSignals, Store};
use crate::proto::chief_of_state::v1::read_side_handler_service_client::ReadSideHandlerServiceClient;

/// How long to wait before restarting a processor that failed.
const RESTART_DELAY: Duration = Duration::from_secs(1);

pub struct ReadSideSupervisor;

/// An operator's command for one read side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSideOp {
    Pause,
    Resume,
    Restart,
    Skip,
}

/// Why an operator's command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ReadSideError {
    #[error("unknown read side {0:?}")]
    UnknownReadSide(String),
    #[error("shard {shard} is out of range: this cluster has shards 0 to {}", .num_shards - 1)]
    ShardOutOfRange { shard: u64, num_shards: u32 },
    #[error("the processor of read side {0:?} in shard {1} is restarting; try again")]
    Restarting(String, u32),
    #[error("shard {0} is hosted on another node of the cluster; send this request to that node (see /cluster)")]
    NotHostedHere(u32),
    #[error(transparent)]
    Store(#[from] persistence::Error),
}

#[derive(ractor_cluster::RactorMessage)]
pub enum SupervisorMessage {
    /// Apply `op` to `read_side_id` in `shard` (all shards when `None`).
    Command { read_side_id: String, shard: Option<u64>, op: ReadSideOp, reply: RpcReplyPort<Result<(), ReadSideError>> },
    /// Report every processor of `read_side_id` (every read side when `None`).
    Report { read_side_id: Option<String>, reply: RpcReplyPort<Result<Vec<(String, ProcessorReport)>, ReadSideError>> },
    /// (Re)start the processor of a read side in a shard.
    Start { read_side_id: String, shard: u32 },
    /// In a cluster: the shard is hosted here now; run its processors.
    HostShard(u32),
    /// In a cluster: the shard moves away; stop its processors (each finishes its delivery), then reply.
    ReleaseShard(u32, RpcReplyPort<()>),
}

pub struct SupervisorArgs {
    pub read_sides: Vec<ReadSideSettings>,
    pub num_shards: u32,
    pub store: Arc<dyn Store>,
    pub journal_signals: Arc<JournalSignals>,
    /// In a cluster, processors run only for the shards hosted on this node ([`SupervisorMessage::HostShard`]);
    /// alone, for every shard.
    hosted_only: bool,
    /// HTTP/2 keepalive of the connections to the read handlers (`COS_GRPC_KEEPALIVE_*`).
    keepalive: Option<Keepalive>,
    /// Each read side's circuit breaker (`COS_READ_SIDE_BREAKER_*`).
    breaker: Option<BreakerSettings>,
}

impl SupervisorArgs {
    pub fn new(
        read_sides: Vec<ReadSideSettings>,
        num_shards: u32,
        store: Arc<dyn Store>,
        journal_signals: Arc<JournalSignals>,
        hosted_only: bool,
    ) -> Self {
        Self { read_sides, num_shards, store, journal_signals, hosted_only, keepalive: None, breaker: None }
    }

    /// Puts each read side's calls behind a circuit breaker of its own.
    pub fn with_breaker(mut self, breaker: Option<BreakerSettings>) -> Self {
        self.breaker = breaker;
        self
    }

    /// PINGs the read handlers' connections as `keepalive` says.
    pub fn with_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }
}

pub struct SupervisorState {
    /// `None`: every shard; `Some`: the shards hosted here.
    hosted: Option<std::collections::HashSet<u32>>,
    read_sides: HashMap<String, (Arc<ReadSideSettings>, ReadHandler)>,
    num_shards: u32,
    store: Arc<dyn Store>,
    journal_signals: Arc<JournalSignals>,
    processors: HashMap<(String, u32), ActorRef<ProcessorMessage>>,
    by_actor: HashMap<ActorId, (String, u32)>,
}

impl Actor for ReadSideSupervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMessage>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut read_sides = HashMap::new();
        for settings in args.read_sides.into_iter().filter(|r| r.enabled) {
            let transport = transport_of(&settings, args.keepalive)?;
            let breaker = args
                .breaker
                .map(|breaker| Arc::new(CircuitBreaker::new(format!("read side {}", settings.id), breaker)));
            let handler = ReadHandler { transport, breaker };
            // autoStart: true resumes a read side paused before; false starts it paused.
            for shard in 0..args.num_shards {
                args.store.save_paused(&settings.id, shard, !settings.auto_start).await?;
                let _ = myself.send_message(SupervisorMessage::Start { read_side_id: settings.id.clone(), shard });
            }
            info!(read_side = %settings.id, endpoint = %settings.endpoint(), policy = %settings.failure_policy,
                auto_start = settings.auto_start, "read side configured");
            read_sides.insert(settings.id.clone(), (Arc::new(settings), handler));
        }
        Ok(SupervisorState {
            hosted: args.hosted_only.then(std::collections::HashSet::new),
            read_sides,
            num_shards: args.num_shards,
            store: args.store,
            journal_signals: args.journal_signals,
            processors: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMessage>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Start { read_side_id, shard } => state.start(&myself, read_side_id, shard).await,
            SupervisorMessage::HostShard(shard) => {
                if let Some(hosted) = &mut state.hosted {
                    hosted.insert(shard);
                }
                let ids: Vec<String> = state.read_sides.keys().cloned().collect();
                for read_side_id in ids {
                    state.start(&myself, read_side_id, shard).await;
                }
            }
            SupervisorMessage::ReleaseShard(shard, reply) => {
                if let Some(hosted) = &mut state.hosted {
                    hosted.remove(&shard);
                }
                let stopping: Vec<ActorRef<ProcessorMessage>> =
                    state.processors.iter().filter(|((_, s), _)| *s == shard).map(|(_, p)| p.clone()).collect();
                tokio::spawn(async move {
                    for processor in stopping {
                        let _ = processor
                            .stop_and_wait(Some("shard handed off".into()), Some(Duration::from_secs(10)))
                            .await;
                    }
                    let _ = reply.send(());
                });
            }
            SupervisorMessage::Command { read_side_id, shard, op, reply } => {
                // Each processor answers on its own; the supervisor does not wait for them.
                match state.targets(&read_side_id, shard) {
                    Ok(targets) => {
                        tokio::spawn(async move {
                            let mut outcome = Ok(());
                            for (shard, processor) in targets {
                                let Some(processor) = processor else {
                                    outcome = Err(ReadSideError::Restarting(read_side_id.clone(), shard));
                                    continue;
                                };
                                let sent = processor
                                    .call(
                                        |reply| match op {
                                            ReadSideOp::Pause => ProcessorMessage::Pause(reply),
                                            ReadSideOp::Resume => ProcessorMessage::Resume(reply),
                                            ReadSideOp::Restart => ProcessorMessage::Restart(reply),
                                            ReadSideOp::Skip => ProcessorMessage::Skip(reply),
                                        },
                                        None,
                                    )
                                    .await;
                                match sent {
                                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => {}
                                    Ok(ractor::rpc::CallResult::Success(Err(e))) => outcome = Err(e.into()),
                                    _ => outcome = Err(ReadSideError::Restarting(read_side_id.clone(), shard)),
                                }
                            }
                            let _ = reply.send(outcome);
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            SupervisorMessage::Report { read_side_id, reply } => {
                let ids: Vec<String> = match read_side_id {
                    Some(id) if state.read_sides.contains_key(&id) => vec![id],
                    Some(id) => {
                        let _ = reply.send(Err(ReadSideError::UnknownReadSide(id)));
                        return Ok(());
                    }
                    None => {
                        let mut ids: Vec<String> = state.read_sides.keys().cloned().collect();
                        ids.sort();
                        ids
                    }
                };
                let mut targets = Vec::new();
                for id in ids {
                    // In a cluster, only the shards hosted here: the others are reported by their nodes.
                    let hosted = |shard: &u32| state.hosted.as_ref().is_none_or(|hosted| hosted.contains(shard));
                    for shard in (0..state.num_shards).filter(hosted) {
                        targets.push((id.clone(), shard, state.processors.get(&(id.clone(), shard)).cloned()));
                    }
                }
                let store = state.store.clone();
                tokio::spawn(async move {
                    let mut reports = Vec::new();
                    for (id, shard, processor) in targets {
                        let report = match processor {
                            Some(p) => match p.call(ProcessorMessage::Report, Some(Duration::from_secs(5))).await {
                                Ok(ractor::rpc::CallResult::Success(report)) => Some(report),
                                _ => None,
                            },
                            None => None,
                        };
                        let report = match report {
                            Some(report) => report,
                            // Restarting: report what the store holds.
                            None => match store.load_offset(&id, shard).await {
                                Ok(offset) => ProcessorReport {
                                    shard,
                                    cursor: offset.cursor,
                                    status: super::read_side_processor::ProcessorStatus::Stopped {
                                        error: "restarting".into(),
                                    },
                                    delivered: 0,
                                    failures: 0,
                                    pending_since: None,
                                },
                                Err(e) => {
                                    let _ = reply.send(Err(e.into()));
                                    return;
                                }
                            },
                        };
                        reports.push((id, report));
                    }
                    let _ = reply.send(Ok(reports));
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMessage>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match &event {
            SupervisionEvent::ActorTerminated(cell, ..) => (cell, false),
            SupervisionEvent::ActorFailed(cell, error) => {
                warn!(error = %error, "read-side processor failed; restarting it");
                (cell, true)
            }
            _ => return Ok(()),
        };
        if let Some(key) = state.by_actor.remove(&cell.get_id()) {
            state.processors.remove(&key);
            if failed {
                let (read_side_id, shard) = key;
                ractor::time::send_after(RESTART_DELAY, myself.get_cell(), move || SupervisorMessage::Start {
                    read_side_id: read_side_id.clone(),
                    shard,
                });
            }
        }
        Ok(())
    }
}

/// How `settings`' handler is called: a lazily connected gRPC channel (with the HTTP/2 keepalive), or CoS's HTTP/JSON.
fn transport_of(settings: &ReadSideSettings, keepalive: Option<Keepalive>) -> Result<ReadTransport, crate::tls::Error> {
    let url = settings.endpoint();
    let ca_key = "read_side.tls_ca_file";
    if settings.protocol == ReadSideProtocol::Http {
        let call_timeout = Duration::from_millis(settings.timeout_ms);
        let ca = (ca_key, settings.tls_ca_file.as_str());
        let target = HandlerTarget::for_handler(&url, ca, "read_side.host", b"http/1.1", call_timeout)?;
        return Ok(ReadTransport::Http(Arc::new(HttpHandler::new(target))));
    }
    let mut endpoint = crate::tls::handler_endpoint(&url, ca_key, &settings.tls_ca_file)?;
    if let Some(keepalive) = keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(keepalive.interval)
            .keep_alive_timeout(keepalive.timeout)
            .keep_alive_while_idle(keepalive.while_idle);
    }
    Ok(ReadTransport::Grpc(ReadSideHandlerServiceClient::new(endpoint.connect_lazy())))
}

type Target = (u32, Option<ActorRef<ProcessorMessage>>);

impl SupervisorState {
    async fn start(&mut self, myself: &ActorRef<SupervisorMessage>, read_side_id: String, shard: u32) {
        let key = (read_side_id, shard);
        if self.processors.contains_key(&key) || self.hosted.as_ref().is_some_and(|h| !h.contains(&shard)) {
            return;
        }
        let Some((settings, handler)) = self.read_sides.get(&key.0) else { return };
        let args = ProcessorArgs {
            settings: settings.clone(),
            shard,
            store: self.store.clone(),
            handler: handler.clone(),
            journal_signal: self.journal_signals.subscribe(shard),
        };
        match Actor::spawn_linked(None, ReadSideProcessor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), key.clone());
                self.processors.insert(key, actor);
            }
            Err(e) => {
                warn!(read_side = %key.0, shard, error = %e, "cannot start a read-side processor; retrying");
                let (read_side_id, shard) = key;
                ractor::time::send_after(RESTART_DELAY, myself.get_cell(), move || SupervisorMessage::Start {
                    read_side_id: read_side_id.clone(),
                    shard,
                });
            }
        }
    }

    fn targets(&self, read_side_id: &str, shard: Option<u64>) -> Result<Vec<Target>, ReadSideError> {
        if !self.read_sides.contains_key(read_side_id) {
            return Err(ReadSideError::UnknownReadSide(read_side_id.to_string()));
        }
        let shards: Vec<u32> = match shard {
            Some(s) if s >= u64::from(self.num_shards) => {
                return Err(ReadSideError::ShardOutOfRange { shard: s, num_shards: self.num_shards });
            }
            Some(s) if self.hosted.as_ref().is_some_and(|h| !h.contains(&(s as u32))) => {
                return Err(ReadSideError::NotHostedHere(s as u32));
            }
            Some(s) => vec![s as u32],
            // In a cluster, an operation on every shard applies to the shards hosted here.
            None => (0..self.num_shards).filter(|s| self.hosted.as_ref().is_none_or(|h| h.contains(s))).collect(),
        };
        Ok(shards.into_iter().map(|s| (s, self.processors.get(&(read_side_id.to_string(), s)).cloned())).collect())
    }
}
