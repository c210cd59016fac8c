//! The cluster suite's history: an Elle-style list-append write handler that doubles as the ownership registry,
//! what the clients saw, what the journal holds, and the checker over all three (`shared/spec/reliability.md`
//! §4.2, §4.6).
//!
//! The domain: a command is a `google.protobuf.StringValue` holding a unique op id (one per attempt, e.g.
//! `op-17`); `HandleCommand` answers one event holding the same value; `HandleEvent` appends it to the state, a
//! `google.protobuf.ListValue` of strings. So an entity's state is the list of the ops persisted for it, in order.
//!
//! The registry: every `HandleCommand` / `HandleEvent` is recorded with the node that made it (the `regent-node`
//! metadata every node sends), the entity, the revision and when it started and ended, on the test process's clock.
//! Two nodes handling one entity at the same time is Akka's `DoubleRegister`.
//!
//! [`check`] is pure (no I/O), so its rules are unit-tested with made-up histories.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{Any, ListValue, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

use regent::actors::shard_of;
use regent::proto::chief_of_state::v1::write_side_handler_service_server::{
    WriteSideHandlerService, WriteSideHandlerServiceServer,
};
use regent::proto::chief_of_state::v1::{
    EventWrapper, HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};

pub const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
pub const LIST_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.ListValue";
pub const EMPTY_TYPE: &str = "type.googleapis.com/google.protobuf.Empty";
/// The gRPC metadata naming the node that calls the write handler (`REGENT_NODE_NAME`).
pub const NODE_HEADER: &str = "regent-node";

// ---------------------------------------------------------------------------------------------------------------
// the domain

/// The command (and the event) carrying `op`.
pub fn op_any(op: &str) -> Any {
    Any { type_url: STRING_VALUE_TYPE.into(), value: op.to_string().encode_to_vec() }
}

/// The op an `Any` carries.
pub fn decode_op(any: &Any) -> Result<String, String> {
    if any.type_url != STRING_VALUE_TYPE {
        return Err(format!("expected a StringValue, got {:?}", any.type_url));
    }
    String::decode(any.value.as_slice()).map_err(|e| format!("undecodable StringValue: {e}"))
}

/// A state holding `items`.
pub fn list_any(items: &[String]) -> Any {
    let values = items.iter().map(|item| Value { kind: Some(Kind::StringValue(item.clone())) }).collect();
    Any { type_url: LIST_VALUE_TYPE.into(), value: ListValue { values }.encode_to_vec() }
}

