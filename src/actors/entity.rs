//! `EntityActor`: one event-sourced entity. Supervised by its [`ShardActor`](super::ShardActor); supervises
//! nothing.
//!
//! The actor recovers lazily, on its first message (latest snapshot, then the later events: replay only sets the
//! state, it never calls the handler), and processes its messages strictly one at a time: a command calls
//! `HandleCommand`, then `HandleEvent` once per returned event (each sees the state produced by the previous
//! one), appends every event in one atomic journal write, and replies only once that write is durable.
//!
//! When a journal write fails the entity cannot know whether it committed, so it forgets its state and recovers
//! again on the next message; the caller gets the error and nothing is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use prost::Message as _;
use prost_types::Any;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{Instrument, debug, info_span, warn};

use super::{CommandEnvelope, CommandError, EntityReply};
use crate::config::{SnapshotConfig, WriteSideConfig};
use crate::persistence::{JournalSignals, PersistedEvent, Snapshot, Store};
use crate::proto::chief_of_state::plugins::persisted_headers::v1 as plugin;
use crate::proto::chief_of_state::v1::{
    EventWrapper, HandleCommandRequest, HandleEventRequest, Header, MetaData, StateWrapper, header,
};
use crate::subscriptions::{Published, SubscriptionHub};
use crate::telemetry;
use crate::write_side::WriteSide;

/// The key of `MetaData.data` under which the original CoS line stores the persisted headers.
pub const PERSISTED_HEADERS_KEY: &str = "persisted_headers.v1";
const PERSISTED_HEADERS_TYPE_URL: &str = "type.googleapis.com/chief_of_state.plugins.persisted_headers.v1.Headers";
const EMPTY_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Empty";

/// Everything an entity needs, shared by all entities of a node.
#[derive(Clone)]
pub struct EntitySettings {
    /// The node's name, carried by the entity's spans.
    pub node: Arc<str>,
    pub store: Arc<dyn Store>,
    pub handler: Arc<dyn WriteSide>,
    pub write_side: Arc<WriteSideConfig>,
    pub snapshots: SnapshotConfig,
    /// Wakes the read sides of a shard after an append.
    pub journal_signals: Arc<JournalSignals>,
    /// Where persisted events are published to subscribers (`None`: subscriptions disabled).
    pub subscriptions: Option<SubscriptionHub>,
    /// In a cluster, this member's lease: an entity acts only while it is trusted (`None`: a node alone).
    pub lease: Option<crate::cluster::keeper::LeaseClock>,
    /// At most this many requests wait for one entity (`entities.queue_limit`); the shard refuses the rest.
    pub queue_limit: usize,
}

pub struct EntityActor;

#[derive(ractor_cluster::RactorMessage)]
pub enum EntityMessage {
    /// Process one command.
    Command { command: Box<CommandEnvelope>, reply: RpcReplyPort<EntityReply> },
    /// The current state (`NOT_FOUND` while the entity has no event).
    GetState { reply: RpcReplyPort<EntityReply> },
    /// Stop once the messages already queued are processed (sent by the shard).
    Passivate,
}

impl EntityMessage {
    /// Answers a message that no entity will process, so that its caller is not left waiting.
    pub fn fail(self, why: &str) {
        self.reply_err(CommandError::Store(crate::persistence::Error::Unavailable(why.to_string())));
    }

    /// Answers the message with `error` instead of processing it.
    pub fn reply_err(self, error: CommandError) {
        self.reply(Err(error));
    }

    /// Answers the message with an outcome obtained elsewhere (the owner node, in a cluster).
    pub fn reply(self, outcome: EntityReply) {
        match self {
            EntityMessage::Command { reply, .. } | EntityMessage::GetState { reply } => {
                let _ = reply.send(outcome);
            }
            EntityMessage::Passivate => {}
        }
    }

    /// Whether its caller stopped waiting for the answer (ask timeout).
    pub fn is_abandoned(&self) -> bool {
        match self {
            EntityMessage::Command { reply, .. } | EntityMessage::GetState { reply } => reply.is_closed(),
            EntityMessage::Passivate => true,
        }
    }
}

pub struct EntityArgs {
    pub entity_id: String,
    pub shard: u32,
    pub settings: EntitySettings,
    /// Requests sent to this entity and not yet taken up (the shard counts up, the entity down).
    pub waiting: Arc<AtomicUsize>,
}

