//! The cluster suite's clients: [`ClusterClient`] sends commands to the nodes with the documented retry policy and
//! records every attempt in a shared [`History`]; [`Load`] runs a few of them in a loop over a set of entities.
//!
//! # Client retry policy (what the README recommends to clients of a cluster)
//!
//! A command that fails with
//! - `UNAVAILABLE` (no node at that address, a node shutting down, a shard between homes),
//! - `DEADLINE_EXCEEDED` (the client's own deadline, 4 s per attempt here, or the node's),
//! - `INTERNAL` "ask timed out" (the entity did not answer within `COS_COMMAND_HANDLER_TIMEOUT`), or
//! - a transport failure the client library reports without a status from the server (tonic: a status carrying
//!   an error source, often `UNKNOWN` "transport error" when a connection breaks mid-call), which is
//!   `UNAVAILABLE` in gRPC's terms,
//!
//! is retried after a short backoff (50 ms, doubling up to 500 ms), **on the next node**, for up to 10 s after the
//! first attempt. Any other status is the application's answer and is not retried. A retried command may have
//! been persisted by the attempt that failed (its outcome is unknown), so retries are at-least-once: here every
//! attempt carries a fresh op id, which the checker treats as an indeterminate op.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{GetStateRequest, ProcessCommandRequest};

use super::history::{Attempt, FinalState, History, Outcome, decode_list, op_any};

/// How a [`ClusterClient`] retries (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries stop once this much time has passed since the first attempt.
    pub budget: Duration,
    /// Each attempt's deadline, on the client side.
    pub attempt_timeout: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(4),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// For probes that poll until something works: short attempts, long budget.
    pub fn probe(budget: Duration) -> Self {
        RetryPolicy {
            budget,
            attempt_timeout: Duration::from_secs(1),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// Whether the policy retries `status`.
pub fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Internal if status.message().to_ascii_lowercase().contains("ask timed out") => true,
        // No status came from the server: the connection failed under the call.
        _ => std::error::Error::source(status).is_some(),
    }
}

/// One node's gRPC endpoint.
#[derive(Clone)]
pub struct Target {
    pub node: String,
    pub client: ChiefOfStateServiceClient<Channel>,
}

impl Target {
    /// A lazily connected client of `http://addr`.
    pub fn new(node: &str, addr: std::net::SocketAddr) -> Target {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URL")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Target { node: node.to_string(), client: ChiefOfStateServiceClient::new(channel) }
    }
}

/// Sends commands to a set of nodes, round robin, with retries; records every attempt. Clones share the targets,
/// the history and the op counter, except those made by [`ClusterClient::only`].
#[derive(Clone)]
pub struct ClusterClient {
    targets: Arc<RwLock<Vec<Target>>>,
    history: Arc<Mutex<History>>,
    ops: Arc<AtomicU64>,
    commands: Arc<AtomicU64>,
    next: Arc<AtomicUsize>,
}

impl ClusterClient {
    pub fn new(targets: Vec<Target>) -> ClusterClient {
        ClusterClient {
            targets: Arc::new(RwLock::new(targets)),
            history: Arc::default(),
            ops: Arc::default(),
            commands: Arc::default(),
            next: Arc::default(),
        }
    }

    /// A client of `nodes` only (among this client's targets), sharing the history and op ids.
    pub fn only(&self, nodes: &[&str]) -> ClusterClient {
        let targets: Vec<Target> =
            self.targets.read().unwrap().iter().filter(|t| nodes.contains(&t.node.as_str())).cloned().collect();
        assert_eq!(targets.len(), nodes.len(), "unknown node among {nodes:?}");
        ClusterClient { targets: Arc::new(RwLock::new(targets)), next: Arc::default(), ..self.clone() }
    }

    /// Sends to `target` too from now on.
    pub fn add_target(&self, target: Target) {
        self.targets.write().unwrap().push(target);
    }

    pub fn nodes(&self) -> Vec<String> {
        self.targets.read().unwrap().iter().map(|t| t.node.clone()).collect()
    }

    /// Everything recorded so far.
    pub fn history(&self) -> History {
        self.history.lock().unwrap().clone()
    }

    pub fn acked_count(&self) -> usize {
        self.history.lock().unwrap().acked().count()
    }

    fn next_target(&self) -> Target {
        let targets = self.targets.read().unwrap();
        assert!(!targets.is_empty(), "a cluster client without targets");
        targets[self.next.fetch_add(1, Ordering::Relaxed) % targets.len()].clone()
    }