/// The items of a state; no state, an empty `Any` or `google.protobuf.Empty` (a new entity's state, as CoS sends
/// it) is the empty list.
pub fn decode_list(any: Option<&Any>) -> Result<Vec<String>, String> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() && a.type_url != EMPTY_TYPE) else { return Ok(Vec::new()) };
    if any.type_url != LIST_VALUE_TYPE {
        return Err(format!("expected a ListValue, got {:?}", any.type_url));
    }
    let list = ListValue::decode(any.value.as_slice()).map_err(|e| format!("undecodable ListValue: {e}"))?;
    list.values
        .into_iter()
        .map(|v| match v.kind {
            Some(Kind::StringValue(s)) => Ok(s),
            other => Err(format!("a list item is not a string: {other:?}")),
        })
        .collect()
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Starts the clock that [`ms`] prints against (the first call wins; the harness calls it when a cluster starts).
pub fn start_clock() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds from [`start_clock`] to `at` (negative before it), to print instants readably.
pub fn ms(at: Instant) -> f64 {
    let origin = start_clock();
    match at.checked_duration_since(origin) {
        Some(after) => after.as_secs_f64() * 1e3,
        None => -(origin.duration_since(at).as_secs_f64() * 1e3),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the write handler and ownership registry

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Command,
    Event,
}

/// One write-handler call.
#[derive(Debug, Clone)]
pub struct HandlerCall {
    pub kind: CallKind,
    pub entity: String,
    /// The `regent-node` metadata; `None` when the node did not send it.
    pub node: Option<String>,
    /// `HandleCommand`: the prior revision; `HandleEvent`: the event's revision.
    pub revision: u32,
    pub op: Option<String>,
    pub start: Instant,
    pub end: Instant,
}

/// Every call the handler answered, shared with the test.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<HandlerCall>>>);

impl Registry {
    pub fn calls(&self) -> Vec<HandlerCall> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, call: HandlerCall) {
        self.0.lock().unwrap().push(call);
    }

    /// The number of `HandleCommand` calls each node made.
    pub fn commands_by_node(&self) -> BTreeMap<String, usize> {
        let mut by_node = BTreeMap::new();
        for call in self.calls().iter().filter(|c| c.kind == CallKind::Command) {
            *by_node.entry(call.node.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
        }
        by_node
    }
}

#[derive(Clone)]
struct ListAppend {
    registry: Registry,
    delay: Duration,
}

fn node_of<T>(request: &Request<T>) -> Option<String> {
    request.metadata().get(NODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tonic::async_trait]
impl WriteSideHandlerService for ListAppend {
    async fn handle_command(
        &self,
        request: Request<HandleCommandRequest>,
    ) -> Result<Response<HandleCommandResponse>, Status> {
        let start = Instant::now();
        let node = node_of(&request);
        let body = request.into_inner();
        let meta = body.prior_event_meta.unwrap_or_default();
        let op = body.command.as_ref().map(decode_op).transpose().map_err(Status::invalid_argument)?;
        // A little time inside the call widens the window in which a second owner would be caught.
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let op = op.ok_or_else(|| Status::invalid_argument("no command"))?;
        self.registry.push(HandlerCall {
            kind: CallKind::Command,
            entity: meta.entity_id,
            node,
            revision: meta.revision_number,
            op: Some(op.clone()),
            start,
            end: Instant::now(),
        });
        // Idempotent, as the README asks of handlers whose clients retry: an op already applied (its first
        // attempt persisted, but the reply was lost) is a no-op.
        let applied = decode_list(body.prior_state.as_ref()).map_err(Status::failed_precondition)?;
        let events = if applied.contains(&op) { Vec::new() } else { vec![op_any(&op)] };
        #[allow(deprecated)]
        Ok(Response::new(HandleCommandResponse { event: None, events }))
    }

    async fn handle_event(
        &self,
        request: Request<HandleEventRequest>,
    ) -> Result<Response<HandleEventResponse>, Status> {
        let start = Instant::now();
        let node = node_of(&request);
        let body = request.into_inner();
        let meta = body.event_meta.unwrap_or_default();
        let op = decode_op(&body.event.unwrap_or_default()).map_err(Status::invalid_argument)?;
        let mut items = decode_list(body.prior_state.as_ref()).map_err(Status::failed_precondition)?;
        items.push(op.clone());
        self.registry.push(HandlerCall {
            kind: CallKind::Event,
            entity: meta.entity_id,
            node,
            revision: meta.revision_number,
            op: Some(op),
            start,
            end: Instant::now(),
        });
        Ok(Response::new(HandleEventResponse { resulting_state: Some(list_any(&items)) }))
    }
}

/// The list-append write handler on `127.0.0.1:0`, shared by every node of a cluster.
pub struct HistoryHandler {
    addr: SocketAddr,
    pub registry: Registry,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl HistoryHandler {
    /// `delay`: how long each `HandleCommand` takes.
    pub async fn start(delay: Duration) -> HistoryHandler {
        Self::start_with_tls(delay, None).await
    }

    /// [`start`](Self::start), serving TLS only when `tls` (a PEM certificate chain and its PEM key) is given.
    pub async fn start_with_tls(delay: Duration, tls: Option<(String, String)>) -> HistoryHandler {
        start_clock();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the history handler");
        let addr = listener.local_addr().unwrap();
        let registry = Registry::default();
        let service = WriteSideHandlerServiceServer::new(ListAppend { registry: registry.clone(), delay });
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).expect("handler TLS");
        }
        let task = tokio::spawn(async move {
            builder
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("history handler server failed");
        });
        HistoryHandler { addr, registry, running: Some((stop, task)) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for HistoryHandler {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.running {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// what the clients saw

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `ProcessCommand` answered OK with this revision and state.
    Acked { revision: u32, state: Vec<String> },
    /// An error; `retryable` per the client policy ([`crate::support::load::retryable`]).
    Failed { code: Code, message: String, retryable: bool },
}

/// One `ProcessCommand` attempt: a logical command is retried with a fresh op id per attempt, so every op id is
/// sent once and an op found in the journal names exactly one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The logical command it belongs to.
    pub command: u64,
    pub entity: String,
    pub op: String,
    /// The node it was sent to.
    pub node: String,
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn acked(&self) -> Option<(u32, &[String])> {
        match &self.outcome {
            Outcome::Acked { revision, state } => Some((*revision, state)),
            Outcome::Failed { .. } => None,
        }
    }
}

/// Every attempt of every client, in completion order.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub attempts: Vec<Attempt>,
}

impl History {
    pub fn acked(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(|a| a.acked().is_some())
    }

    /// The attempts of each logical command, in order.
    pub fn commands(&self) -> BTreeMap<u64, Vec<&Attempt>> {
        let mut commands: BTreeMap<u64, Vec<&Attempt>> = BTreeMap::new();
        for attempt in &self.attempts {
            commands.entry(attempt.command).or_default().push(attempt);
        }
        for attempts in commands.values_mut() {
            attempts.sort_by_key(|a| a.sent);
        }
        commands
    }

    /// Logical commands whose last attempt failed (the retries ran out, or the error was not retryable).
    pub fn failed_commands(&self) -> Vec<Vec<&Attempt>> {
        self.commands().into_values().filter(|attempts| attempts.last().is_some_and(|a| a.acked().is_none())).collect()
    }

    /// Entities the clients wrote to.
    pub fn entities(&self) -> BTreeSet<String> {
        self.attempts.iter().map(|a| a.entity.clone()).collect()
    }

    /// Counts, failed attempts by code, and the failed commands (at most 5).
    /// Commands may fail during a fault, but only with what the client policy retries (they ran out of time): any
    /// other status would make a client give up on a command it could have retried.
    #[track_caller]
    pub fn assert_failures_retryable(&self) {
        let other = self
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed { retryable: false, .. }))
            .map(|a| format!("{} via {}: {:?}", a.entity, a.node, a.outcome))
            .collect::<Vec<_>>();
        assert!(other.is_empty(), "errors the client policy does not retry: {other:#?}\n{}", self.summary());
    }

    pub fn summary(&self) -> String {
        let commands = self.commands();
        let failed = self.failed_commands();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for attempt in &self.attempts {
            if let Outcome::Failed { code, message, .. } = &attempt.outcome {
                let mut message = message.clone();
                message.truncate(80);
                *errors.entry(format!("{code:?}: {message}")).or_default() += 1;
            }
        }
        let mut out = format!(
            "{} commands, {} attempts, {} acked, {} failed after retries\n",
            commands.len(),
            self.attempts.len(),
            self.acked().count(),
            failed.len()
        );
        for (error, count) in &errors {
            let _ = writeln!(out, "  failed attempts {count:>5} × {error}");
        }
        if failed.len() > 5 {
            let _ = writeln!(out, "  (the first 5 failed commands:)");
        }
        for attempts in failed.iter().take(5) {
            let first = attempts[0];
            let _ = writeln!(
                out,
                "  failed command {} on {} after {} attempt(s):",
                first.command,
                first.entity,
                attempts.len()
            );
            for (i, a) in attempts.iter().enumerate() {
                if i == 2 && attempts.len() > 4 {
                    let _ = writeln!(out, "    ...");
                }
                if i < 2 || i + 2 >= attempts.len() {
                    let _ = writeln!(
                        out,
                        "    {:>9.1} → {:>9.1} ms via {}: {:?}",
                        ms(a.sent),
                        ms(a.done),
                        a.node,
                        a.outcome
                    );
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the journal

/// One `journal` row, decoded.
#[derive(Debug, Clone)]
pub struct JournalEvent {
    pub entity: String,
    pub revision: i64,
    pub shard: i64,
    pub written_at: i64,
    pub meta_entity: String,
    pub meta_revision: u32,
    pub op: Result<String, String>,
    pub state: Result<Vec<String>, String>,
}

impl JournalEvent {
    pub fn from_row(entity: String, revision: i64, shard: i64, written_at: i64, payload: &[u8]) -> Self {
        let (meta_entity, meta_revision, op, state) = match EventWrapper::decode(payload) {
            Ok(wrapper) => {
                let meta = wrapper.meta.unwrap_or_default();
                let op = wrapper.event.as_ref().ok_or_else(|| "no event".to_string()).and_then(decode_op);
                (meta.entity_id, meta.revision_number, op, decode_list(wrapper.resulting_state.as_ref()))
            }
            Err(e) => {
                let err = format!("payload is not an EventWrapper: {e}");
                (String::new(), 0, Err(err.clone()), Err(err))
            }
        };
        JournalEvent { entity, revision, shard, written_at, meta_entity, meta_revision, op, state }
    }
}

/// Every row of `schema.journal`, by entity and revision.
pub async fn read_journal(schema: &str) -> Vec<JournalEvent> {
    read_journal_from(&crate::support::pg::connect().await, schema).await
}

/// Every row of `schema.journal` on the server `db` is connected to (a private server: `tests/pg_faults.rs`).
pub async fn read_journal_from(db: &tokio_postgres::Client, schema: &str) -> Vec<JournalEvent> {
    let sql = format!(
        "SELECT entity_id, revision::bigint, shard::bigint, written_at::bigint, payload FROM \"{schema}\".journal \
         ORDER BY entity_id, revision"
    );
    db.query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| JournalEvent::from_row(row.get(0), row.get(1), row.get(2), row.get(3), row.get::<_, &[u8]>(4)))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// the checker

/// An entity as `GetState` returned it at the end (`NOT_FOUND` = revision 0, no items).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinalState {
    pub revision: u32,
    pub items: Vec<String>,
}

/// What the checker reads.
pub struct CheckInput<'a> {
    pub journal: &'a [JournalEvent],
    pub history: &'a History,
    pub states: &'a BTreeMap<String, FinalState>,
    pub calls: &'a [HandlerCall],
    pub num_shards: u32,
}

/// The checker's verdict: every broken invariant, and figures for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub summary: String,
    /// Per entity, how many times consecutive `HandleCommand`s switched node.
    pub switches: BTreeMap<String, usize>,
    /// Figures for the scenario's result file (e.g. the read side's).
    pub notes: Vec<String>,
}

impl Report {
    /// Panics with the violations (at most 40 shown) and the summary.
    #[track_caller]
    pub fn assert_ok(&self) {
        if self.violations.is_empty() {
            return;
        }
        let mut shown = self.violations.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ");
        if self.violations.len() > 40 {
            let _ = write!(shown, "\n  ... and {} more", self.violations.len() - 40);
        }
        panic!("the history breaks {} invariant(s):\n  {shown}\n{}", self.violations.len(), self.summary);
    }

    pub fn total_switches(&self) -> usize {
        self.switches.values().sum()
    }
}

/// I1 every acked op is in the journal and in `GetState`; I2 per entity the revisions are 1..n, each row's state is
/// the fold of the events up to it and `GetState` is the fold of all; I3 no two nodes handle one entity at once,
/// and no node handles an entity with a state older than an event already persisted (a stale owner); I5 no OK
/// whose event is absent (the acked revision holds the acked op, and the acked state is the fold up to it). Also:
/// no op persisted twice, none that no client sent for that entity, shards as `shard_of` computes them.
/// Attempts that failed are indeterminate: their ops may or may not be in the journal.
pub fn check(input: &CheckInput<'_>) -> Report {
    let mut v = Vec::new();

    // I2 over the journal, and where each op landed.
    let mut by_entity: BTreeMap<&str, Vec<&JournalEvent>> = BTreeMap::new();
    for event in input.journal {
        by_entity.entry(event.entity.as_str()).or_default().push(event);
    }
    let sent: HashMap<&str, &str> = input.history.attempts.iter().map(|a| (a.op.as_str(), a.entity.as_str())).collect();
    let mut landed: HashMap<&str, (&str, i64)> = HashMap::new();
    let mut folds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (entity, events) in &mut by_entity {
        events.sort_by_key(|e| e.revision);
        let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
        if revisions.iter().enumerate().any(|(i, r)| *r != i as i64 + 1) {
            v.push(format!("I2 {entity}: revisions are not 1..{}: {revisions:?}", revisions.len()));
        }
        let mut fold = Vec::new();
        for event in events.iter() {
            let at = format!("{entity}@{}", event.revision);
            if event.meta_entity != *entity || i64::from(event.meta_revision) != event.revision {
                v.push(format!("I2 {at}: the event's meta says {}@{}", event.meta_entity, event.meta_revision));
            }
            let expected_shard = i64::from(shard_of(entity, input.num_shards));
            if event.shard != expected_shard {
                v.push(format!("{at}: stored in shard {}, expected {expected_shard}", event.shard));
            }
            match &event.op {
                Ok(op) => {
                    fold.push(op.clone());
                    if let Some((other, revision)) = landed.insert(op, (entity, event.revision)) {
                        v.push(format!("op {op} persisted twice: {other}@{revision} and {at}"));
                    }
                    match sent.get(op.as_str()) {
                        None => v.push(format!("{at}: op {op} was never sent by a client")),
                        Some(target) if target != entity => {
                            v.push(format!("{at}: op {op} was sent for entity {target}"))
                        }
                        Some(_) => {}
                    }
                }
                Err(e) => v.push(format!("{at}: {e}")),
            }
            match &event.state {
                Ok(state) if *state == fold => {}
                Ok(state) => v.push(format!("I2 {at}: resulting state {state:?} is not the fold {fold:?}")),
                Err(e) => v.push(format!("I2 {at}: {e}")),
            }
        }
        folds.insert(entity, fold);
    }

    // I1 and I5 over the acks.
    let empty = Vec::new();
    for attempt in input.history.acked() {
        let (revision, state) = attempt.acked().expect("acked");
        let (entity, op) = (attempt.entity.as_str(), attempt.op.as_str());
        let fold = folds.get(entity).unwrap_or(&empty);
        match landed.get(op) {
            None => {
                v.push(format!("I1/I5 {entity}: op {op} was acked at revision {revision} but is not in the journal"))
            }
            // An op retried after its first attempt persisted (reply lost) is a no-op acked at a later revision.
            Some((e, r)) if *e != entity || *r > i64::from(revision) => v.push(format!(
                "I5 {entity}: op {op} was acked at revision {revision} but is in the journal at {e}@{r}"
            )),
            Some(_) => {}
        }
        let upto = fold.get(..revision as usize);
        if upto != Some(state) {
            v.push(format!(
                "I5 {entity}: op {op} acked with state {state:?}, the journal's fold up to {revision} is {upto:?}"
            ));
        }
        match input.states.get(entity) {
            Some(last) if last.items.iter().any(|item| item == op) => {}
            Some(_) => v.push(format!("I1 {entity}: acked op {op} is missing from GetState")),
            None => v.push(format!("I1 {entity}: no final GetState for an entity with acked ops")),
        }
    }

    // GetState = the fold of the whole journal.
    for (entity, fold) in &folds {
        match input.states.get(*entity) {
            Some(last) if last.items == *fold && last.revision as usize == fold.len() => {}
            Some(last) => v.push(format!(
                "I2 {entity}: GetState is revision {} {:?}, the journal's fold is revision {} {fold:?}",
                last.revision,
                last.items,
                fold.len()
            )),
            None => v.push(format!("I2 {entity}: no final GetState for an entity with a journal")),
        }
    }
    for (entity, last) in input.states {
        if !folds.contains_key(entity.as_str()) && (last.revision != 0 || !last.items.is_empty()) {
            v.push(format!("I2 {entity}: GetState is revision {} but the journal is empty", last.revision));
        }
    }

    // I3: the ownership registry.
    let switches = check_ownership(input.calls, &landed, &mut v);

    let mut summary = input.history.summary();
    let calls_by_node = count_by(input.calls.iter().filter(|c| c.kind == CallKind::Command).map(|c| c.node.clone()));
    let _ = writeln!(
        summary,
        "journal: {} events over {} entities; HandleCommand calls by node: {calls_by_node:?}; node switches: {}",
        input.journal.len(),
        by_entity.len(),
        switches.values().sum::<usize>()
    );
    Report { violations: v, summary, switches, notes: Vec::new() }
}

fn count_by(items: impl Iterator<Item = Option<String>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.unwrap_or_else(|| "<no regent-node>".into())).or_default() += 1;
    }
    counts
}

/// The registry rules; returns the node switches per entity.
fn check_ownership(
    calls: &[HandlerCall],
    landed: &HashMap<&str, (&str, i64)>,
    v: &mut Vec<String>,
) -> BTreeMap<String, usize> {
    let unnamed = calls.iter().filter(|c| c.node.is_none()).count();
    if unnamed > 0 {
        v.push(format!("I3: {unnamed} write-handler call(s) without the {NODE_HEADER} metadata"));
    }
    let nameless = calls.iter().filter(|c| c.entity.is_empty()).count();
    if nameless > 0 {
        v.push(format!("I3: {nameless} write-handler call(s) without an entity id in their meta"));
    }
    let mut by_entity: BTreeMap<&str, Vec<&HandlerCall>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.node.is_some() && !c.entity.is_empty()) {
        by_entity.entry(call.entity.as_str()).or_default().push(call);
    }
    let mut switches = BTreeMap::new();
    for (entity, calls) in &mut by_entity {
        calls.sort_by_key(|c| c.start);
        let node = |c: &HandlerCall| c.node.clone().unwrap_or_default();

        // No overlap between nodes: each call against the latest end seen so far on every other node.
        let mut last_end: BTreeMap<String, &HandlerCall> = BTreeMap::new();
        let mut overlaps = 0;
        for call in calls.iter() {
            for (other, previous) in &last_end {
                if *other != node(call) && previous.end > call.start {
                    overlaps += 1;
                    if overlaps <= 3 {
                        v.push(format!(
                            "I3 {entity}: {} handled {:?} {:?} at {:.1}–{:.1} ms while {other} was in {:?} {:?} \
                             ({:.1}–{:.1} ms): two owners",
                            node(call),
                            call.kind,
                            call.op,
                            ms(call.start),
                            ms(call.end),
                            previous.kind,
                            previous.op,
                            ms(previous.start),
                            ms(previous.end)
                        ));
                    }
                }
            }
            let entry = last_end.entry(node(call)).or_insert(call);
            if call.end > entry.end {
                *entry = call;
            }
        }
        if overlaps > 3 {
            v.push(format!("I3 {entity}: ... {} more overlapping calls", overlaps - 3));
        }

        // No stale owner: a command handled after a persisted command ended must see that command's event.
        let commands: Vec<&HandlerCall> = calls.iter().copied().filter(|c| c.kind == CallKind::Command).collect();
        // A retried op may be handled on the same prior revision by two nodes (the first froze or died before
        // persisting it): only the last of them can be the one whose event landed.
        let mut landing: BTreeMap<(&str, u32), &HandlerCall> = BTreeMap::new();
        for c in &commands {
            let Some(op) = c.op.as_deref() else { continue };
            let Some((e, revision)) = landed.get(op) else { continue };
            if *e == *entity && *revision == i64::from(c.revision) + 1 {
                landing.insert((op, c.revision), *c);
            }
        }
        let mut persisted: Vec<(Instant, u32, &HandlerCall)> =
            landing.values().map(|c| (c.end, c.revision + 1, *c)).collect();
        persisted.sort_by_key(|(end, _, _)| *end);
        let mut next = 0;
        let mut seen: Option<(u32, &HandlerCall)> = None;
        let mut stale = 0;
        for call in &commands {
            while next < persisted.len() && persisted[next].0 < call.start {
                let (_, revision, by) = persisted[next];
                if seen.is_none_or(|(r, _)| revision > r) {
                    seen = Some((revision, by));
                }
                next += 1;
            }
            if let Some((revision, by)) = seen
                && call.revision < revision
            {
                stale += 1;
                if stale <= 3 {
                    v.push(format!(
                        "I3 {entity}: {} handled {:?} at {:.1} ms on prior revision {}, but revision {revision} ({:?} \
                         via {}) was persisted before: a stale owner",
                        node(call),
                        call.op,
                        ms(call.start),
                        call.revision,
                        by.op,
                        node(by)
                    ));
                }
            }
        }
        if stale > 3 {
            v.push(format!("I3 {entity}: ... {} more stale-owner calls", stale - 3));
        }
        let count = commands.windows(2).filter(|w| w[0].node != w[1].node).count();
        switches.insert(entity.to_string(), count);
    }
    switches
}
