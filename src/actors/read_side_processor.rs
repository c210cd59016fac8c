//! `ReadSideProcessor`: delivers the events of one shard to one read handler, in journal order, at least once.
//! Supervised by the [`ReadSideSupervisor`](super::ReadSideSupervisor); supervises nothing.
//!
//! The processor reads the shard's journal after its stored cursor (the store never hands out a row while an
//! older one may still commit), calls `HandleReadSide` for one row at a time, and stores the row's cursor only
//! after the handler answered `successful = true`. It handles one row per message, so pause, resume, restart and
//! skip take effect between two rows. It waits for new events on the node's journal signal, with a poll as a
//! fallback.
//!
//! A failed row (an error, a timeout or `successful = false`) is handled by the read side's failure policy:
//! `STOP` stops at the row (visible as `Stopped`, resumed by resume, restart or skip), `SKIP` stores the row's
//! cursor and goes on, `REPLAY_STOP` / `REPLAY_SKIP` retry the row up to [`MAX_REPLAYS`] times with exponential
//! backoff, then stop or skip.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tracing::{Instrument, debug, error, info, warn};

use crate::config::read_sides::{FailurePolicy, ReadSideSettings};
use crate::grpc::breaker::CircuitBreaker;
use crate::grpc::http_handler::HttpHandler;
use crate::persistence::{self, Cursor, JournalRow, Store};
use crate::proto::chief_of_state::v1::read_side_handler_service_client::ReadSideHandlerServiceClient;
use crate::proto::chief_of_state::v1::{EventWrapper, HandleReadSideRequest, HandleReadSideResponse};

/// Retries of a failed row under the `REPLAY_*` policies before the policy's final step.
pub const MAX_REPLAYS: u32 = 5;
/// Rows read from the journal at once.
const BATCH: usize = 500;
/// How long to wait for a journal signal before polling anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// Backoff after a store error, and the first replay backoff (doubled per replay, capped).
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct ReadSideProcessor;

/// Where a processor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessorStatus {
    Running,
    Paused,
    /// Waiting before replaying a failed row (attempt `n` of [`MAX_REPLAYS`]).
    Replaying {
        attempt: u32,
        error: String,
    },
    /// Stopped at a failed row by the failure policy.
    Stopped {
        error: String,
    },
}

impl std::fmt::Display for ProcessorStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessorStatus::Running => f.write_str("RUNNING"),
            ProcessorStatus::Paused => f.write_str("PAUSED"),
            ProcessorStatus::Replaying { .. } => f.write_str("REPLAYING"),
            ProcessorStatus::Stopped { .. } => f.write_str("STOPPED"),
        }
    }
}

/// A snapshot of a processor, for the operator.
#[derive(Debug, Clone)]
pub struct ProcessorReport {
    pub shard: u32,
    pub cursor: Cursor,
    pub status: ProcessorStatus,
    pub delivered: u64,
    pub failures: u64,
    /// When the oldest event read but not handled yet was written (`None` when caught up).
    pub pending_since: Option<SystemTime>,
}

impl ProcessorReport {
    /// How far behind the journal the processor is, in seconds (0 when caught up).
    pub fn lag_seconds(&self) -> f64 {
        self.pending_since
            .and_then(|since| SystemTime::now().duration_since(since).ok())
            .map_or(0.0, |lag| lag.as_secs_f64())
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum ProcessorMessage {
    /// Look for work (sent to itself).
    Poll,
    /// The journal signal fired or the fallback poll elapsed.
    Wake,
    Pause(RpcReplyPort<Result<(), persistence::Error>>),
    Resume(RpcReplyPort<Result<(), persistence::Error>>),
    /// Forget the cursor: replay the shard from the beginning of the journal.
    Restart(RpcReplyPort<Result<(), persistence::Error>>),
    /// Skip the row the processor is stuck on (or, when none, the next row).
    Skip(RpcReplyPort<Result<(), persistence::Error>>),
    Report(RpcReplyPort<ProcessorReport>),
}

/// A read side's handler: how it is called, and its circuit breaker when `COS_READ_SIDE_BREAKER_ENABLED` (one per
/// read side on a node, shared by its processors, as in CoS).
#[derive(Clone)]
pub struct ReadHandler {
    pub transport: ReadTransport,
    pub breaker: Option<Arc<CircuitBreaker>>,
}

/// gRPC, or CoS's HTTP/JSON (`protocol: http`).
#[derive(Clone)]
pub enum ReadTransport {
    Grpc(ReadSideHandlerServiceClient<Channel>),
    Http(Arc<HttpHandler>),
}

impl ReadHandler {
    /// One `HandleReadSide` call, bounded by `timeout` (then `DEADLINE_EXCEEDED`), through the breaker.
    async fn call(
        &self,
        request: tonic::Request<HandleReadSideRequest>,
        timeout: Duration,
    ) -> Result<tonic::Response<HandleReadSideResponse>, Status> {
        let call = async {
            match &self.transport {
                ReadTransport::Grpc(client) => client.clone().handle_read_side(request).await,
                ReadTransport::Http(http) => http.handle_read_side(request).await,
            }
        };
        let bounded = async {
            tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the read handler did not answer within {} ms",
                    timeout.as_millis()
                )))
            })
        };
        CircuitBreaker::guard(self.breaker.as_deref(), bounded).await
    }
}

