//! Subscriptions (`Subscribe`, `SubscribeAll`, `Unsubscribe`, `UnsubscribeAll`) against a real node and a real
//! PostgreSQL: spec §1.3, §3.7 and decision 7.
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`); each test gets its own
//! schema.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Streaming};

use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::*;

use support::handler::{appended, command, list};
use support::{TestNode, entity};

const WAIT: Duration = Duration::from_secs(20);
const DISABLED: &str = "Subscription is not enabled; configure subscription to use streaming";

async fn node(buffer: usize) -> TestNode {
    TestNode::start(|c| {
        c.entities.num_shards = 4;
        c.subscriptions.enabled = true;
        c.subscriptions.buffer = buffer;
    })
    .await
}

/// A client on its own connection (so that one stream's flow control never holds back another's).
async fn client(t: &TestNode) -> ChiefOfStateServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", t.node().local_addr())).unwrap().connect().await.unwrap();
    ChiefOfStateServiceClient::new(channel)
}

/// The next message of `stream`, within [`WAIT`].
async fn next<T>(stream: &mut Streaming<T>) -> Option<Result<T, tonic::Status>> {
    tokio::time::timeout(WAIT, stream.message()).await.expect("no message within the deadline").transpose()
}

async fn append(t: &TestNode, entity_id: &str, item: &str) -> u32 {
    t.process(entity_id, command("Append", item)).await.expect("ProcessCommand").meta.unwrap().revision_number
}

/// Subscribe(entity) streams exactly that entity's events, in order, after they are persisted (event, resulting
/// state, meta), with the subscription id echoed; Unsubscribe echoes the id and ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_one_entity_in_order_and_unsubscribe_ends_it() {
    let t = node(1024).await;
    let (e, other) = (entity("e"), entity("other"));
    let mut stream = client(&t)
        .await
        .subscribe(SubscribeRequest { entity_id: e.clone(), subscription_id: "sub-e".into() })
        .await
        .expect("Subscribe")
        .into_inner();
    for k in 1..=5 {
        append(&t, &other, &format!("o{k}")).await;
        assert_eq!(append(&t, &e, &k.to_string()).await, k);
    }
    let journal = t.journal(&e).await;
    for k in 1..=5u32 {
        let message = next(&mut stream).await.expect("a message").expect("not an error");
        assert_eq!(message.subscription_id, "sub-e");
        let meta = message.meta.expect("meta");
        assert_eq!((meta.entity_id.as_str(), meta.revision_number), (e.as_str(), k), "in order, only {e}");
        assert_eq!(message.event, Some(appended(&k.to_string())));
        let items: Vec<String> = (1..=k).map(|i| i.to_string()).collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        assert_eq!(message.resulting_state, Some(list(&items)));
        // Persisted before it was published.
        assert_eq!(journal[k as usize - 1].event.meta.as_ref(), Some(&meta));
    }
    let reply = t
        .client
        .clone()
        .unsubscribe(UnsubscribeRequest { subscription_id: "sub-e".into() })
        .await
        .expect("Unsubscribe")
        .into_inner();
    assert_eq!(reply.subscription_id, "sub-e");
    // The stream ends, with nothing of the other entity before the end.
    match next(&mut stream).await {
        None => {}
        Some(Ok(m)) => panic!("unexpected message after unsubscribe: {m:?}"),
        Some(Err(status)) => panic!("the stream should end cleanly, got {status:?}"),
    }
    // The id can be used again once unsubscribed.
    let again =
        client(&t).await.subscribe(SubscribeRequest { entity_id: e.clone(), subscription_id: "sub-e".into() }).await;
    assert!(again.is_ok(), "{again:?}");
    drop(again); // an open stream would hold the node's graceful shutdown (see node_shutdown_ends_open_subscriptions)
    t.shutdown().await;
}

/// An empty subscription id gets a server-generated UUID, repeated in every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subscription_id_gets_a_generated_uuid() {
    let t = node(1024).await;
    let e = entity("e");
    let mut stream = client(&t)
        .await
        .subscribe(SubscribeRequest { entity_id: e.clone(), subscription_id: String::new() })
        .await
        .expect("Subscribe")
        .into_inner();
    append(&t, &e, "a").await;
    append(&t, &e, "b").await;
    let first = next(&mut stream).await.unwrap().unwrap();
    let second = next(&mut stream).await.unwrap().unwrap();
    let id = uuid::Uuid::parse_str(&first.subscription_id).expect("a UUID");
    assert_eq!(second.subscription_id, id.to_string());
    let mut all = client(&t).await.subscribe_all(SubscribeAllRequest::default()).await.unwrap().into_inner();
    append(&t, &e, "c").await;
    let m = next(&mut all).await.unwrap().unwrap();
    let all_id = uuid::Uuid::parse_str(&m.subscription_id).expect("a UUID");
    assert_ne!(all_id, id, "a fresh UUID per subscription");
    assert_eq!(next(&mut stream).await.unwrap().unwrap().meta.unwrap().revision_number, 3);
    let reply = t.client.clone().unsubscribe(UnsubscribeRequest { subscription_id: id.to_string() }).await.unwrap();
    assert_eq!(reply.into_inner().subscription_id, id.to_string());
    assert!(next(&mut stream).await.is_none(), "ended by its generated id");
    let reply = t.client.clone().unsubscribe_all(UnsubscribeAllRequest { subscription_id: all_id.to_string() }).await;
    assert_eq!(reply.unwrap().into_inner().subscription_id, all_id.to_string());
    assert!(next(&mut all).await.is_none(), "ended by its generated id");
    t.shutdown().await;
}

/// SubscribeAll streams every entity's events (per-entity order); UnsubscribeAll echoes the id and ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_all_streams_every_event_and_unsubscribe_all_ends_it() {
    let t = node(1024).await;
    let mut stream = client(&t)
        .await
        .subscribe_all(SubscribeAllRequest { subscription_id: "all-1".into() })
        .await
        .expect("SubscribeAll")
        .into_inner();
    let entities: Vec<String> = (0..5).map(|_| entity("e")).collect();
    let mut writers = Vec::new();
    for id in entities.clone() {
        let mut c = t.client.clone();
        writers.push(tokio::spawn(async move {
            for k in 1..=10 {
                c.process_command(ProcessCommandRequest {
                    entity_id: id.clone(),
                    command: Some(command("Append", &k.to_string())),
                })
                .await
                .expect("ProcessCommand");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..50 {
        let m = next(&mut stream).await.expect("a message").expect("not an error");
        assert_eq!(m.subscription_id, "all-1");
        let meta = m.meta.unwrap();
        assert_eq!(m.event, Some(appended(&meta.revision_number.to_string())));
        seen.entry(meta.entity_id).or_default().push(meta.revision_number);
    }
    let expected: BTreeMap<String, Vec<u32>> = entities.iter().map(|e| (e.clone(), (1..=10).collect())).collect();
    assert_eq!(seen, expected, "every event, in order per entity");
    let reply = t
        .client
        .clone()
        .unsubscribe_all(UnsubscribeAllRequest { subscription_id: "all-1".into() })
        .await
        .expect("UnsubscribeAll")
        .into_inner();
    assert_eq!(reply.subscription_id, "all-1");
    assert!(next(&mut stream).await.is_none(), "UnsubscribeAll ends the stream");
    t.shutdown().await;
}

/// Validation: an entity id and a subscription id are required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_ids_are_invalid() {
    let t = node(1024).await;
    let mut c = client(&t).await;
    let status = c
        .subscribe(SubscribeRequest { entity_id: String::new(), subscription_id: "s".into() })
        .await
        .expect_err("entity_id is required");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "entity_id is required"));
    let status = c.unsubscribe(UnsubscribeRequest::default()).await.expect_err("subscription_id is required");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "subscription_id is required"));
    let status = c.unsubscribe_all(UnsubscribeAllRequest::default()).await.expect_err("subscription_id is required");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "subscription_id is required"));
    t.shutdown().await;
}

/// Subscriptions disabled (the default): every subscription call is UNIMPLEMENTED with CoS's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_subscriptions_are_unimplemented() {
    let t = TestNode::start(|c| c.entities.num_shards = 4).await;
    let mut c = client(&t).await;
    let e = entity("e");
    let statuses = [
        c.subscribe(SubscribeRequest { entity_id: e.clone(), subscription_id: "s".into() }).await.map(|_| ()),
        c.subscribe_all(SubscribeAllRequest { subscription_id: "s".into() }).await.map(|_| ()),
        c.unsubscribe(UnsubscribeRequest { subscription_id: "s".into() }).await.map(|_| ()),
        c.unsubscribe_all(UnsubscribeAllRequest { subscription_id: "s".into() }).await.map(|_| ()),
    ];
    for (i, outcome) in statuses.into_iter().enumerate() {
        let status = outcome.expect_err("disabled");
        assert_eq!((status.code(), status.message()), (Code::Unimplemented, DISABLED), "call {i}");
    }
    append(&t, &e, "a").await; // writes are unaffected
    t.shutdown().await;
}

/// A client whose HTTP/2 windows are small (64 KiB), so that a stream it does not read backs up at once.
async fn small_window_client(t: &TestNode) -> ChiefOfStateServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", t.node().local_addr()))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    ChiefOfStateServiceClient::new(channel)
}

/// A subscriber that does not read (buffer 8) while `EVENTS` events are written: writes keep succeeding, a fast
/// subscriber receives every event, and the slow one, when it reads again (at once, or one message at a time with
/// `read_pause` between), finds its stream ended with RESOURCE_EXHAUSTED after fewer than `EVENTS` events.
async fn slow_subscriber_is_dropped(read_pause: Duration) {
    const EVENTS: usize = 200;
    let t = node(8).await;
    let mut slow = small_window_client(&t)
        .await
        .subscribe_all(SubscribeAllRequest { subscription_id: "slow".into() })
        .await
        .expect("SubscribeAll")
        .into_inner();
    let mut fast = client(&t)
        .await
        .subscribe_all(SubscribeAllRequest { subscription_id: "fast".into() })
        .await
        .expect("SubscribeAll")
        .into_inner();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < EVENTS {
            let m =
                next(&mut fast).await.expect("the fast stream goes on").expect("the fast subscriber is not dropped");
            let meta = m.meta.unwrap();
            got.push((meta.entity_id, meta.revision_number));
        }
        got
    });
    // Events of a few hundred bytes, so that the slow stream's transport buffers fill quickly; 10 writers at once.
    let mut writers = Vec::new();
    for _ in 0..10 {
        let mut c = t.client.clone();
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for _ in 0..EVENTS / 10 {
                let id = entity("e");
                let request =
                    ProcessCommandRequest { entity_id: id.clone(), command: Some(command("Append", &"x".repeat(300))) };
                tokio::time::timeout(WAIT, c.process_command(request))
                    .await
                    .expect("writes are not held back by the slow subscriber")
                    .expect("ProcessCommand");
                written.push((id, 1));
            }
            written
        }));
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let got = tokio::time::timeout(WAIT, reader).await.expect("the fast subscriber got every event").unwrap();
    assert_eq!(got.len(), EVENTS, "no event twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), written, "the fast subscriber got every event");
    let mut received = 0;
    let status = loop {
        match next(&mut slow).await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("the slow stream ended cleanly after {received} of {EVENTS} events: no RESOURCE_EXHAUSTED"),
        }
        if !read_pause.is_zero() {
            tokio::time::sleep(read_pause).await; // a deliberately slow reader
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(received < EVENTS, "dropped before the end: got {received}");
    eprintln!("the slow subscriber got {received} of {EVENTS} events before RESOURCE_EXHAUSTED");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_without_slowing_writes_or_others() {
    slow_subscriber_is_dropped(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_reading_subscriber_is_told_it_was_dropped() {
    slow_subscriber_is_dropped(Duration::from_millis(20)).await;
}

/// Shutting a node down ends the open subscription streams (graceful shutdown must not wait for subscribers that
/// never leave).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shutdown_ends_open_subscriptions() {
    let mut t = node(1024).await;
    let e = entity("e");
    let mut one = client(&t)
        .await
        .subscribe(SubscribeRequest { entity_id: e.clone(), subscription_id: "one".into() })
        .await
        .expect("Subscribe")
        .into_inner();
    let mut all =
        client(&t).await.subscribe_all(SubscribeAllRequest::default()).await.expect("SubscribeAll").into_inner();
    append(&t, &e, "a").await;
    assert!(next(&mut one).await.unwrap().is_ok());
    assert!(next(&mut all).await.unwrap().is_ok());
    // Positive control for the deadline below: with no subscriber, shutdown takes well under 10 s.
    let stopped = tokio::time::timeout(Duration::from_secs(10), t.stop_node()).await;
    assert!(stopped.is_ok(), "the node did not shut down within 10 s while two subscription streams were open");
    assert!(!matches!(next(&mut one).await, Some(Ok(_))), "the stream ends");
    assert!(!matches!(next(&mut all).await, Some(Ok(_))), "the stream ends");
    t.shutdown().await;
}
