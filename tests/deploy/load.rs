//! A steady client load on a cluster, and the check that no acknowledged command was lost.
//!
//! One worker per entity sends the bank example's commands one after the other (open, then deposits whose amounts
//! are unique in the run, so that each acknowledged command can be found in the journal), with a short pause
//! between commands, through the nodes' published ports. It follows the README's client retry policy: UNAVAILABLE,
//! DEADLINE_EXCEEDED, INTERNAL "Ask timed out" and failures of the client's own transport (see [`retryable`]) are
//! retried with a backoff from 100 ms doubling to 500 ms, for up to 10 s, each retry on the next node; every failed
//! attempt is counted by its code, and so is every command given up. The load runs on its own Tokio runtime, so that the test's blocking `docker` calls never slow it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use regent::example::bank::{pack, unpack};
use regent::proto::bank::{AccountOpened, Deposit, Deposited, OpenAccount};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{EventWrapper, ProcessCommandRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long one command is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The client's own deadline for one attempt: longer than the node's `COS_COMMAND_HANDLER_TIMEOUT` (5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(7);

type Client = ChiefOfStateServiceClient<Channel>;

/// What a worker sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Open,
    /// A deposit of this amount, unique in the run.
    Deposit(i64),
}

/// One acknowledged command.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The worker's (and entity's) index.
    pub entity: usize,
    /// The revision the reply reported.
    pub revision: i64,
    pub command: Sent,
    /// When the command was first sent, and when it was acknowledged.
    pub sent: Instant,
    pub acked: Instant,
}

/// Counters, by gRPC code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL (Ask timed out)`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands acknowledged.
    pub acked: u64,
    /// Attempts that failed (each retry that failed counts), by code.
    pub failed_attempts: BTreeMap<String, u64>,
    /// Commands given up (not retryable, or still failing after [`RETRY_FOR`]), by the last code.
    pub given_up: BTreeMap<String, u64>,
    /// The first message seen with each code.
    pub messages: BTreeMap<String, String>,
}

impl Stats {
    /// What happened since `earlier`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let minus = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(code, n)| (code.clone(), n - then.get(code).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        Stats {
            acked: self.acked - earlier.acked,
            failed_attempts: minus(&self.failed_attempts, &earlier.failed_attempts),
            given_up: minus(&self.given_up, &earlier.given_up),
            messages: self.messages.clone(),
        }
    }

    pub fn given_up_total(&self) -> u64 {
        self.given_up.values().sum()
    }

    pub fn failed_attempts_total(&self) -> u64 {
        self.failed_attempts.values().sum()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes = |counts: &BTreeMap<String, u64>| {
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.iter().map(|(code, n)| format!("{n} {code}")).collect::<Vec<_>>().join(", ")
            }
        };
        write!(
            f,
            "{} acknowledged; failed attempts (retried): {}; commands given up: {}",
            self.acked,
            codes(&self.failed_attempts),
            codes(&self.given_up)
        )
    }
}

struct Shared {
    /// The nodes' clients, by URL (a channel is kept while its URL stays published).
    endpoints: RwLock<Vec<(String, Client)>>,
    acks: Mutex<Vec<Ack>>,
    stats: Mutex<Stats>,
    stop: AtomicBool,
    next_amount: AtomicI64,
}

impl Shared {
    fn count_failure(&self, label: &str, status: &Status) {
        let mut stats = self.stats.lock().unwrap();
        *stats.failed_attempts.entry(label.into()).or_default() += 1;
        stats.messages.entry(label.into()).or_insert_with(|| status.message().into());
    }
}

/// A running load.
pub struct Load {
    /// When the workers started.
    pub started: Instant,
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    prefix: String,
}