pub struct ProcessorArgs {
    pub settings: Arc<ReadSideSettings>,
    pub shard: u32,
    pub store: Arc<dyn Store>,
    pub handler: ReadHandler,
    pub journal_signal: watch::Receiver<u64>,
}

pub struct ProcessorState {
    settings: Arc<ReadSideSettings>,
    shard: u32,
    store: Arc<dyn Store>,
    handler: ReadHandler,
    journal_signal: watch::Receiver<u64>,
    cursor: Cursor,
    paused: bool,
    status: ProcessorStatus,
    /// Rows read and not yet handled; the front one is the row being (re)tried.
    buffer: VecDeque<JournalRow>,
    /// Failed attempts at the front row.
    attempts: u32,
    /// The front row's cursor once the handler took it but storing its offset failed: the retry stores the
    /// offset without handling the row again.
    handled_unsaved: Option<Cursor>,
    /// No work before this instant (replay backoff, store trouble).
    not_before: Option<Instant>,
    /// A wake-up task is pending.
    waiting: bool,
    delivered: u64,
    failures: u64,
    /// When the row being delivered (or retried) was written; `None` between rows and once caught up.
    pending_since: Option<SystemTime>,
}

impl Actor for ReadSideProcessor {
    type Msg = ProcessorMessage;
    type State = ProcessorState;
    type Arguments = ProcessorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ProcessorMessage>,
        args: ProcessorArgs,
    ) -> Result<ProcessorState, ActorProcessingErr> {
        let offset = args.store.load_offset(&args.settings.id, args.shard).await?;
        crate::metrics::get().read_side_started(&args.settings.id, args.shard);
        let _ = myself.send_message(ProcessorMessage::Poll);
        Ok(ProcessorState {
            settings: args.settings,
            shard: args.shard,
            store: args.store,
            handler: args.handler,
            journal_signal: args.journal_signal,
            cursor: offset.cursor,
            paused: offset.paused,
            status: if offset.paused { ProcessorStatus::Paused } else { ProcessorStatus::Running },
            buffer: VecDeque::new(),
            attempts: 0,
            handled_unsaved: None,
            not_before: None,
            waiting: false,
            delivered: 0,
            failures: 0,
            pending_since: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProcessorMessage>,
        message: ProcessorMessage,
        state: &mut ProcessorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProcessorMessage::Poll => state.poll(&myself).await,
            ProcessorMessage::Wake => {
                state.waiting = false;
                state.poll(&myself).await;
            }
            ProcessorMessage::Pause(reply) => {
                let outcome = state.store.save_paused(&state.settings.id, state.shard, true).await;
                if outcome.is_ok() {
                    state.paused = true;
                    state.status = ProcessorStatus::Paused;
                    info!(read_side = %state.settings.id, shard = state.shard, "read side paused");
                }
                let _ = reply.send(outcome);
            }
            ProcessorMessage::Resume(reply) => {
                let outcome = state.store.save_paused(&state.settings.id, state.shard, false).await;
                if outcome.is_ok() {
                    state.paused = false;
                    state.unstick();
                    info!(read_side = %state.settings.id, shard = state.shard, "read side resumed");
                    let _ = myself.send_message(ProcessorMessage::Poll);
                }
                let _ = reply.send(outcome);
            }
            ProcessorMessage::Restart(reply) => {
                let outcome = state.store.save_cursor(&state.settings.id, state.shard, Cursor::default()).await;
                if outcome.is_ok() {
                    state.cursor = Cursor::default();
                    state.buffer.clear();
                    state.handled_unsaved = None;
                    state.unstick();
                    info!(read_side = %state.settings.id, shard = state.shard, "read side restarted from the beginning");
                    let _ = myself.send_message(ProcessorMessage::Poll);
                }
                let _ = reply.send(outcome);
            }
            ProcessorMessage::Skip(reply) => {
                let outcome = state.skip().await;
                if outcome.is_ok() {
                    let _ = myself.send_message(ProcessorMessage::Poll);
                }
                let _ = reply.send(outcome);
            }
            ProcessorMessage::Report(reply) => {
                let _ = reply.send(ProcessorReport {
                    shard: state.shard,
                    cursor: state.cursor,
                    status: state.status.clone(),
                    delivered: state.delivered,
                    failures: state.failures,
                    pending_since: state.pending_since,
                });
            }
        }
        Ok(())
    }
}