pub struct EntityState {
    entity_id: String,
    shard: u32,
    settings: EntitySettings,
    waiting: Arc<AtomicUsize>,
    /// `None` until recovered, and again after a journal write whose outcome is unknown.
    current: Option<StateWrapper>,
}

impl Actor for EntityActor {
    type Msg = EntityMessage;
    type State = EntityState;
    type Arguments = EntityArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, args: EntityArgs) -> Result<EntityState, ActorProcessingErr> {
        crate::metrics::get().entities_active.inc();
        Ok(EntityState {
            entity_id: args.entity_id,
            shard: args.shard,
            settings: args.settings,
            waiting: args.waiting,
            current: None,
        })
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, _: &mut EntityState) -> Result<(), ActorProcessingErr> {
        crate::metrics::get().entities_active.dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: EntityMessage,
        state: &mut EntityState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, EntityMessage::Passivate) {
            state.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        if !matches!(message, EntityMessage::Passivate)
            && state.settings.lease.as_ref().is_some_and(|lease| !lease.is_trusted())
        {
            // This member's lease may have expired (the process was paused, or cannot reach the database):
            // another member may own the entity now. Refuse without calling the handler, and stop.
            let why = "this node's cluster lease is not current; it is stopping";
            message.reply_err(CommandError::Store(crate::persistence::Error::Fenced(why.into())));
            myself.stop(Some("lease not trusted".into()));
            return Ok(());
        }
        match message {
            // Its caller gave up (ask timeout, cancelled call) before the entity got to it: nobody will read the
            // answer, so the handler is not called and nothing is written.
            EntityMessage::Command { reply, .. } if reply.is_closed() => {
                debug!(entity_id = %state.entity_id, "skipping a command whose caller has gone");
            }
            EntityMessage::Command { command, reply } => {
                let span = info_span!("command", entity_id = %state.entity_id, shard = state.shard,
                    node = %state.settings.node);
                telemetry::continue_from(&span, &command.trace_context);
                let outcome = state.process(command).instrument(span).await;
                let snapshot_due = matches!(&outcome, Ok((_, true)));
                // Another writer stored this revision, or this node may no longer write: this incarnation of the
                // entity is not the single writer and must stop (the shard restarts it from the journal if a
                // message comes); its caller gets the error, never an acknowledgement.
                let lost_ownership = matches!(
                    &outcome,
                    Err(CommandError::Store(
                        crate::persistence::Error::Conflict { .. } | crate::persistence::Error::Fenced(_)
                    ))
                );
                // The caller may have given up (ask timeout): a closed port is not an error.
                let _ = reply.send(outcome.map(|(s, _)| s));
                if snapshot_due {
                    state.snapshot().await;
                }
                if lost_ownership {
                    warn!(entity_id = %state.entity_id, "entity lost its write ownership: stopping");
                    myself.stop(Some("lost write ownership".into()));
                }
            }
            EntityMessage::GetState { reply } => {
                let outcome = match state.recovered().await {
                    Ok(s) if s.meta.as_ref().is_some_and(|m| m.revision_number > 0) => Ok(s.clone()),
                    Ok(_) => Err(CommandError::NotFound),
                    Err(e) => Err(e),
                };
                let _ = reply.send(outcome);
            }
            EntityMessage::Passivate => {
                debug!(entity_id = %state.entity_id, "passivating entity");
                crate::metrics::get().entities_passivated.inc();
                myself.stop(Some("passivated".into()));
            }
        }
        Ok(())
    }
}

impl EntityState {
    /// The recovered state, recovering it first if needed.
    async fn recovered(&mut self) -> Result<&StateWrapper, CommandError> {
        if self.current.is_none() {
            self.current = Some(recover(&*self.settings.store, &self.entity_id).await?);
        }
        Ok(self.current.as_ref().expect("recovered above"))
    }