impl Load {
    /// Starts `entities` workers on entities `PREFIX-0`, `PREFIX-1`, ..., pausing `pause` between commands, sending
    /// to `endpoints` (`host:port`).
    pub fn start(prefix: &str, entities: usize, pause: Duration, endpoints: &[String]) -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the load's runtime");
        let shared = Arc::new(Shared {
            endpoints: RwLock::new(Vec::new()),
            acks: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            stop: AtomicBool::new(false),
            next_amount: AtomicI64::new(1),
        });
        let mut load = Load { started: Instant::now(), runtime, shared, workers: Vec::new(), prefix: prefix.into() };
        load.set_endpoints(endpoints);
        load.workers = (0..entities)
            .map(|index| load.runtime.spawn(worker(load.shared.clone(), index, load.entity(index), pause)))
            .collect();
        load
    }

    /// The id of entity `index`.
    pub fn entity(&self, index: usize) -> String {
        format!("{}-{index}", self.prefix)
    }

    pub fn entities(&self) -> usize {
        self.workers.len()
    }

    /// Sends to these nodes from now on (`host:port`).
    pub fn set_endpoints(&self, endpoints: &[String]) {
        let _runtime = self.runtime.enter();
        let mut current = self.shared.endpoints.write().unwrap();
        let mut kept: HashMap<String, Client> = current.drain(..).collect();
        for endpoint in endpoints {
            let url = format!("http://{endpoint}");
            let client = kept.remove(&url).unwrap_or_else(|| {
                let channel = Endpoint::from_shared(url.clone())
                    .expect("a node URL")
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                ChiefOfStateServiceClient::new(channel)
            });
            current.push((url, client));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.shared.endpoints.read().unwrap().iter().map(|(url, _)| url.clone()).collect()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// For each entity, how long after `since` its first acknowledgement came (`None`: none yet).
    pub fn first_acks_after(&self, since: Instant) -> Vec<Option<Duration>> {
        let mut first = vec![None; self.entities()];
        for ack in self.shared.acks.lock().unwrap().iter().filter(|a| a.acked >= since) {
            let gap = ack.acked - since;
            let slot = &mut first[ack.entity];
            if slot.is_none_or(|g| gap < g) {
                *slot = Some(gap);
            }
        }
        first
    }

    /// The longest time any entity waited after `since` for its first acknowledgement, once every entity had one.
    pub fn all_served_after(&self, since: Instant) -> Option<Duration> {
        self.first_acks_after(since).into_iter().try_fold(Duration::ZERO, |max, gap| Some(max.max(gap?)))
    }

    /// Stops the workers (each finishes, or gives up, the command it is sending) and returns every
    /// acknowledgement and the counters.
    pub fn stop(mut self) -> (Vec<Ack>, Stats) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let workers = std::mem::take(&mut self.workers);
        self.runtime.block_on(async {
            for worker in workers {
                worker.await.expect("a load worker panicked");
            }
        });
        let acks = std::mem::take(&mut *self.shared.acks.lock().unwrap());
        let stats = self.stats();
        (acks, stats)
    }
}

async fn worker(shared: Arc<Shared>, index: usize, entity_id: String, pause: Duration) {
    let mut opened = false;
    while !shared.stop.load(Ordering::SeqCst) {
        let command =
            if opened { Sent::Deposit(shared.next_amount.fetch_add(1, Ordering::SeqCst)) } else { Sent::Open };
        let sent = Instant::now();
        match send(&shared, index, &entity_id, command).await {
            Ok(Some(revision)) => {
                opened = true;
                shared.acks.lock().unwrap().push(Ack { entity: index, revision, command, sent, acked: Instant::now() });
                shared.stats.lock().unwrap().acked += 1;
            }
            Ok(None) => opened = true,
            Err(label) => *shared.stats.lock().unwrap().given_up.entry(label).or_default() += 1,
        }
        tokio::time::sleep(pause).await;
    }
}

/// Sends one command with retries; `Ok(Some(revision))` when acknowledged, `Ok(None)` when an open finds the
/// account open already (an earlier attempt was applied but not acknowledged), `Err(code)` when given up.
async fn send(shared: &Shared, index: usize, entity_id: &str, command: Sent) -> Result<Option<i64>, String> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut backoff = BACKOFF_START;
    for attempt in 0.. {
        let client = {
            let endpoints = shared.endpoints.read().unwrap();
            (!endpoints.is_empty()).then(|| endpoints[(index + attempt) % endpoints.len()].1.clone())
        };
        let request = ProcessCommandRequest {
            entity_id: entity_id.into(),
            command: Some(match command {
                Sent::Open => pack(&OpenAccount { owner: format!("owner of {entity_id}"), initial_balance: 0 }),
                Sent::Deposit(amount) => pack(&Deposit { amount }),
            }),
        };
        let result = match client {
            None => Err(Status::unavailable("no node is published")),
            Some(mut client) => match tokio::time::timeout(CALL_TIMEOUT, client.process_command(request)).await {
                Ok(reply) => reply.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded("the client's deadline passed")),
            },
        };
        let status = match result {
            Ok(reply) => return Ok(Some(reply.meta.map_or(0, |m| m.revision_number.into()))),
            Err(status) if command == Sent::Open && status.code() == Code::AlreadyExists => return Ok(None),
            Err(status) => status,
        };
        let label = label(&status);
        shared.count_failure(&label, &status);
        if !retryable(&status) || Instant::now() + backoff > deadline {
            return Err(label);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    unreachable!("the retry loop returns")
}