impl ProcessorState {
    /// Leaves a stopped or replaying state (not a pause).
    fn unstick(&mut self) {
        self.attempts = 0;
        self.not_before = None;
        self.status = if self.paused { ProcessorStatus::Paused } else { ProcessorStatus::Running };
    }

    async fn poll(&mut self, myself: &ActorRef<ProcessorMessage>) {
        if self.paused || matches!(self.status, ProcessorStatus::Stopped { .. }) {
            return;
        }
        if let Some(at) = self.not_before {
            if Instant::now() < at {
                return; // a delayed Poll is already scheduled
            }
            self.not_before = None;
        }
        if self.buffer.is_empty() {
            // Mark the signal as seen before reading, so that an append racing with this read wakes us again.
            self.journal_signal.borrow_and_update();
            match self.store.events_after(self.shard, self.cursor, BATCH).await {
                Ok(rows) => self.buffer.extend(rows),
                Err(e) => {
                    warn!(read_side = %self.settings.id, shard = self.shard, error = %e, "cannot read the journal");
                    self.retry_after(myself, RETRY_BASE * 5);
                    return;
                }
            }
        }
        let Some(row) = self.buffer.front().cloned() else {
            self.pending_since = None;
            self.wait_for_events(myself);
            return;
        };
        let delivered = if self.handled_unsaved == Some(row.cursor) { Ok(()) } else { self.deliver(&row).await };
        match delivered {
            Ok(()) => {
                if let Err(e) = self.store.save_cursor(&self.settings.id, self.shard, row.cursor).await {
                    // Handled but not recorded: retry the save only (a restart of the node would deliver it again).
                    warn!(read_side = %self.settings.id, shard = self.shard, error = %e, "cannot store the offset");
                    self.handled_unsaved = Some(row.cursor);
                    self.retry_after(myself, RETRY_BASE * 5);
                    return;
                }
                self.handled_unsaved = None;
                self.cursor = row.cursor;
                self.buffer.pop_front();
                self.pending_since = None;
                self.attempts = 0;
                self.delivered += 1;
                crate::metrics::get().read_side_delivered(&self.settings.id, self.shard);
                self.status = ProcessorStatus::Running;
                let _ = myself.send_message(ProcessorMessage::Poll);
            }
            Err(error) => self.on_failure(myself, &row, error).await,
        }
    }

