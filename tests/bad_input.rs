//! Bad input against a real node, a real write handler and a real PostgreSQL (spec reliability §4.5 scenarios 15,
//! 17 and 18): protobuf bodies no client would send, sent as raw gRPC frames; messages at and above the size limit
//! in both directions; and HTTP/2 abuse (idle TCP connections, preface-only connections, peers that never answer a
//! PING, streams never half-closed, a HEADERS + RST_STREAM flood) while a well-behaved client keeps working.
//!
//! The other bad-input cases live in tests/write_path.rs (`garbage_commands_are_relayed...`,
//! `oversized_messages_are_refused...` with a small limit, `odd_entity_ids...`, `empty_entity_id...`).
//!
//! Needs `REGENT_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:55440/postgres`).

mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use regent::proto::chief_of_state::v1::ProcessCommandRequest;

use support::handler::{command, list};
use support::{TestNode, entity};

const PROCESS_COMMAND: &str = "/chief_of_state.v1.ChiefOfStateService/ProcessCommand";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// A gRPC message frame: not compressed, 4-byte big-endian length, then `body`.
fn grpc_frame(body: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame.into()
}

/// An HTTP/2 connection made with the `h2` crate (the one tonic uses), driven on its own task.
async fn h2_connect(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    (client, tokio::spawn(connection))
}

fn grpc_request(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The `grpc-status` and `grpc-message` of a response: in its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (i32, String) {
    stream_outcome(response).await.expect("a response")
}

/// [`grpc_status`], or the error that ended the stream (e.g. a `REFUSED_STREAM` reset).
async fn stream_outcome(response: h2::client::ResponseFuture) -> Result<(i32, String), h2::Error> {
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    let read = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers.get("grpc-message").map(|m| m.to_str().unwrap_or("").to_string()).unwrap_or_default();
        Some((code, message))
    };
    if let Some(status) = read(&parts.headers) {
        return Ok(status);
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.expect("a response with trailers");
    Ok(read(&trailers).expect("grpc-status in the trailers"))
}

/// Sends one `ProcessCommand` whose body is `frame`, exactly as given, and returns the status.
async fn raw_process_command(addr: SocketAddr, frame: Bytes) -> (i32, String) {
    let (client, connection) = h2_connect(addr).await;
    let mut client = client.ready().await.expect("ready");
    let (response, mut send) = client.send_request(grpc_request(addr, PROCESS_COMMAND), false).expect("send");
    send.send_data(frame, true).expect("send the body");
    let status = tokio::time::timeout(Duration::from_secs(30), grpc_status(response)).await.expect("answered in time");
    drop(client);
    connection.abort();
    status
}

/// The resident set of this process (the node runs in it), in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Waits until the server closes `stream` (EOF or reset), reading and discarding whatever it sends.
async fn closed_by_server(mut stream: TcpStream, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.map_err(|_| format!("still open after {within:?}"))?;
    Ok(started.elapsed())
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100).saturating_sub(1)]
}

/// `n` sequential commands on one entity from a well-behaved client, each given a generous deadline; returns the
/// latencies. Panics if one fails.
async fn well_behaved(t: &TestNode, n: usize, what: &str) -> Vec<Duration> {
    let id = entity(what);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(30), t.process(&id, command("Append", &i.to_string())))
            .await
            .unwrap_or_else(|_| panic!("{what}: command {i} took more than 30 s"))
            .unwrap_or_else(|e| panic!("{what}: command {i} failed: {e:?}"));
        latencies.push(started.elapsed());
        assert_eq!(reply.meta.unwrap().revision_number, i as u32 + 1);
    }
    latencies
}