/// The README's retry policy: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL "Ask timed out", and a failure of the
/// client's own transport, which tonic reports as UNKNOWN "transport error" or CANCELLED "operation was canceled"
/// when the node's connection drops (the node never answered: the command may or may not have been applied, as
/// with UNAVAILABLE).
pub fn retryable(status: &Status) -> bool {
    match status.code() {
        _ if from_transport(status) => true,
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Internal => status.message().contains("Ask timed out"),
        _ => false,
    }
}

/// Whether the status was made by the client's transport (the connection failed) rather than sent by a node.
pub fn from_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL (Ask timed out)`, `UNKNOWN (client transport)`, ...
pub fn label(status: &Status) -> String {
    let name: String = format!("{:?}", status.code())
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let underscore = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            underscore.into_iter().chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect();
    if from_transport(status) {
        format!("{name} (client transport)")
    } else if status.code() == Code::Internal && status.message().contains("Ask timed out") {
        format!("{name} (Ask timed out)")
    } else {
        name
    }
}

/// What the journal says of the acknowledged commands.
#[derive(Debug, Default)]
pub struct JournalCheck {
    /// Acknowledged commands whose revision is missing from the journal, or holds another command's event.
    pub lost: Vec<String>,
    /// Entities whose revisions are not 1, 2, ..., n.
    pub gaps: Vec<String>,
    /// Deposits stored twice (a retry of a command whose first attempt was applied but not acknowledged).
    pub applied_twice: usize,
    /// Events in the journal for the load's entities.
    pub events: usize,
    /// Per entity: its last revision and the balance its events add up to.
    pub accounts: BTreeMap<String, (i64, i64)>,
}

/// Checks every acknowledgement against the journal rows `(entity_id, revision, payload)` of the load's entities.
pub fn check_journal(
    load_entity: impl Fn(usize) -> String,
    acks: &[Ack],
    rows: &[(String, i64, Vec<u8>)],
) -> JournalCheck {
    use prost::Message as _;
    let mut journal: HashMap<(String, i64), Sent> = HashMap::new();
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut deposits: HashMap<i64, usize> = HashMap::new();
    let mut accounts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (entity, revision, payload) in rows {
        let event = EventWrapper::decode(payload.as_slice()).expect("a journal payload is an EventWrapper").event;
        let event = event.expect("an event");
        let account = accounts.entry(entity.clone()).or_default();
        account.0 = account.0.max(*revision);
        let sent = if let Some(deposited) = unpack::<Deposited>(&event) {
            let amount = deposited.expect("a Deposited event").amount;
            *deposits.entry(amount).or_default() += 1;
            account.1 += amount;
            Sent::Deposit(amount)
        } else if let Some(opened) = unpack::<AccountOpened>(&event) {
            account.1 += opened.expect("an AccountOpened event").balance;
            Sent::Open
        } else {
            panic!("unexpected event {} in {entity}'s journal", event.type_url)
        };
        journal.insert((entity.clone(), *revision), sent);
        revisions.entry(entity.clone()).or_default().push(*revision);
    }
    let mut check = JournalCheck { events: rows.len(), accounts, ..JournalCheck::default() };
    for ack in acks {
        let entity = load_entity(ack.entity);
        match journal.get(&(entity.clone(), ack.revision)) {
            Some(stored) if *stored == ack.command => {}
            other => check
                .lost
                .push(format!("{entity} revision {}: acknowledged {:?}, stored {other:?}", ack.revision, ack.command)),
        }
    }
    for (entity, mut revs) in revisions {
        revs.sort_unstable();
        if revs.iter().enumerate().any(|(i, r)| *r != i as i64 + 1) {
            check.gaps.push(format!("{entity}: {revs:?}"));
        }
    }
    check.applied_twice = deposits.values().filter(|n| **n > 1).count();
    check
}