    /// Runs one command; on success returns the new state and whether a snapshot is due.
    async fn process(&mut self, command: Box<CommandEnvelope>) -> Result<(StateWrapper, bool), CommandError> {
        let prior = self.recovered().await?.clone();
        let settings = self.settings.clone();
        let write_side = &settings.write_side;
        let prior_meta = prior.meta.clone().unwrap_or_default();

        let started = Instant::now();
        let reply = settings
            .handler
            .handle_command(
                HandleCommandRequest {
                    command: Some(command.command),
                    prior_state: prior.state.clone(),
                    prior_event_meta: Some(prior_meta.clone()),
                },
                command.propagated_headers,
            )
            .instrument(info_span!("write_handler", method = "HandleCommand"))
            .await;
        record_call("HandleCommand", &reply, started);
        let reply = reply.map_err(CommandError::Handler)?;

        #[allow(deprecated)]
        let events: Vec<Any> = if reply.events.is_empty() { reply.event.into_iter().collect() } else { reply.events };
        let events: Vec<Any> = events.into_iter().filter(|e| !is_empty_any(e)).collect();
        if events.is_empty() {
            return Ok((prior, false));
        }
        if write_side.proto_validation {
            for event in &events {
                if !type_allowed(&event.type_url, &write_side.event_protos) {
                    return Err(CommandError::InvalidArgument(format!("invalid event: {}", event.type_url)));
                }
            }
        }

        let first = u64::from(prior_meta.revision_number) + 1;
        let last = first + events.len() as u64 - 1;
        if last > u64::from(u32::MAX) {
            return Err(CommandError::FailedPrecondition(format!(
                "entity {:?} has reached the largest revision number a MetaData can carry",
                self.entity_id
            )));
        }
        let data =
            HashMap::from([(PERSISTED_HEADERS_KEY.to_string(), persisted_headers_any(&command.persisted_headers))]);
        let revision_date = prost_types::Timestamp::from(SystemTime::now());

        let mut state = prior.state;
        let mut rows = Vec::with_capacity(events.len());
        let mut wrappers = Vec::with_capacity(events.len());
        let mut meta = prior_meta;
        for (revision, event) in (first..=last).zip(events) {
            meta = MetaData {
                entity_id: self.entity_id.clone(),
                revision_number: revision as u32,
                revision_date: Some(revision_date),
                data: data.clone(),
                headers: command.persisted_headers.clone(),
            };
            let started = Instant::now();
            let reply = settings
                .handler
                .handle_event(HandleEventRequest {
                    event: Some(event.clone()),
                    prior_state: state,
                    event_meta: Some(meta.clone()),
                })
                .instrument(info_span!("write_handler", method = "HandleEvent"))
                .await;
            record_call("HandleEvent", &reply, started);
            let resulting = reply
                .map_err(CommandError::Handler)?
                .resulting_state
                .ok_or_else(|| CommandError::InvalidArgument("event handler replied with empty state".into()))?;
            if write_side.proto_validation && !type_allowed(&resulting.type_url, &write_side.state_protos) {
                return Err(CommandError::InvalidArgument(format!("invalid state: {}", resulting.type_url)));
            }
            let mut wrapper =
                EventWrapper { event: Some(event), resulting_state: Some(resulting), meta: Some(meta.clone()) };
            rows.push(PersistedEvent { revision, payload: Bytes::from(wrapper.encode_to_vec()) });
            // Keep the wrapper for subscribers only when there are any: otherwise the state moves, uncopied.
            if settings.subscriptions.is_some() {
                state = wrapper.resulting_state.clone();
                wrappers.push(wrapper);
            } else {
                state = wrapper.resulting_state.take();
            }
        }

        let append = settings.store.append(&self.entity_id, self.shard, &rows);
        if let Err(e) = append.instrument(info_span!("journal_append", events = rows.len())).await {
            // The write may or may not have committed: recover from the journal on the next message.
            warn!(entity_id = %self.entity_id, error = %e, "journal write failed; the entity will recover");
            self.current = None;
            return Err(e.into());
        }
        settings.journal_signals.notify(self.shard);
        if let Some(hub) = &settings.subscriptions {
            for wrapper in wrappers {
                hub.publish(Published {
                    entity_id: self.entity_id.clone(),
                    event: wrapper.event,
                    resulting_state: wrapper.resulting_state,
                    meta: wrapper.meta,
                });
            }
        }
        let new_state = StateWrapper { state, meta: Some(meta) };
        self.current = Some(new_state.clone());
        let snapshots = &settings.snapshots;
        let due = !snapshots.disabled && last / snapshots.frequency > (first - 1) / snapshots.frequency;
        Ok((new_state, due))
    }

