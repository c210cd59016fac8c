//! The single-node write path against a real node, a real (scriptable) write handler and a real PostgreSQL:
//! spec §3.2 (ProcessCommand step by step), §3.3 (errors and status mapping), §3.4 (validation), plus recovery,
//! snapshots, passivation, bad input, health/reflection and the embedded store.
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`); each test gets its own
//! schema and its own entities.

mod common;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use prost::Message as _;
use prost_types::Any;
use tonic::metadata::{KeyRef, MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use regent::actors::shard_of;
use regent::config::Backend;
use regent::proto::chief_of_state::plugins::persisted_headers::v1 as plugin;
use regent::proto::chief_of_state::v1::{EventWrapper, Header, MetaData, ProcessCommandRequest, header};

use support::handler::{
    self, APPENDED_TYPE, EMPTY_TYPE, LIST_TYPE, TRAILER_KEY, TRAILER_VALUE, appended, command, list,
};
use support::{TestNode, entity, eventually};

const PERSISTED_HEADERS_KEY: &str = "persisted_headers.v1";
const PERSISTED_HEADERS_TYPE: &str = "type.googleapis.com/chief_of_state.plugins.persisted_headers.v1.Headers";

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// The items of a `test.List` state.
fn items(state: Option<&Any>) -> Vec<String> {
    let state = state.expect("a state");
    assert_eq!(state.type_url, LIST_TYPE, "not a list state: {state:?}");
    let text = String::from_utf8(state.value.clone()).unwrap();
    if text.is_empty() { Vec::new() } else { text.split(',').map(str::to_string).collect() }
}

fn revision(meta: Option<&MetaData>) -> u32 {
    meta.expect("a meta").revision_number
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, message: &str) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert_eq!(status.message(), message, "unexpected message: {status:?}");
    status
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

async fn append_each(t: &TestNode, id: &str, items: &[String]) -> Vec<u32> {
    let mut revisions = Vec::new();
    for item in items {
        let reply = t.process(id, command("Append", item)).await.unwrap_or_else(|e| panic!("append {item}: {e:?}"));
        revisions.push(revision(reply.meta.as_ref()));
    }
    revisions
}

async fn channel_to(t: &TestNode) -> Channel {
    Channel::from_shared(format!("http://{}", t.node().local_addr())).unwrap().connect().await.unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// §3.2 ProcessCommand / GetState

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_command_persists_one_event_and_get_state_returns_it() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("happy");
    let before = SystemTime::now();
    let reply = t.process(&id, command("Append", "a")).await.expect("ProcessCommand");
    let after = SystemTime::now();

    let meta = reply.meta.clone().expect("meta");
    assert_eq!(meta.entity_id, id);
    assert_eq!(meta.revision_number, 1);
    let date = SystemTime::try_from(meta.revision_date.expect("revision_date is set")).unwrap();
    assert!(
        date >= before - Duration::from_secs(2) && date <= after + Duration::from_secs(2),
        "revision_date {date:?} is not the server's now"
    );
    assert_eq!(reply.state, Some(list(&["a"])));
    assert!(meta.headers.is_empty(), "no persisted header configured: {:?}", meta.headers);
    // Decision 8: the plugin entry is there even with no persisted header.
    let plugin_any = meta.data.get(PERSISTED_HEADERS_KEY).expect("meta.data[persisted_headers.v1]");
    assert_eq!(plugin_any.type_url, PERSISTED_HEADERS_TYPE);
    assert!(plugin::Headers::decode(plugin_any.value.as_slice()).unwrap().headers.is_empty());

    let got = t.get(&id).await.expect("GetState");
    assert_eq!(got.state, reply.state);
    assert_eq!(got.meta, reply.meta);

    let rows = t.journal(&id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].revision, 1);
    assert_eq!(rows[0].shard, i64::from(shard_of(&id, 16)));
    assert_eq!(
        rows[0].event,
        EventWrapper { event: Some(appended("a")), resulting_state: reply.state.clone(), meta: reply.meta.clone() }
    );

    let commands = t.log().commands(&id);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].0.command, Some(command("Append", "a")), "the command reaches the handler as sent");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_entity_id_is_invalid_argument_for_both_rpcs() {
    let t = TestNode::start(|_| {}).await;
    assert_status(t.process("", command("Append", "a")).await, Code::InvalidArgument, "empty entity ID");
    assert_status(t.get("").await, Code::InvalidArgument, "empty entity ID");
    assert!(t.log().all().is_empty(), "the handler must not be called: {:?}", t.log().all());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_state_of_unknown_entity_is_not_found() {
    let t = TestNode::start(|_| {}).await;
    assert_status(t.get(&entity("nobody")).await, Code::NotFound, "");
    assert!(t.log().all().is_empty(), "GetState never calls the handler");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_on_new_entity_replies_initial_state_and_entity_stays_not_found() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("noop-new");
    let reply = t.process(&id, command("Noop", "")).await.expect("no-op");
    assert_eq!(reply.state, Some(Any { type_url: EMPTY_TYPE.into(), value: vec![] }));
    let meta = reply.meta.expect("meta");
    assert_eq!((meta.entity_id.as_str(), meta.revision_number), (id.as_str(), 0));
    assert!(meta.revision_date.is_none());
    assert_status(t.get(&id).await, Code::NotFound, "");
    assert!(t.journal(&id).await.is_empty());
    assert!(t.log().events(&id).is_empty(), "no event, no HandleEvent");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_on_existing_entity_replies_current_state_unchanged() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("noop-old");
    let first = t.process(&id, command("Append", "a")).await.unwrap();
    let noop = t.process(&id, command("Noop", "")).await.unwrap();
    assert_eq!(noop.state, first.state);
    assert_eq!(noop.meta, first.meta, "meta (revision, date, headers) unchanged by a no-op");
    assert_eq!(t.journal_revisions(&id).await, vec![1]);
    let next = t.process(&id, command("Append", "b")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 2);
    let got = t.get(&id).await.unwrap();
    assert_eq!(items(got.state.as_ref()), ["a", "b"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_events_are_applied_in_order_with_one_revision_each() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("multi");
    t.process(&id, command("Append", "a")).await.unwrap();
    let reply = t.process(&id, command("Append", "b,c,d")).await.expect("three events");
    assert_eq!(revision(reply.meta.as_ref()), 4, "the reply carries the last event's meta");
    assert_eq!(items(reply.state.as_ref()), ["a", "b", "c", "d"]);

    // Each HandleEvent saw the state produced by the previous one and its own revision.
    let events = t.log().events(&id);
    assert_eq!(events.len(), 4);
    for (i, (request, _)) in events[1..].iter().enumerate() {
        let expected_prior: Vec<&str> = ["a", "b", "c", "d"][..=i].to_vec();
        assert_eq!(request.prior_state, Some(list(&expected_prior)), "HandleEvent #{}", i + 2);
        assert_eq!(request.event, Some(appended(["b", "c", "d"][i])));
        let meta = request.event_meta.as_ref().unwrap();
        assert_eq!(meta.revision_number, 2 + i as u32);
        assert_eq!(meta.entity_id, id);
    }

    let rows = t.journal(&id).await;
    assert_eq!(rows.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for (row, n) in rows.iter().zip(1..) {
        assert_eq!(revision(row.event.meta.as_ref()), n as u32);
        assert_eq!(items(row.event.resulting_state.as_ref()).len(), n, "row {n} holds the state after event {n}");
    }
    assert_eq!(rows[3].event.meta, reply.meta);
    let got = t.get(&id).await.unwrap();
    assert_eq!((got.state, got.meta), (reply.state, reply.meta));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_event_field_alone_is_one_event() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("legacy");
    let reply = t.process(&id, command("Legacy", "a")).await.unwrap();
    assert_eq!(revision(reply.meta.as_ref()), 1);
    assert_eq!(items(reply.state.as_ref()), ["a"]);
    assert_eq!(t.journal(&id).await[0].event.event, Some(appended("a")));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_field_wins_over_deprecated_event_and_empty_anys_are_dropped() {
    let t = TestNode::start(|_| {}).await;
    let both = entity("both");
    let reply = t.process(&both, command("Both", "b")).await.unwrap();
    assert_eq!(revision(reply.meta.as_ref()), 1);
    assert_eq!(items(reply.state.as_ref()), ["b"], "`event` is ignored when `events` is non-empty");
    assert_eq!(t.log().events(&both).len(), 1);

    let empties = entity("empties");
    let reply = t.process(&empties, command("WithEmpty", "x")).await.unwrap();
    assert_eq!(revision(reply.meta.as_ref()), 1, "empty Anys in `events` are dropped");
    assert_eq!(items(reply.state.as_ref()), ["x"]);
    assert_eq!(t.log().events(&empties).len(), 1);
    assert_eq!(t.journal_revisions(&empties).await, vec![1]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_sees_empty_initial_state_for_a_new_entity() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("initial");
    t.process(&id, command("Append", "a")).await.unwrap();
    let commands = t.log().commands(&id);
    let request = &commands[0].0;
    assert_eq!(request.prior_state, Some(Any { type_url: EMPTY_TYPE.into(), value: vec![] }));
    let meta = request.prior_event_meta.as_ref().expect("prior_event_meta is set");
    assert_eq!(meta.entity_id, id);
    assert_eq!(meta.revision_number, 0);
    assert!(meta.revision_date.is_none());
    assert!(meta.headers.is_empty());
    let events = t.log().events(&id);
    assert_eq!(events[0].0.prior_state, Some(Any { type_url: EMPTY_TYPE.into(), value: vec![] }));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_to_one_entity_get_gapless_revisions() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("concurrent");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut client = t.client.clone();
            let request =
                ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", &i.to_string())) };
            tokio::spawn(async move { client.process_command(request).await.map(tonic::Response::into_inner) })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap().expect("every concurrent command succeeds"));
    }
    let final_state = t.get(&id).await.unwrap();
    let all = items(final_state.state.as_ref());
    assert_eq!(revision(final_state.meta.as_ref()), 64);
    assert_eq!(all.len(), 64);
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), numbered(64).into_iter().collect::<BTreeSet<_>>());

    let mut revisions: Vec<u32> = replies.iter().map(|r| revision(r.meta.as_ref())).collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=64).collect::<Vec<_>>());
    // Strictly serial: the state replied at revision r is the first r items of the final list.
    for reply in &replies {
        let r = revision(reply.meta.as_ref()) as usize;
        assert_eq!(items(reply.state.as_ref()), all[..r].to_vec());
    }
    assert_eq!(t.journal_revisions(&id).await, (1..=64).collect::<Vec<i64>>());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_entity_queue_answers_resource_exhausted_and_loses_nothing() {
    let t = TestNode::start(|c| c.entities.queue_limit = 4).await;
    let id = entity("hot");
    // The entity is busy with a slow command while 16 more arrive: 4 may wait, the rest are refused at once.
    let busy = {
        let mut client = t.client.clone();
        let request = ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Sleep", "1500")) };
        tokio::spawn(async move { client.process_command(request).await })
    };
    eventually("the slow command to reach the handler", Duration::from_secs(5), || async {
        t.log().commands(&id).first().map(|_| ())
    })
    .await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut client = t.client.clone();
            let request =
                ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", &i.to_string())) };
            tokio::spawn(async move { client.process_command(request).await.map(tonic::Response::into_inner) })
        })
        .collect();
    let (mut acked, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(reply) => acked.push(reply),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("REGENT_ENTITY_QUEUE_LIMIT"), "{:?}", status.message());
                refused += 1;
            }
        }
    }
    busy.await.unwrap().expect("the slow command succeeds");
    assert!(refused >= 1, "a queue of 4 took all 16 commands");
    assert!(acked.len() >= 4, "only {} of the 4 queued commands were answered OK", acked.len());
    assert_eq!(acked.len() + refused, 16);

    // Nothing refused was stored, nothing acknowledged was lost, and the entity still serves.
    let next = t.process(&id, command("Append", "after")).await.expect("the entity serves again");
    let stored = revision(next.meta.as_ref());
    assert_eq!(stored as usize, 1 + acked.len() + 1, "slept + acknowledged + the last one");
    assert_eq!(t.journal_revisions(&id).await, (1..=i64::from(stored)).collect::<Vec<_>>());
    let all = items(next.state.as_ref());
    for reply in &acked {
        let last = items(reply.state.as_ref()).last().cloned().expect("an appended item");
        assert!(all.contains(&last), "acknowledged {last:?} is missing from {all:?}");
    }
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// §3.3 errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_is_relayed_with_code_message_details_and_trailer() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("fail");
    t.process(&id, command("Append", "a")).await.unwrap();
    for code in [
        Code::NotFound,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::Aborted,
        Code::Internal,
    ] {
        let message = format!("business rule {code:?} says no");
        let status = t
            .process(&id, command("Fail", &format!("{}:{message}", code as i32)))
            .await
            .expect_err("the handler failed");
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(status.message(), message);
        assert_eq!(status.details(), handler::fail_details(code as i32, &message).as_slice(), "details relayed");
        assert_eq!(
            status.metadata().get(TRAILER_KEY).map(|v| v.to_str().unwrap().to_string()),
            Some(TRAILER_VALUE.to_string()),
            "custom trailer relayed: {:?}",
            status.metadata()
        );
    }
    assert_eq!(t.journal_revisions(&id).await, vec![1], "a failed command persists nothing");
    let next = t.process(&id, command("Append", "b")).await.expect("the entity still serves");
    assert_eq!(revision(next.meta.as_ref()), 2);
    assert_eq!(items(next.state.as_ref()), ["a", "b"]);

    // On a new entity a handler error leaves it nonexistent.
    let fresh = entity("fail-new");
    t.process(&fresh, command("Fail", "5:no such account")).await.expect_err("fails");
    assert_status(t.get(&fresh).await, Code::NotFound, "");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_handler_error_is_relayed_and_no_event_of_the_command_is_persisted() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("fail-event");
    t.process(&id, command("Append", "a")).await.unwrap();
    // Two events: the first applies fine, the second fails: neither may be persisted (atomic command).
    assert_status(
        t.process(&id, command("Append", "b,!fail")).await,
        Code::FailedPrecondition,
        "event handler refuses this event",
    );
    assert_status(
        t.process(&id, command("FailEvent", "")).await,
        Code::FailedPrecondition,
        "event handler refuses this event",
    );
    assert_eq!(t.journal_revisions(&id).await, vec![1]);
    assert_eq!(items(t.get(&id).await.unwrap().state.as_ref()), ["a"]);

    let next = t.process(&id, command("Append", "c")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 2);
    assert_eq!(items(next.state.as_ref()), ["a", "c"]);
    let last_command = t.log().commands(&id).pop().unwrap().0;
    assert_eq!(last_command.prior_state, Some(list(&["a"])));
    assert_eq!(revision(last_command.prior_event_meta.as_ref()), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_slower_than_calls_timeout_is_deadline_exceeded() {
    let t = TestNode::start(|c| c.write_side.calls_timeout_ms = 300).await;
    let id = entity("slow");
    t.process(&id, command("Append", "a")).await.unwrap();
    let started = Instant::now();
    let status = t.process(&id, command("Sleep", "1500")).await.expect_err("too slow");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(1400), "answered after {:?}", started.elapsed());
    assert_eq!(t.journal_revisions(&id).await, vec![1]);

    let next = t.process(&id, command("Append", "b")).await.expect("the entity still serves");
    assert_eq!(revision(next.meta.as_ref()), 2, "the slow command's event must never be persisted");
    assert_eq!(items(next.state.as_ref()), ["a", "b"]);
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_timeout_is_internal_and_the_command_may_still_complete() {
    let t = TestNode::start(|c| {
        c.entities.command_handler_timeout_secs = 1;
        c.write_side.calls_timeout_ms = 10_000;
    })
    .await;
    let id = entity("ask");
    let started = Instant::now();
    let status = t.process(&id, command("Sleep", "2000")).await.expect_err("ask timeout");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().to_lowercase().contains("ask timed out"), "message: {:?}", status.message());
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1900),
        "answered after {elapsed:?}"
    );

    // As in CoS, the entity finishes the command after the caller gave up.
    let got = eventually("the slow command to be applied", Duration::from_secs(8), || async {
        t.get(&id).await.ok().filter(|g| revision(g.meta.as_ref()) == 1)
    })
    .await;
    assert_eq!(items(got.state.as_ref()), ["slept"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_down_is_unavailable_and_node_recovers_when_it_is_back() {
    let mut t = TestNode::start(|c| c.write_side.calls_timeout_ms = 2_000).await;
    let id = entity("down");
    t.process(&id, command("Append", "a")).await.unwrap();
    t.handler.stop().await;

    let status = t.process(&id, command("Append", "b")).await.expect_err("handler is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // GetState needs no handler.
    let got = t.get(&id).await.expect("GetState while the handler is down");
    assert_eq!((revision(got.meta.as_ref()), items(got.state.as_ref())), (1, vec!["a".to_string()]));
    assert_status(t.get(&entity("other")).await, Code::NotFound, "");
    assert_eq!(t.journal_revisions(&id).await, vec![1]);

    t.handler.restart().await;
    let reply = eventually("the node to reach the handler again", Duration::from_secs(10), || async {
        match t.process(&id, command("Append", "b")).await {
            Ok(reply) => Some(reply),
            Err(status) if status.code() == Code::Unavailable => None,
            Err(status) => panic!("unexpected {status:?}"),
        }
    })
    .await;
    assert_eq!(revision(reply.meta.as_ref()), 2);
    assert_eq!(items(reply.state.as_ref()), ["a", "b"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_on_a_closed_port_is_unavailable() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let t = TestNode::start(|c| {
        c.write_side.port = closed;
        c.write_side.calls_timeout_ms = 2_000;
    })
    .await;
    let id = entity("closed");
    for _ in 0..2 {
        let status = t.process(&id, command("Append", "a")).await.expect_err("nobody listens");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_status(t.get(&id).await, Code::NotFound, "");
    assert!(t.journal(&id).await.is_empty());
    t.shutdown().await;
}

/// COS_GRPC_KEEPALIVE_*: a handler connection whose link goes silent (packets dropped, nothing reset) is closed
/// when a PING goes unanswered, so the call on it fails `UNAVAILABLE` long before its 30 s deadline (without a
/// keepalive it would end `DEADLINE_EXCEEDED`), and once the link is back the next call connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_closes_a_silent_handler_connection_and_the_next_call_reconnects() {
    let localhost: std::net::IpAddr = [127, 0, 0, 1].into();
    let proxy_port = support::nodes::free_port();
    let t = TestNode::start(|c| {
        c.write_side.port = proxy_port;
        c.write_side.calls_timeout_ms = 30_000;
        c.entities.command_handler_timeout_secs = 40;
        c.grpc_client.keepalive_enabled = true;
        c.grpc_client.keepalive_time_ms = 300;
        c.grpc_client.keepalive_timeout_ms = 2_000;
        c.grpc_client.keepalive_without_calls = true;
    })
    .await;
    let mut proxy = support::fault_proxy::FaultProxy::new();
    proxy
        .add_link("handler", localhost, std::net::SocketAddr::new(localhost, proxy_port), t.handler.addr())
        .await
        .expect("the proxy in front of the handler");
    let id = entity("keepalive");
    t.process(&id, command("Append", "a")).await.expect("through the proxy");
    // Answered PINGs keep an idle connection: still the first one after several intervals.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    t.process(&id, command("Append", "a2")).await.expect("on the same connection");
    assert_eq!(proxy.connections().values().sum::<usize>(), 1, "{:?}", proxy.connections());

    proxy.block_all_to("handler");
    let started = Instant::now();
    let status = t.process(&id, command("Append", "b")).await.expect_err("the link is silent");
    assert_eq!(status.code(), Code::Unavailable, "after {:?}: {status:?}", started.elapsed());
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2]);

    proxy.heal();
    let reply = eventually("a new connection to the handler", Duration::from_secs(10), || async {
        match t.process(&id, command("Append", "b")).await {
            Ok(reply) => Some(reply),
            Err(status) if status.code() == Code::Unavailable => None,
            Err(status) => panic!("unexpected {status:?}"),
        }
    })
    .await;
    assert_eq!(revision(reply.meta.as_ref()), 3);
    assert_eq!(items(reply.state.as_ref()), ["a", "a2", "b"]);
    assert!(proxy.connections().values().sum::<usize>() >= 2, "{:?}", proxy.connections());
    t.shutdown().await;
}

/// COS_WRITE_SIDE_BREAKER_*: failed calls in a row open the circuit; then commands fail at once with CoS's
/// `INTERNAL` "Circuit Breaker is open" without reaching the handler, until one trial call after the reset timeout
/// closes it. Rejections by the handler (`INVALID_ARGUMENT` ...) do not count (docs/configuration.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_side_breaker_opens_fails_fast_and_closes_after_a_trial() {
    let t = TestNode::start(|c| {
        c.write_side.breaker.enabled = true;
        c.write_side.breaker.max_failures = 2;
        c.write_side.breaker.reset_timeout_ms = 1_000;
    })
    .await;
    let id = entity("breaker");
    t.process(&id, command("Append", "a")).await.unwrap();
    for _ in 0..3 {
        assert_status(t.process(&id, command("Fail", "3:no such thing")).await, Code::InvalidArgument, "no such thing");
    }
    for _ in 0..2 {
        assert_status(t.process(&id, command("Fail", "14:overloaded")).await, Code::Unavailable, "overloaded");
    }
    let calls = t.log().commands(&id).len();
    assert_status(t.process(&id, command("Append", "b")).await, Code::Internal, regent::grpc::breaker::OPEN_MESSAGE);
    assert_eq!(t.log().commands(&id).len(), calls, "an open circuit does not call the handler");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reply = t.process(&id, command("Append", "b")).await.expect("the trial call after the reset timeout");
    assert_eq!(revision(reply.meta.as_ref()), 2);
    assert_status(t.process(&id, command("Fail", "14:once")).await, Code::Unavailable, "once");
    let reply = t.process(&id, command("Append", "c")).await.expect("closed: one failure is below the limit");
    assert_eq!(items(reply.state.as_ref()), ["a", "b", "c"]);
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2, 3]);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// §3.4 validation, §3.2 step 7 empty state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_rejects_unlisted_event_and_state_types() {
    let t = TestNode::start(|c| {
        c.write_side.proto_validation = true;
        c.write_side.event_protos = vec!["test.Appended".into()];
        c.write_side.state_protos = vec!["test.List".into()];
    })
    .await;
    let id = entity("valid");
    assert_eq!(revision(t.process(&id, command("Append", "a")).await.unwrap().meta.as_ref()), 1);

    assert_status(
        t.process(&id, command("BadEvent", "")).await,
        Code::InvalidArgument,
        "invalid event: type.googleapis.com/test.Unlisted",
    );
    assert!(
        t.log().events(&id).iter().all(|(r, _)| r.event.as_ref().unwrap().type_url == APPENDED_TYPE),
        "an invalid event is never applied"
    );
    assert_status(
        t.process(&id, command("Emit", "type.googleapis.com/test.AppendedToo")).await,
        Code::InvalidArgument,
        "invalid event: type.googleapis.com/test.AppendedToo",
    );
    // Only the part after the last '/' counts.
    let custom = t.process(&id, command("Emit", "example.com/a/b/test.Appended")).await.expect("listed type");
    assert_eq!(revision(custom.meta.as_ref()), 2);

    assert_status(
        t.process(&id, command("BadState", "")).await,
        Code::InvalidArgument,
        "invalid state: type.googleapis.com/test.Unlisted",
    );
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2]);
    let next = t.process(&id, command("Append", "c")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 3);
    assert_eq!(items(next.state.as_ref()), ["a", "x", "c"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_off_accepts_any_type() {
    let t = TestNode::start(|c| {
        c.write_side.proto_validation = false;
        c.write_side.event_protos = vec!["other.Event".into()];
        c.write_side.state_protos = vec!["other.State".into()];
    })
    .await;
    let id = entity("novalid");
    let r1 = t.process(&id, command("BadEvent", "")).await.expect("any event type accepted");
    assert_eq!((revision(r1.meta.as_ref()), items(r1.state.as_ref())), (1, vec!["unlisted".to_string()]));
    let r2 = t.process(&id, command("BadState", "")).await.expect("any state type accepted");
    assert_eq!(revision(r2.meta.as_ref()), 2);
    assert_eq!(r2.state.unwrap().type_url, handler::UNLISTED_TYPE);
    assert_eq!(t.journal(&id).await[0].event.event.as_ref().unwrap().type_url, handler::UNLISTED_TYPE);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_handler_without_state_is_invalid_argument_and_persists_nothing() {
    let t = TestNode::start(|_| {}).await;
    let fresh = entity("nostate-new");
    assert_status(
        t.process(&fresh, command("EmptyState", "")).await,
        Code::InvalidArgument,
        "event handler replied with empty state",
    );
    assert_status(t.get(&fresh).await, Code::NotFound, "");
    assert!(t.journal(&fresh).await.is_empty());

    let id = entity("nostate-old");
    t.process(&id, command("Append", "a")).await.unwrap();
    assert_status(
        t.process(&id, command("EmptyState", "")).await,
        Code::InvalidArgument,
        "event handler replied with empty state",
    );
    assert_eq!(t.journal_revisions(&id).await, vec![1]);
    assert_eq!(revision(t.process(&id, command("Append", "b")).await.unwrap().meta.as_ref()), 2);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// §3.2 step 2, 4, 7: headers

/// The non-transport keys of a request's metadata.
fn app_keys(metadata: &MetadataMap) -> BTreeSet<String> {
    const TRANSPORT: &[&str] = &[
        "te",
        "content-type",
        "user-agent",
        "grpc-timeout",
        "grpc-accept-encoding",
        "grpc-encoding",
        "accept-encoding",
    ];
    metadata
        .keys()
        .map(|k| match k {
            KeyRef::Ascii(k) => k.as_str().to_string(),
            KeyRef::Binary(k) => k.as_str().to_string(),
        })
        .filter(|k| !TRANSPORT.contains(&k.as_str()))
        .collect()
}

fn with_headers(entity_id: &str, command: Any, headers: &[(&'static str, &[u8])]) -> Request<ProcessCommandRequest> {
    let mut request = Request::new(ProcessCommandRequest { entity_id: entity_id.into(), command: Some(command) });
    for (key, value) in headers {
        if key.ends_with("-bin") {
            request.metadata_mut().append_bin(*key, MetadataValue::from_bytes(value));
        } else {
            request.metadata_mut().append(*key, std::str::from_utf8(value).unwrap().parse().unwrap());
        }
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagated_headers_reach_handle_command_only() {
    let t = TestNode::start(|c| c.write_side.propagated_headers = vec!["x-trace".into(), "x-bin-bin".into()]).await;
    let id = entity("propagate");
    let request = with_headers(
        &id,
        command("EchoHeaders", ""),
        &[
            ("x-trace", b"t1"),
            ("x-other", b"not forwarded"),
            ("x-bin-bin", &[0, 1, 2, 255]),
            ("x-trace", b"t2"),
            ("x-bin-bin", b"second"),
            ("x-other-bin", &[9]),
        ],
    );
    let reply = t.process_request(request).await.expect("ProcessCommand");
    assert!(reply.meta.unwrap().headers.is_empty(), "propagated headers are not persisted");

    let commands = t.log().commands(&id);
    let seen = &commands[0].1;
    assert_eq!(app_keys(seen), BTreeSet::from(["x-trace".to_string(), "x-bin-bin".to_string()]), "{seen:?}");
    let trace: Vec<&str> = seen.get_all("x-trace").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(trace, ["t1", "t2"]);
    let bin: Vec<Vec<u8>> = seen.get_all_bin("x-bin-bin").iter().map(|v| v.to_bytes().unwrap().to_vec()).collect();
    assert_eq!(bin, [vec![0, 1, 2, 255], b"second".to_vec()]);

    let events = t.log().events(&id);
    let event_md = &events[0].1;
    assert!(app_keys(event_md).is_empty(), "HandleEvent gets no propagated header: {event_md:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_headers_are_stored_in_meta_headers_and_plugin_data() {
    let t = TestNode::start(|c| c.write_side.persisted_headers = vec!["x-user".into(), "x-token-bin".into()]).await;
    let id = entity("persist");
    let request = with_headers(
        &id,
        command("Append", "a"),
        &[("x-user", b"alice"), ("x-token-bin", &[0, 1]), ("x-other", b"no"), ("x-user", b"bob")],
    );
    let reply = t.process_request(request).await.expect("ProcessCommand");
    let expected = vec![
        Header { key: "x-user".into(), value: Some(header::Value::StringValue("alice".into())) },
        Header { key: "x-user".into(), value: Some(header::Value::StringValue("bob".into())) },
        Header { key: "x-token-bin".into(), value: Some(header::Value::BytesValue(vec![0, 1])) },
    ];
    let meta = reply.meta.clone().unwrap();
    assert_eq!(meta.headers, expected);
    let plugin_any = meta.data.get(PERSISTED_HEADERS_KEY).expect("meta.data[persisted_headers.v1]");
    assert_eq!(plugin_any.type_url, PERSISTED_HEADERS_TYPE);
    let decoded = plugin::Headers::decode(plugin_any.value.as_slice()).unwrap();
    let as_common: Vec<Header> = decoded
        .headers
        .into_iter()
        .map(|h| Header {
            key: h.key,
            value: h.value.map(|v| match v {
                plugin::header::Value::StringValue(s) => header::Value::StringValue(s),
                plugin::header::Value::BytesValue(b) => header::Value::BytesValue(b),
            }),
        })
        .collect();
    assert_eq!(as_common, expected, "the plugin entry holds the same headers");

    // Persisted, not propagated; HandleEvent's event_meta already carries them.
    let commands = t.log().commands(&id);
    assert!(app_keys(&commands[0].1).is_empty(), "{:?}", commands[0].1);
    assert_eq!(t.log().events(&id)[0].0.event_meta.as_ref().unwrap().headers, expected);
    assert_eq!(t.journal(&id).await[0].event.meta, reply.meta);
    assert_eq!(t.get(&id).await.unwrap().meta, reply.meta);

    // Every event of a command gets that command's headers.
    let reply = t.process_request(with_headers(&id, command("Append", "b,c"), &[("x-user", b"carol")])).await.unwrap();
    let carol = vec![Header { key: "x-user".into(), value: Some(header::Value::StringValue("carol".into())) }];
    assert_eq!(reply.meta.unwrap().headers, carol);
    let rows = t.journal(&id).await;
    assert_eq!(rows.len(), 3);
    assert!(rows[1..].iter().all(|r| r.event.meta.as_ref().unwrap().headers == carol), "{rows:?}");

    // A command without them: empty headers, and an empty plugin list.
    let reply = t.process(&id, command("Append", "d")).await.unwrap();
    let meta = reply.meta.unwrap();
    assert!(meta.headers.is_empty());
    let plugin_any = meta.data.get(PERSISTED_HEADERS_KEY).expect("still set with no header");
    assert!(plugin::Headers::decode(plugin_any.value.as_slice()).unwrap().headers.is_empty());
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// §3.6 snapshots, compaction, recovery, passivation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_state_with_snapshots_and_retention() {
    let mut t = TestNode::start(|c| {
        c.snapshots.frequency = 3;
        c.snapshots.retain = 2;
    })
    .await;
    let id = entity("recover");
    assert_eq!(append_each(&t, &id, &numbered(10)).await, (1..=10).collect::<Vec<_>>());
    let before = t.get(&id).await.unwrap();

    let snapshots = eventually("snapshots at 6 and 9", Duration::from_secs(5), || async {
        let s = t.snapshots(&id).await;
        (s.iter().map(|(r, _)| *r).collect::<Vec<_>>() == [6, 9]).then_some(s)
    })
    .await;
    let (_, at9) = &snapshots[1];
    assert_eq!(revision(at9.meta.as_ref()), 9);
    assert_eq!(items(at9.state.as_ref()), numbered(9));
    assert_eq!(t.journal_revisions(&id).await, (1..=10).collect::<Vec<i64>>(), "no compaction unless asked");

    t.restart().await;
    let after = t.get(&id).await.expect("GetState after restart");
    assert_eq!(revision(after.meta.as_ref()), 10);
    assert_eq!(items(after.state.as_ref()), numbered(10));
    assert_eq!(after.meta, before.meta);

    let next = t.process(&id, command("Append", "10")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 11);
    let last = t.log().commands(&id).pop().unwrap().0;
    assert_eq!(last.prior_state, before.state, "the handler sees the recovered state");
    assert_eq!(last.prior_event_meta, before.meta);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_starts_from_the_latest_snapshot() {
    let mut t = TestNode::start(|c| {
        c.snapshots.frequency = 3;
        c.snapshots.retain = 2;
    })
    .await;
    let id = entity("from-snap");
    append_each(&t, &id, &numbered(10)).await;
    eventually("snapshot at 9", Duration::from_secs(5), || async {
        t.snapshots(&id).await.iter().any(|(r, _)| *r == 9).then_some(())
    })
    .await;
    t.stop_node().await;

    // Make the snapshot recognisable and drop the event after it: recovery must start from the snapshot rather
    // than replay the journal.
    let (_, mut at9) = t.snapshots(&id).await.into_iter().find(|(r, _)| *r == 9).unwrap();
    at9.state = Some(list(&["from-snapshot"]));
    let payload = at9.encode_to_vec();
    let snapshots = t.table("snapshots");
    let journal = t.table("journal");
    t.execute(&format!("UPDATE {snapshots} SET payload = $1 WHERE entity_id = $2 AND revision = 9"), &[&payload, &id])
        .await;
    t.execute(&format!("DELETE FROM {journal} WHERE entity_id = $1 AND revision = 10"), &[&id]).await;

    t.start_node().await;
    let got = t.get(&id).await.unwrap();
    assert_eq!(revision(got.meta.as_ref()), 9);
    assert_eq!(items(got.state.as_ref()), ["from-snapshot"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_compaction_deletes_events_covered_by_retained_snapshots() {
    let mut t = TestNode::start(|c| {
        c.snapshots.frequency = 3;
        c.snapshots.retain = 2;
        c.snapshots.delete_events = true;
    })
    .await;
    let id = entity("compact");
    append_each(&t, &id, &numbered(10)).await;
    // Snapshots 3, 6, 9 → kept 6 and 9 → events up to 6 deleted.
    eventually("events up to 6 deleted", Duration::from_secs(5), || async {
        (t.journal_revisions(&id).await == [7, 8, 9, 10]).then_some(())
    })
    .await;
    let snapshots: Vec<i64> = t.snapshots(&id).await.iter().map(|(r, _)| *r).collect();
    assert_eq!(snapshots, [6, 9]);

    t.restart().await;
    let got = t.get(&id).await.unwrap();
    assert_eq!(revision(got.meta.as_ref()), 10);
    assert_eq!(items(got.state.as_ref()), numbered(10));
    let next = t.process(&id, command("Append", "10")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 11);
    assert_eq!(items(next.state.as_ref()), numbered(11));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_snapshots_write_none() {
    let t = TestNode::start(|c| {
        c.snapshots.frequency = 1;
        c.snapshots.disabled = true;
    })
    .await;
    let id = entity("nosnap");
    append_each(&t, &id, &numbered(3)).await;
    // GetState is processed after the entity's post-command snapshot step: a barrier.
    t.get(&id).await.unwrap();
    assert!(t.snapshots(&id).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entity_is_passivated_and_recovers_on_next_message() {
    let t = TestNode::start(|c| c.entities.passivation_idle_secs = 1).await;
    let id = entity("passivate");
    let first = t.process(&id, command("Append", "a")).await.unwrap();

    // Change the stored event behind the live entity's back: only a recovered (passivated) entity can see it.
    let tampered = EventWrapper {
        event: Some(appended("a")),
        resulting_state: Some(list(&["from-journal"])),
        meta: first.meta.clone(),
    };
    let journal = t.table("journal");
    let changed = t
        .execute(
            &format!("UPDATE {journal} SET payload = $1 WHERE entity_id = $2 AND revision = 1"),
            &[&tampered.encode_to_vec(), &id],
        )
        .await;
    assert_eq!(changed, 1);

    // Poll more slowly than the idle timeout, since each GetState counts as activity.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let got = t.get(&id).await.unwrap();
        if items(got.state.as_ref()) == ["from-journal"] {
            assert_eq!(got.meta, first.meta);
            break;
        }
        assert!(Instant::now() < deadline, "the idle entity was never passivated (state still {:?})", got.state);
    }

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let next = t.process(&id, command("Append", "b")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 2);
    assert_eq!(items(next.state.as_ref()), ["from-journal", "b"]);
    let last = t.log().commands(&id).pop().unwrap().0;
    assert_eq!(last.prior_state, Some(list(&["from-journal"])));
    assert_eq!(last.prior_event_meta, first.meta);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_reaches_the_handler_as_an_empty_any() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("nocommand");
    let request = Request::new(ProcessCommandRequest { entity_id: id.clone(), command: None });
    assert_status(t.process_request(request).await, Code::InvalidArgument, "unknown command type \"\"");
    assert_eq!(t.log().commands(&id)[0].0.command, Some(Any::default()));
    assert_status(t.get(&id).await, Code::NotFound, "");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_commands_are_relayed_and_the_node_keeps_serving() {
    let t = TestNode::start(|_| {}).await;
    let id = entity("garbage");
    let random: Vec<u8> = (0..16).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    let garbage = [
        Any { type_url: "\u{1}weird//type url/\\".into(), value: random.clone() },
        Any { type_url: "test.Append".into(), value: random.clone() },
        Any { type_url: String::new(), value: random.clone() },
        Any { type_url: "type.googleapis.com/test.Append".into(), value: vec![0xff, 0xfe, 0x00] },
        Any { type_url: "type.googleapis.com/test.Fail".into(), value: b"not a code".to_vec() },
    ];
    for any in garbage {
        let status = t.process(&id, any.clone()).await.expect_err("garbage");
        assert_eq!(status.code(), Code::InvalidArgument, "{any:?}: {status:?}");
    }
    assert!(t.journal(&id).await.is_empty());
    let reply = t.process(&id, command("Append", "a")).await.expect("the node still serves");
    assert_eq!(revision(reply.meta.as_ref()), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_the_node_keeps_serving() {
    let t = TestNode::start(|c| c.server.max_message_bytes = 64 * 1024).await;
    let id = entity("big");
    let huge = "x".repeat(100 * 1024);
    let status = t.process(&id, command("Append", &huge)).await.expect_err("bigger than max_message_bytes");
    assert_ne!(status.code(), Code::Ok);
    assert!(t.log().commands(&id).is_empty(), "the handler never sees it");

    // A state that grows past the limit on the handler side fails cleanly too.
    let big = "y".repeat(40 * 1024);
    assert_eq!(revision(t.process(&id, command("Append", &big)).await.unwrap().meta.as_ref()), 1);
    let status = t.process(&id, command("Append", &big)).await.expect_err("HandleEvent request too large");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(t.journal_revisions(&id).await, vec![1]);

    let other = entity("small");
    assert_eq!(revision(t.process(&other, command("Append", "a")).await.unwrap().meta.as_ref()), 1);
    assert_eq!(revision(t.get(&id).await.unwrap().meta.as_ref()), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_entity_ids_never_break_the_node() {
    let t = TestNode::start(|_| {}).await;
    let long = "L".repeat(1000);
    let ids = [
        "a\0b",
        long.as_str(),
        "😀 ünïcödé",
        " ",
        "../../etc/passwd",
        "'; DROP TABLE journal; --",
        "polygenelubricants",
    ];
    for id in ids {
        match t.process(id, command("Append", "a")).await {
            Ok(reply) => {
                assert_eq!(revision(reply.meta.as_ref()), 1, "{id:?}");
                assert_eq!(reply.meta.as_ref().unwrap().entity_id, id);
                let got = t.get(id).await.unwrap_or_else(|e| panic!("GetState {id:?}: {e:?}"));
                assert_eq!(got.meta, reply.meta, "{id:?}");
                let rows = t.journal(id).await;
                assert_eq!(rows.len(), 1, "{id:?}");
                assert_eq!(rows[0].shard, i64::from(shard_of(id, 16)), "{id:?}");
            }
            Err(status) => {
                // A clean refusal is acceptable; a crashed entity or connection is not.
                assert!(
                    !matches!(status.code(), Code::Unknown | Code::Unavailable),
                    "entity id {id:?} broke something: {status:?}"
                );
                eprintln!("entity id {id:?} refused: {status:?}");
            }
        }
    }
    let reply = t.process(&entity("after"), command("Append", "a")).await.expect("the node still serves");
    assert_eq!(revision(reply.meta.as_ref()), 1);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// health and reflection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let t = TestNode::start(|_| {}).await;
    let mut health = HealthClient::new(channel_to(&t).await);
    for service in ["", "chief_of_state.v1.ChiefOfStateService"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.expect("health check");
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving, "service {service:?}");
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service_and_its_file() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    async fn ask(client: &mut ServerReflectionClient<Channel>, request: MessageRequest) -> ServerReflectionResponse {
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        replies.message().await.unwrap().expect("one reflection reply")
    }

    let t = TestNode::start(|_| {}).await;
    let mut client = ServerReflectionClient::new(channel_to(&t).await);
    let reply = ask(&mut client, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a list of services: {reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "chief_of_state.v1.ChiefOfStateService"), "{names:?}");

    let reply =
        ask(&mut client, MessageRequest::FileContainingSymbol("chief_of_state.v1.ChiefOfStateService".into())).await;
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
        panic!("no file for the service: {reply:?}")
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .collect();
    assert!(
        files.iter().any(|f| f.service.iter().any(|s| s.name() == "ChiefOfStateService")),
        "{:?}",
        files.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// embedded store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_persists_across_restart() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().to_path_buf();
    let mut t = TestNode::start(move |c| {
        c.store.backend = Backend::Sqlite;
        c.store.data_dir = path;
    })
    .await;
    let id = entity("sqlite");
    let reply = t.process(&id, command("Append", "a,b")).await.expect("ProcessCommand on SQLite");
    assert_eq!(revision(reply.meta.as_ref()), 2);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_some(), "the store lives in data_dir");

    t.restart().await;
    let got = t.get(&id).await.expect("GetState after restart");
    assert_eq!((got.state.clone(), got.meta.clone()), (reply.state, reply.meta));
    let next = t.process(&id, command("Append", "c")).await.unwrap();
    assert_eq!(revision(next.meta.as_ref()), 3);
    assert_eq!(items(next.state.as_ref()), ["a", "b", "c"]);
    assert_eq!(t.log().commands(&id).pop().unwrap().0.prior_state, got.state);
    t.shutdown().await;
    drop(dir);
}

/// Two writers of one entity (two nodes on one database without a cluster, the worst case the cluster's fencing
/// exists for): the one whose view is stale loses the write race on the journal's key, answers ABORTED, never OK,
/// stores nothing, and its entity stops; its next command recovers from the journal and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_that_loses_a_write_race_never_acknowledges_and_recovers() {
    use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
    let t = TestNode::start(|_| {}).await;
    let other = regent::Node::start(t.config.clone()).await.expect("a second node on the same store");
    let mut other_client = ChiefOfStateServiceClient::connect(format!("http://{}", other.local_addr())).await.unwrap();
    let id = entity("race");
    t.process(&id, command("Append", "a")).await.unwrap();
    let request =
        |value: &str| ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", value)) };
    let b = other_client.process_command(request("b")).await.expect("the other node writes revision 2").into_inner();
    assert_eq!(revision(b.meta.as_ref()), 2);

    // The first node still believes the entity is at revision 1.
    let lost = t.process(&id, command("Append", "c")).await.expect_err("a stale writer is refused");
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert_eq!(t.journal_revisions(&id).await, vec![1, 2], "nothing of the refused command is stored");
    // The entity stopped; its next incarnation recovers revision 2 from the journal.
    let next = t.process(&id, command("Append", "d")).await.expect("the entity serves again");
    assert_eq!(revision(next.meta.as_ref()), 3);
    assert_eq!(items(next.state.as_ref()), ["a", "b", "d"]);
    other.shutdown().await.unwrap();
    t.shutdown().await;
}