// ---------------------------------------------------------------------------------------------------------------
// scenario 15: malformed protobuf

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_bodies_are_internal_and_the_node_keeps_serving() {
    let t = TestNode::start(|_| {}).await;
    let addr = t.node().local_addr();
    let bodies: [(&str, &[u8]); 5] = [
        // field 1 (entity_id, length-delimited), then a length varint that never ends
        ("truncated varint", &[0x0a, 0xff, 0xff, 0xff]),
        // field 1 sent as a varint (wire type 0) where a string is expected
        ("wrong wire type", &[0x08, 0x05]),
        // wire type 7 does not exist
        ("invalid wire type", &[0x0f, 0x00]),
        // entity_id claims 16 bytes, 1 follows
        ("length past the end", &[0x0a, 0x10, b'a']),
        // entity_id is not UTF-8
        ("invalid UTF-8 string", &[0x0a, 0x02, 0xff, 0xfe]),
    ];
    for (what, body) in bodies {
        let (code, message) = raw_process_command(addr, grpc_frame(body)).await;
        assert_eq!(code, Code::Internal as i32, "{what}: {message}");
        eprintln!("{what}: INTERNAL {message:?}");
    }
    // Broken framing is refused too, never a hang or a dropped connection for others.
    let mut flagged = grpc_frame(&[0x0a, 0x01, b'a']).to_vec();
    flagged[0] = 1; // "compressed", without a grpc-encoding
    let mut short = grpc_frame(&[0x0a, 0x01, b'a']).to_vec();
    short.truncate(6); // the prefix announces 3 bytes, 1 follows, then END_STREAM
    for (what, frame) in [("compressed flag without an encoding", flagged), ("frame cut short", short)] {
        let (code, message) = raw_process_command(addr, frame.into()).await;
        assert_ne!(code, Code::Ok as i32, "{what}");
        eprintln!("{what}: code {code} {message:?}");
    }
    assert!(t.log().all().is_empty(), "no malformed request reaches the handler");
    let reply = t.process(&entity("after-garbage"), command("Append", "a")).await.expect("the node still serves");
    assert_eq!(reply.state, Some(list(&["a"])));
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// scenario 17: sizes, with the default 4 MiB limit

/// A `ProcessCommand` request of exactly `size` encoded bytes.
fn request_of_size(entity_id: &str, size: usize) -> ProcessCommandRequest {
    let mut request = ProcessCommandRequest { entity_id: entity_id.into(), command: Some(command("Append", "")) };
    let mut value = size.saturating_sub(request.encoded_len());
    loop {
        request.command.as_mut().unwrap().value = vec![b'x'; value];
        match request.encoded_len() {
            n if n == size => return request,
            n if n > size => value -= n - size,
            n => value += size - n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_up_to_the_limit_pass_and_larger_ones_are_refused_in_both_directions() {
    let t = TestNode::start(|_| {}).await;
    assert_eq!(t.config.server.max_message_bytes, 4 * MIB, "the default limit");

    // 3.9 MiB: accepted, stored, answered and read back.
    let id = entity("big-ok");
    let item = "x".repeat(39 * MIB / 10);
    let reply = t.process(&id, command("Append", &item)).await.expect("a 3.9 MiB command passes");
    assert_eq!(reply.state, Some(list(&[&item])));
    assert_eq!(t.get(&id).await.expect("GetState of a 3.9 MiB state").state, reply.state);
    assert_eq!(t.journal_revisions(&id).await, vec![1]);
    // Another 3.9 MiB item: the command fits, the handler's request (command + 3.9 MiB prior state) does not. It
    // is refused before it is sent, as OUT_OF_RANGE, and the entity keeps its state.
    let status = t.process(&id, command("Append", &item)).await.expect_err("the handler's request is too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(t.journal_revisions(&id).await, vec![1]);
    assert_eq!(t.get(&id).await.expect("GetState after the refusal").state, reply.state);

    // 4 MiB + 1: OUT_OF_RANGE before anything runs.
    let id = entity("too-big");
    let request = request_of_size(&id, 4 * MIB + 1);
    let status = t.process_request(tonic::Request::new(request)).await.expect_err("4 MiB + 1 is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(t.log().commands(&id).is_empty(), "the handler never sees it");
    // Exactly the limit still decodes; the handler's request (the command plus the entity's meta data) is then
    // over the limit and refused by the node's encoder, before it is sent.
    let exact_id = entity("exact");
    let exact = request_of_size(&exact_id, 4 * MIB);
    let status = t.process_request(tonic::Request::new(exact)).await.expect_err("the handler's request is too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("encoded message length too large"), "decoded, then refused: {status:?}");
    assert!(t.log().commands(&exact_id).is_empty(), "the handler never sees it");

    // The handler answers with more than the limit: its error is relayed, nothing is stored.
    let id = entity("big-reply");
    assert!(t.process(&id, command("Append", "a")).await.is_ok());
    let status = t.process(&id, command("Big", &(4 * MIB + 1024).to_string())).await.expect_err("reply too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    eprintln!("handler reply above the limit: {:?} {:?}", status.code(), status.message());
    assert_eq!(t.journal_revisions(&id).await, vec![1], "nothing of the refused reply is stored");
    assert_eq!(t.get(&id).await.unwrap().state, Some(list(&["a"])));

    let reply = t.process(&entity("after-big"), command("Append", "a")).await.expect("the node still serves");
    assert_eq!(reply.meta.unwrap().revision_number, 1);
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// scenario 18: HTTP/2 abuse

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_leaves_other_clients_served_and_memory_bounded() {
    const IDLE_CONNECTIONS: usize = 1000;
    const MAX_STREAMS: u32 = 32;
    let t = TestNode::start(|c| {
        c.server.handshake_timeout_ms = 2_000;
        c.server.http2_keepalive_interval_ms = 1_000;
        c.server.http2_keepalive_timeout_ms = 1_000;
        c.server.request_timeout_ms = 3_000;
        c.server.max_concurrent_streams = MAX_STREAMS;
    })
    .await;
    let addr = t.node().local_addr();

    let mut baseline = well_behaved(&t, 100, "baseline").await;
    let rss_before = rss_mib();

    // 1,000 TCP connections that send nothing, and 50 that send only the HTTP/2 preface.
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.expect("idle connection"));
    }
    let mut preface_only = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        preface_only.push(stream);
    }
    // 20 that finish the handshake (preface + SETTINGS) and then never read or acknowledge a PING.
    let mut deaf = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
        deaf.push(stream);
    }

    // Streams never half-closed: 4 connections each open twice the stream limit, send half a message, and stop.
    let mut open_streams = Vec::new();
    for _ in 0..4 {
        let (client, connection) = h2_connect(addr).await;
        let mut responses = Vec::new();
        for _ in 0..2 * MAX_STREAMS {
            let mut client = client.clone().ready().await.expect("a stream slot");
            let (response, mut send) = client.send_request(grpc_request(addr, PROCESS_COMMAND), false).unwrap();
            send.send_data(Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a]), false).unwrap();
            responses.push(tokio::spawn(async move {
                let outcome = stream_outcome(response).await;
                drop(send);
                outcome
            }));
        }
        open_streams.push((client, connection, responses));
    }

    // HEADERS + RST_STREAM flood on fresh connections until the server sends each of them away.
    let flood = tokio::spawn(async move {
        let mut closed_by_server = 0;
        let mut resets = 0u64;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let (client, connection) = h2_connect(addr).await;
            let mut sent = 0;
            while sent < 10_000 && !connection.is_finished() {
                let Ok(mut ready) = client.clone().ready().await else { break };
                let Ok((_, mut send)) = ready.send_request(grpc_request(addr, PROCESS_COMMAND), false) else { break };
                send.send_reset(h2::Reason::CANCEL);
                sent += 1;
                resets += 1;
                if sent % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            drop(client);
            if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(10), connection).await
                && error.is_go_away()
            {
                closed_by_server += 1;
            }
        }
        (closed_by_server, resets)
    });

    // Meanwhile a well-behaved client keeps going.
    let mut during = well_behaved(&t, 100, "during-abuse").await;
    let rss_during = rss_mib();

    // Idle, preface-only and deaf connections are closed by the server.
    let wait = Duration::from_secs(30);
    let idle_closed = futures::future::join_all(idle.into_iter().map(|s| closed_by_server(s, wait))).await;
    let preface_closed = futures::future::join_all(preface_only.into_iter().map(|s| closed_by_server(s, wait))).await;
    let deaf_closed = futures::future::join_all(deaf.into_iter().map(|s| closed_by_server(s, wait))).await;
    for (what, results) in [("idle", &idle_closed), ("preface-only", &preface_closed), ("deaf", &deaf_closed)] {
        let open: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            open.is_empty(),
            "{} of {} {what} connections were not closed: {:?}",
            open.len(),
            results.len(),
            open[0]
        );
    }

    // Every stream that never finished its request is answered once the request timeout passes, or was refused
    // (REFUSED_STREAM) for going past max_concurrent_streams before the client learnt the limit; none hangs.
    let (mut cancelled, mut refused) = (0, 0);
    for (client, connection, responses) in open_streams {
        let mut answered = 0;
        for response in responses {
            match tokio::time::timeout(Duration::from_secs(60), response)
                .await
                .expect("an unfinished stream is answered")
                .expect("response task")
            {
                Ok((code, message)) => {
                    assert_eq!(code, Code::Cancelled as i32, "{message}");
                    answered += 1;
                }
                Err(error) => {
                    assert_eq!(error.reason(), Some(h2::Reason::REFUSED_STREAM), "{error:?}");
                    refused += 1;
                }
            }
        }
        assert!(answered >= MAX_STREAMS as usize, "only {answered} streams of one connection were served");
        cancelled += answered;
        drop(client);
        connection.abort();
    }
    let (flood_goaways, resets) = flood.await.expect("flood task");
    let rss_after = rss_mib();

    let mut after = well_behaved(&t, 20, "after-abuse").await;
    eprintln!(
        "http2 abuse: well-behaved p99 baseline {:?}, during abuse {:?}, after {:?}; RSS {rss_before} MiB before, \
         {rss_during} MiB during, {rss_after} MiB after; {resets} HEADERS+RST_STREAM sent, {flood_goaways} flood \
         connections sent away by the server; {cancelled} unfinished streams answered CANCELLED, {refused} refused",
        p99(&mut baseline),
        p99(&mut during),
        p99(&mut after),
    );
    assert!(flood_goaways >= 1, "the server never sent a flooding connection away");
    // Generous: this process also holds the clients (and the other tests of this file).
    assert!(
        rss_during < rss_before + 512 && rss_after < rss_before + 512,
        "RSS grew from {rss_before} MiB to {rss_during}/{rss_after} MiB"
    );
    t.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// scenario 17, between nodes: a command larger than the node-to-node link carries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_too_large_for_the_node_link_is_a_status_not_a_hang() {
    use support::cluster::{Cluster, ClusterOptions, entity_in_shard};
    use support::history::op_any;

    // Clients may send 32 MiB; ractor_cluster carries frames of at most 16 MiB between nodes.
    let options = ClusterOptions {
        env: vec![("REGENT_MAX_MESSAGE_BYTES".into(), (32 * MIB).to_string())],
        ..ClusterOptions::default()
    };
    let num_shards = options.num_shards;
    let cluster = Cluster::start(2, options).await;
    // Shards are allocated on first use: touch one entity of each, then pick a shard n2 hosts.
    let warmup: Vec<String> = (0..num_shards).map(|shard| entity_in_shard("warmup", shard, num_shards)).collect();
    cluster.client().touch_all(&warmup, Duration::from_secs(60)).await;
    let homes = cluster.shard_homes("n1").await;
    let shard = *homes.iter().find(|(_, node)| *node == "n2").expect("n2 hosts a shard").0;
    let id = entity_in_shard("forwarded", shard, num_shards);
    let client = cluster.target("n1").client.max_encoding_message_size(64 * MIB).max_decoding_message_size(64 * MIB);

    let huge = "h".repeat(17 * MIB);
    let request = ProcessCommandRequest { entity_id: id.clone(), command: Some(op_any(&huge)) };
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(60), client.clone().process_command(request))
        .await
        .expect("a status, not a hang")
        .expect_err("too large to forward");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    eprintln!("forward above the link limit: {:?} {:?} after {:?}", status.code(), status.message(), started.elapsed());

    // The link between the nodes survived: a small command on the same entity is forwarded and applied.
    let request = ProcessCommandRequest { entity_id: id.clone(), command: Some(op_any("small")) };
    let reply = tokio::time::timeout(Duration::from_secs(30), client.clone().process_command(request))
        .await
        .expect("answered in time")
        .expect("a small forwarded command succeeds");
    assert_eq!(reply.into_inner().meta.unwrap().revision_number, 1, "the huge command was never applied");
    cluster.finish().await;
}