    /// Saves a snapshot of the current state, applies retention and, if configured, journal compaction.
    /// A failure here loses nothing (the events are in the journal) and is only logged.
    async fn snapshot(&mut self) {
        let Some(current) = &self.current else { return };
        let revision = current.meta.as_ref().map_or(0, |m| u64::from(m.revision_number));
        let store = &self.settings.store;
        let snapshot = Snapshot { revision, payload: Bytes::from(current.encode_to_vec()) };
        let outcome = async {
            store.save_snapshot(&self.entity_id, &snapshot).await?;
            let oldest_kept = store.retain_snapshots(&self.entity_id, self.settings.snapshots.retain as usize).await?;
            if let (true, Some(oldest)) = (self.settings.snapshots.delete_events, oldest_kept) {
                // Keep the newest event row: the journal's unique key is what stops a stale writer from
                // appending a revision again, and it can only see rows that are still there.
                let up_to = oldest.min(revision.saturating_sub(1));
                if up_to > 0 {
                    store.delete_events_up_to(&self.entity_id, up_to).await?;
                }
            }
            Ok::<_, crate::persistence::Error>(())
        }
        .await;
        crate::metrics::get().snapshot(outcome.is_ok());
        match outcome {
            Ok(()) => debug!(entity_id = %self.entity_id, revision, "snapshot saved"),
            Err(e) => warn!(entity_id = %self.entity_id, revision, error = %e, "snapshot failed"),
        }
    }
}

/// Records a write handler call's outcome and latency.
fn record_call<T>(method: &'static str, reply: &Result<T, tonic::Status>, started: Instant) {
    let code = reply.as_ref().map_or_else(|status| status.code(), |_| tonic::Code::Ok);
    crate::metrics::get().handler_call(method, crate::metrics::code_label(code), started.elapsed());
}

/// Rebuilds an entity's state: latest snapshot, then the later events.
pub async fn recover(store: &dyn Store, entity_id: &str) -> Result<StateWrapper, CommandError> {
    let mut current = initial_state(entity_id);
    let mut after = 0;
    if let Some(snapshot) = store.latest_snapshot(entity_id).await? {
        current = StateWrapper::decode(snapshot.payload).map_err(|e| corrupt(entity_id, "snapshot", e))?;
        after = snapshot.revision;
    }
    for row in store.read_events(entity_id, after).await? {
        let event = EventWrapper::decode(row.payload).map_err(|e| corrupt(entity_id, "event", e))?;
        current = StateWrapper { state: event.resulting_state, meta: event.meta };
    }
    Ok(current)
}

fn corrupt(entity_id: &str, what: &str, e: prost::DecodeError) -> CommandError {
    crate::persistence::Error::Backend(format!("stored {what} of entity {entity_id:?} does not decode: {e}")).into()
}

/// The state of an entity that has never been written: `google.protobuf.Empty`, revision 0.
pub fn initial_state(entity_id: &str) -> StateWrapper {
    StateWrapper {
        state: Some(Any { type_url: EMPTY_TYPE_URL.into(), value: Vec::new() }),
        meta: Some(MetaData { entity_id: entity_id.into(), ..Default::default() }),
    }
}

fn is_empty_any(any: &Any) -> bool {
    any.type_url.is_empty() && any.value.is_empty()
}

/// Compares the part of `type_url` after its last `/` with the allowed fully-qualified names.
fn type_allowed(type_url: &str, allowed: &[String]) -> bool {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    allowed.iter().any(|a| a == name)
}

fn persisted_headers_any(headers: &[Header]) -> Any {
    let headers = plugin::Headers {
        headers: headers
            .iter()
            .map(|h| plugin::Header {
                key: h.key.clone(),
                value: h.value.as_ref().map(|v| match v {
                    header::Value::StringValue(s) => plugin::header::Value::StringValue(s.clone()),
                    header::Value::BytesValue(b) => plugin::header::Value::BytesValue(b.clone()),
                }),
            })
            .collect(),
    };
    Any { type_url: PERSISTED_HEADERS_TYPE_URL.into(), value: headers.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_check_uses_the_name_after_the_last_slash() {
        let allowed = vec!["bank.Account".to_string()];
        assert!(type_allowed("type.googleapis.com/bank.Account", &allowed));
        assert!(type_allowed("example.com/x/y/bank.Account", &allowed));
        assert!(!type_allowed("type.googleapis.com/bank.Other", &allowed));
        assert!(!type_allowed("type.googleapis.com/bank.Account2", &allowed));
    }

    #[test]
    fn initial_state_is_empty_at_revision_zero() {
        let s = initial_state("e1");
        assert_eq!(s.state.unwrap().type_url, "type.googleapis.com/google.protobuf.Empty");
        let meta = s.meta.unwrap();
        assert_eq!((meta.entity_id.as_str(), meta.revision_number), ("e1", 0));
        assert!(meta.revision_date.is_none());
    }
}