    async fn on_failure(&mut self, myself: &ActorRef<ProcessorMessage>, row: &JournalRow, error: String) {
        self.failures += 1;
        let (id, shard) = (&self.settings.id, self.shard);
        crate::metrics::get().read_side_failed(id, shard);
        let policy = self.settings.failure_policy;
        let replay = matches!(policy, FailurePolicy::ReplaySkip | FailurePolicy::ReplayStop);
        if replay && self.attempts < MAX_REPLAYS {
            self.attempts += 1;
            let delay = backoff(self.attempts);
            warn!(read_side = %id, shard, ordering = row.cursor.ordering, attempt = self.attempts, ?delay, %error,
                "read handler failed; replaying");
            self.status = ProcessorStatus::Replaying { attempt: self.attempts, error };
            self.retry_after(myself, delay);
            return;
        }
        match policy {
            FailurePolicy::Skip | FailurePolicy::ReplaySkip => {
                warn!(read_side = %id, shard, ordering = row.cursor.ordering, %error, "read handler failed; skipping the event");
                match self.store.save_cursor(id, shard, row.cursor).await {
                    Ok(()) => {
                        self.cursor = row.cursor;
                        self.buffer.pop_front();
                        self.attempts = 0;
                        self.status = ProcessorStatus::Running;
                        let _ = myself.send_message(ProcessorMessage::Poll);
                    }
                    Err(e) => {
                        warn!(read_side = %id, shard, error = %e, "cannot store the offset");
                        self.retry_after(myself, RETRY_BASE * 5);
                    }
                }
            }
            FailurePolicy::Stop | FailurePolicy::ReplayStop => {
                error!(read_side = %id, shard, ordering = row.cursor.ordering, %error,
                    "read handler failed; read side stopped at this event (resume, restart or skip to go on)");
                self.status = ProcessorStatus::Stopped { error };
            }
        }
    }

    async fn skip(&mut self) -> Result<(), persistence::Error> {
        let row = match self.buffer.front() {
            Some(row) => row.clone(),
            None => match self.store.events_after(self.shard, self.cursor, 1).await?.into_iter().next() {
                Some(row) => row,
                None => return Ok(()), // nothing to skip
            },
        };
        self.store.save_cursor(&self.settings.id, self.shard, row.cursor).await?;
        info!(read_side = %self.settings.id, shard = self.shard, ordering = row.cursor.ordering, "event skipped");
        self.cursor = row.cursor;
        self.buffer.clear();
        self.handled_unsaved = None;
        self.unstick();
        Ok(())
    }

    /// Calls the read handler for one row.
    async fn deliver(&mut self, row: &JournalRow) -> Result<(), String> {
        let event =
            EventWrapper::decode(row.payload.clone()).map_err(|e| format!("stored event does not decode: {e}"))?;
        self.pending_since = event
            .meta
            .as_ref()
            .and_then(|m| m.revision_date)
            .and_then(|t| SystemTime::try_from(t).ok())
            .or(self.pending_since)
            .or_else(|| Some(SystemTime::now()));
        let mut request = tonic::Request::new(HandleReadSideRequest {
            event: event.event,
            state: event.resulting_state,
            meta: event.meta,
            read_side_id: self.settings.id.clone(),
        });
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        request.set_timeout(timeout);
        if let Ok(value) = MetadataValue::try_from(row.entity_id.as_str()) {
            request.metadata_mut().insert("x-cos-entity-id", value);
        }
        request.metadata_mut().insert("x-cos-event-tag", MetadataValue::from(self.shard));
        let span = tracing::info_span!("read_side", read_side = %self.settings.id, shard = self.shard,
            entity_id = %row.entity_id, ordering = row.cursor.ordering);
        span.in_scope(|| crate::telemetry::inject_metadata(request.metadata_mut()));
        match self.handler.call(request, timeout).instrument(span).await {
            Ok(reply) if reply.get_ref().successful => {
                debug!(read_side = %self.settings.id, shard = self.shard, ordering = row.cursor.ordering, "delivered");
                Ok(())
            }
            Ok(_) => Err("the read handler answered successful=false".into()),
            Err(status) => Err(format!("the read handler failed: {:?}: {}", status.code(), status.message())),
        }
    }

    fn retry_after(&mut self, myself: &ActorRef<ProcessorMessage>, delay: Duration) {
        self.not_before = Some(Instant::now() + delay);
        ractor::time::send_after(delay, myself.get_cell(), || ProcessorMessage::Poll);
    }

    /// Sleeps until the journal signal fires (or the fallback poll elapses), then sends `Wake`.
    fn wait_for_events(&mut self, myself: &ActorRef<ProcessorMessage>) {
        if self.waiting {
            return;
        }
        self.waiting = true;
        let mut signal = self.journal_signal.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(POLL_FALLBACK, signal.changed()).await;
            let _ = myself.send_message(ProcessorMessage::Wake);
        });
    }
}

/// Exponential backoff for replay `attempt` (1-based): 200 ms, 400 ms, 800 ms, ... capped at 10 s.
pub fn backoff(attempt: u32) -> Duration {
    RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(40), RETRY_MAX);
    }
}