    /// One logical command on `entity` (a fresh op per attempt), retried per `policy`; the last attempt's outcome.
    pub async fn command(&self, entity: &str, policy: RetryPolicy) -> Attempt {
        let command = self.commands.fetch_add(1, Ordering::Relaxed);
        let first = Instant::now();
        let mut backoff = policy.first_backoff;
        loop {
            let target = self.next_target();
            let op = format!("op-{}", self.ops.fetch_add(1, Ordering::Relaxed));
            let sent = Instant::now();
            let request = ProcessCommandRequest { entity_id: entity.to_string(), command: Some(op_any(&op)) };
            let reply = tokio::time::timeout(policy.attempt_timeout, target.client.clone().process_command(request))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("client deadline")));
            let outcome = match reply {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let state = decode_list(reply.state.as_ref()).unwrap_or_else(|e| vec![format!("<{e}>")]);
                    Outcome::Acked { revision: reply.meta.map(|m| m.revision_number).unwrap_or_default(), state }
                }
                Err(status) => Outcome::Failed {
                    code: status.code(),
                    message: status.message().to_string(),
                    retryable: retryable(&status),
                },
            };
            let attempt = Attempt {
                command,
                entity: entity.to_string(),
                op,
                node: target.node,
                sent,
                done: Instant::now(),
                outcome,
            };
            self.history.lock().unwrap().attempts.push(attempt.clone());
            match &attempt.outcome {
                Outcome::Failed { retryable: true, .. } if first.elapsed() + backoff < policy.budget => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
                _ => return attempt,
            }
        }
    }

    /// `GetState(entity)` from the targets in turn until one answers (`NOT_FOUND` = the empty state), or panics
    /// after `patience`.
    pub async fn state(&self, entity: &str, patience: Duration) -> FinalState {
        let deadline = Instant::now() + patience;
        loop {
            let target = self.next_target();
            let request = GetStateRequest { entity_id: entity.to_string() };
            let reply = tokio::time::timeout(Duration::from_secs(4), target.client.clone().get_state(request))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("client deadline")));
            let last_error = match reply {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let items = decode_list(reply.state.as_ref()).unwrap_or_else(|e| vec![format!("<{e}>")]);
                    return FinalState { revision: reply.meta.map(|m| m.revision_number).unwrap_or_default(), items };
                }
                Err(status) if status.code() == Code::NotFound => return FinalState::default(),
                Err(status) => status,
            };
            assert!(
                Instant::now() < deadline,
                "GetState({entity}) did not succeed within {patience:?}; last error via {}: {last_error:?}",
                target.node
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends one command to each entity (concurrently) until each is acked; panics after `patience`. Returns when
    /// each entity was acked.
    pub async fn touch_all(&self, entities: &[String], patience: Duration) -> Vec<(String, Instant)> {
        let policy = RetryPolicy::probe(patience);
        futures::future::join_all(entities.iter().map(|entity| async move {
            let attempt = self.command(entity, policy).await;
            assert!(
                attempt.acked().is_some(),
                "{entity} did not accept a command within {patience:?}: last attempt via {}: {:?}",
                attempt.node,
                attempt.outcome
            );
            (entity.clone(), attempt.done)
        }))
        .await
    }
}

/// What a [`Load`] does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent clients, each one command at a time.
    pub clients: usize,
    pub entities: Vec<String>,
    /// A pause between a client's commands, so that a 2-core machine keeps time for the nodes' heartbeats.
    pub think: Duration,
    pub policy: RetryPolicy,
}

impl LoadOptions {
    /// `clients` clients over entities `e-00` .. `e-{entities-1}`.
    pub fn new(clients: usize, entities: usize) -> LoadOptions {
        LoadOptions {
            clients,
            entities: entity_names("e", entities),
            think: Duration::from_millis(15),
            policy: RetryPolicy::default(),
        }
    }
}

/// `prefix-00`, `prefix-01`, ...
pub fn entity_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// Clients sending commands in a loop until [`Load::stop`].
pub struct Load {
    pub client: ClusterClient,
    pub options: LoadOptions,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(client: ClusterClient, options: LoadOptions) -> Load {
        assert!(!options.entities.is_empty() && options.clients > 0);
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..options.clients)
            .map(|i| {
                let (client, options, stopped) = (client.clone(), options.clone(), stopped.clone());
                tokio::spawn(async move {
                    // A small xorshift per client: which entity next.
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64 + 1) * 0x2545_F491_4F6C_DD1D);
                    while !*stopped.borrow() {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let entity = &options.entities[(seed % options.entities.len() as u64) as usize];
                        client.command(entity, options.policy).await;
                        tokio::time::sleep(options.think).await;
                    }
                })
            })
            .collect();
        Load { client, options, stop, tasks }
    }

    /// Waits until at least `count` more commands were acked than when called (the load is flowing), or panics
    /// after `patience`.
    pub async fn wait_acks(&self, count: usize, patience: Duration) {
        let target = self.client.acked_count() + count;
        let deadline = Instant::now() + patience;
        while self.client.acked_count() < target {
            assert!(
                Instant::now() < deadline,
                "the load did not get {count} more acks within {patience:?}:\n{}",
                self.client.history().summary()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the clients (each finishes its current command, retries included) and returns the history.
    pub async fn stop(self) -> History {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        self.client.history()
    }

    /// The entities of this load whose shard is in `shards`.
    pub fn entities_in(&self, shards: &BTreeSet<u32>, num_shards: u32) -> Vec<String> {
        let shard_of = regent::actors::shard_of;
        self.options.entities.iter().filter(|e| shards.contains(&shard_of(e, num_shards))).cloned().collect()
    }
}
