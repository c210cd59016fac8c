//! Security (issue 7): TLS on the client port, to the handlers and between nodes; the cookie; the admin token;
//! secrets kept out of logs. Real servers and real `regent` processes, with certificates made here (rcgen).
//!
//! | criterion | tests |
//! |---|---|
//! | a TLS-only cluster (client port, node links, handler over TLS with a private CA) forms and serves | `a_tls_only_cluster_forms_and_serves_and_refuses_strangers` |
//! | a node with the wrong cookie, a certificate of another CA, or no TLS is refused and never a member | same test |
//! | a node with the wrong cookie is refused on a plaintext cluster too | `a_node_with_the_wrong_cookie_is_refused` |
//! | the client port serves TLS only; mutual TLS refuses clients without a certificate | `the_client_port_serves_tls_only_and_can_demand_client_certificates` |
//! | read sides with `useTls` and a private CA; a handler the CA does not vouch for gets nothing | `read_sides_call_their_handler_over_tls_with_a_private_ca` |
//! | admin token: 401 without, 200 with, probes open, CLI `--token`; the page works with it | `the_admin_token_guards_every_route_but_the_probes`, `the_admin_page_works_with_a_token` |
//! | a node binding the admin endpoint beyond loopback without a token warns | `an_admin_endpoint_beyond_loopback_without_a_token_is_warned_about` |
//! | the database password, cookie and admin token never reach the output or `--dump-config` | `secrets_never_reach_the_output_even_at_trace_level` |
//!
//! Run: `REGENT_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:55440/postgres cargo test --test security`.

mod common;
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use regent::admin::client;
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{GetStateRequest, ProcessCommandRequest};
use support::cluster::{Cluster, ClusterOptions, PATIENCE, http_get, node_ip, up_nodes};
use support::history::{decode_list, op_any};
use support::read_handler::{ReadHandler, ReadSideSpec, ReadSidesYaml};
use support::{TestHandler, base_config, entity, eventually};

// ---------------------------------------------------------------------------------------------------------------
// certificates

/// A private CA that signs certificates for tests.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).expect("a self-signed CA").pem();
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for `localhost`, `127.0.0.1` and the cluster harness's node addresses, usable by a server and
    /// a client (node links need both).
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        for k in 1..=9 {
            params.subject_alt_names.push(SanType::IpAddress(node_ip(k)));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("a signed certificate").pem();
        Leaf { cert, key: key.serialize_pem() }
    }
}

/// Writes `text` to `dir/name` and returns the path as a string (for environment variables).
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    path.to_string_lossy().into_owned()
}

/// The environment of node-to-node TLS with `leaf` and the CA `ca_pem`.
fn cluster_tls_env(dir: &Path, tag: &str, leaf: &Leaf, ca_pem: &str) -> Vec<(String, String)> {
    vec![
        ("REGENT_CLUSTER_TLS_CERT_FILE".into(), write(dir, &format!("{tag}-node.pem"), &leaf.cert)),
        ("REGENT_CLUSTER_TLS_KEY_FILE".into(), write(dir, &format!("{tag}-node.key"), &leaf.key)),
        ("REGENT_CLUSTER_TLS_CA_FILE".into(), write(dir, &format!("{tag}-ca.pem"), ca_pem)),
    ]
}

/// A client of `https://addr` trusting `ca_pem`, with `identity` as its client certificate when given.
async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&Leaf>,
) -> Result<ChiefOfStateServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(ChiefOfStateServiceClient::new(channel))
}

/// A plaintext client of `http://addr` (connecting may succeed: TCP does; the call must fail).
async fn plaintext_call(addr: std::net::SocketAddr) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ChiefOfStateServiceClient::new(channel)
        .get_state(GetStateRequest { entity_id: "plain".into() })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------------------------
// clusters

/// Watches `observer`'s `/cluster` for `watch` and asserts that none of the `strangers` is ever listed as `up` or
/// connected, while the `members` stay up.
async fn assert_never_members(cluster: &mut Cluster, observer: &str, members: &[&str], strangers: &[&str]) {
    let expected: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        cluster.assert_running(observer);
        let status = cluster.status_of(observer).await;
        for stranger in strangers {
            if let Some(member) = status.members.iter().find(|m| m.node == *stranger) {
                assert!(member.status != "up", "{stranger} became an up member: {status:#?}");
                assert!(!member.connected, "{stranger} got a link: {status:#?}");
            }
        }
        assert_eq!(up_nodes(&status), expected, "the members changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_forms_and_serves_and_refuses_strangers() {
    regent::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cluster_ca = TestCa::new("regent cluster CA");
    let node_cert = cluster_ca.leaf("regent node");
    // The handler's certificate comes from another private CA, which only the write side trusts.
    let handler_ca = TestCa::new("handler CA");
    let handler_cert = handler_ca.leaf("handler");

    let mut env = cluster_tls_env(dir.path(), "good", &node_cert, &cluster_ca.pem);
    env.extend([
        ("REGENT_TLS_CERT_FILE".to_string(), write(dir.path(), "grpc.pem", &node_cert.cert)),
        ("REGENT_TLS_KEY_FILE".to_string(), write(dir.path(), "grpc.key", &node_cert.key)),
        ("COS_WRITE_SIDE_USE_TLS".to_string(), "true".to_string()),
        ("REGENT_WRITE_SIDE_TLS_CA_FILE".to_string(), write(dir.path(), "handler-ca.pem", &handler_ca.pem)),
    ]);
    let options =
        ClusterOptions { env, handler_tls: Some((handler_cert.cert, handler_cert.key)), ..Default::default() };
    let mut cluster = Cluster::start(3, options).await;

    // Every node serves commands over TLS, and the handler (TLS only) is called.
    let mut entities = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let addr = cluster.spec_of(name).grpc;
        let mut client = tls_client(addr, &cluster_ca.pem, None).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        for j in 0..4 {
            let id = entity(&format!("tls-{i}-{j}"));
            let request =
                ProcessCommandRequest { entity_id: id.clone(), command: Some(op_any(&format!("op-{i}-{j}"))) };
            let reply = client.process_command(request).await.unwrap_or_else(|e| panic!("{name}: {e}")).into_inner();
            assert_eq!(decode_list(reply.state.as_ref()).unwrap(), [format!("op-{i}-{j}")]);
            entities.push(id);
        }
    }
    // ... and answers for entities another node owns (requests forwarded over the TLS links).
    let mut reader = tls_client(cluster.spec_of("n2").grpc, &cluster_ca.pem, None).await.unwrap();
    for id in &entities {
        let state = reader.get_state(GetStateRequest { entity_id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(decode_list(state.state.as_ref()).unwrap().len(), 1, "{id}");
    }
    let homes: BTreeSet<String> = cluster.shard_homes("n1").await.into_values().collect();
    assert_eq!(homes.len(), 3, "the shards are spread over the three nodes, so links carried requests");

    // The client port speaks TLS only.
    let plain = plaintext_call(cluster.spec_of("n1").grpc).await;
    assert!(plain.is_err(), "a plaintext call to the TLS port succeeded");

    // Strangers: the right certificate but the wrong cookie; the right cookie but a certificate of another CA; the
    // right cookie and no TLS at all. None gets a link or becomes a member.
    let other_ca = TestCa::new("another CA");
    let mut wrong_cookie = cluster.spec(4);
    wrong_cookie.env = cluster_tls_env(dir.path(), "n4", &node_cert, &cluster_ca.pem);
    wrong_cookie.env.push(("REGENT_CLUSTER_COOKIE".into(), "not-the-cluster-cookie".into()));
    cluster.launch(wrong_cookie).await;
    let mut wrong_ca = cluster.spec(5);
    wrong_ca.env = cluster_tls_env(dir.path(), "n5", &other_ca.leaf("impostor"), &other_ca.pem);
    cluster.launch(wrong_ca).await;
    let mut no_tls = cluster.spec(6);
    no_tls.env = ["REGENT_CLUSTER_TLS_CERT_FILE", "REGENT_CLUSTER_TLS_KEY_FILE", "REGENT_CLUSTER_TLS_CA_FILE"]
        .iter()
        .map(|v| (v.to_string(), String::new()))
        .collect();
    cluster.launch(no_tls).await;

    // They are running and trying (their rows are in the table) ...
    eventually("the strangers' rows in the member table", PATIENCE, || {
        let cluster = &cluster;
        async move {
            let status = cluster.status("n1").await.ok()?;
            let listed: BTreeSet<&str> = status.members.iter().map(|m| m.node.as_str()).collect();
            ["n4", "n5", "n6"].iter().all(|n| listed.contains(n)).then_some(())
        }
    })
    .await;
    // ... and never get in.
    assert_never_members(&mut cluster, "n1", &["n1", "n2", "n3"], &["n4", "n5", "n6"]).await;
    let n1_log = cluster.log_tail("n1", usize::MAX);
    assert!(n1_log.contains("node-to-node TLS handshake refused"), "n1 did not log a refused handshake:\n{n1_log}");

    // The cookie never shows in any node's output.
    for name in cluster.names() {
        assert!(!cluster.log_tail(&name, usize::MAX).contains(cluster.cookie()), "{name} printed the cookie");
    }
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cookie_is_refused() {
    let mut cluster = Cluster::start(2, ClusterOptions::default()).await;
    let mut stranger = cluster.spec(3);
    stranger.env.push(("REGENT_CLUSTER_COOKIE".into(), "not-the-cluster-cookie".into()));
    cluster.launch(stranger).await;
    eventually("n3's row in the member table", PATIENCE, || {
        let cluster = &cluster;
        async move { cluster.status("n1").await.ok()?.members.iter().any(|m| m.node == "n3").then_some(()) }
    })
    .await;
    assert_never_members(&mut cluster, "n1", &["n1", "n2"], &["n3"]).await;
    assert_never_members(&mut cluster, "n2", &["n1", "n2"], &["n3"]).await;
    cluster.finish().await;
}

// ---------------------------------------------------------------------------------------------------------------
// one node

#[tokio::test]
async fn the_client_port_serves_tls_only_and_can_demand_client_certificates() {
    regent::tls::install_crypto_provider();
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("client port CA");
    let server = ca.leaf("node");
    let handler = TestHandler::start().await;
    let mut config = base_config(&handler);
    config.server.tls_cert_file = write(dir.path(), "node.pem", &server.cert);
    config.server.tls_key_file = write(dir.path(), "node.key", &server.key);
    let schema = config.store.postgres.schema.clone();

    let node = regent::Node::start(config.clone()).await.expect("a TLS node starts");
    let addr = node.local_addr();
    let mut client = tls_client(addr, &ca.pem, None).await.expect("a TLS client connects");
    let id = entity("tls-port");
    let request =
        ProcessCommandRequest { entity_id: id.clone(), command: Some(support::handler::command("Append", "a")) };
    client.process_command(request).await.expect("a command over TLS");
    assert!(plaintext_call(addr).await.is_err(), "a plaintext call to the TLS port succeeded");
    let stranger = TestCa::new("a CA the client does not trust for this server");
    assert!(
        tls_client(addr, &stranger.pem, None).await.is_err(),
        "the client accepted a server certificate from a CA it does not trust"
    );
    node.shutdown().await.unwrap();

    // Mutual TLS: a client without a certificate, or with one of another CA, is refused.
    let clients_ca = TestCa::new("clients CA");
    config.server.tls_client_ca_file = write(dir.path(), "clients-ca.pem", &clients_ca.pem);
    let node = regent::Node::start(config.clone()).await.expect("a mutual-TLS node starts");
    let addr = node.local_addr();
    let get = |mut client: ChiefOfStateServiceClient<Channel>, id: String| async move {
        client.get_state(GetStateRequest { entity_id: id }).await.map(|_| ())
    };
    let anonymous = tls_client(addr, &ca.pem, None).await;
    assert!(
        anonymous.is_err() || get(anonymous.unwrap(), id.clone()).await.is_err(),
        "a client without a certificate was served"
    );
    let impostor = tls_client(addr, &ca.pem, Some(&stranger.leaf("impostor"))).await;
    assert!(
        impostor.is_err() || get(impostor.unwrap(), id.clone()).await.is_err(),
        "a client with a certificate of another CA was served"
    );
    let known = tls_client(addr, &ca.pem, Some(&clients_ca.leaf("client"))).await.expect("a client with a certificate");
    get(known, id).await.expect("a client with a certificate of the clients' CA is served");
    node.shutdown().await.unwrap();

    // A missing or malformed file stops the node at start, naming the key.
    config.server.tls_client_ca_file = String::new();
    config.server.tls_key_file = write(dir.path(), "bad.key", "not a key");
    let err = regent::Node::start(config.clone()).await.err().expect("a bad key is refused");
    assert!(err.to_string().contains("server.tls_key_file"), "{err}");
    config.server.tls_key_file = dir.path().join("missing.key").to_string_lossy().into_owned();
    let err = regent::Node::start(config).await.err().expect("a missing key is refused");
    assert!(err.to_string().contains("server.tls_key_file"), "{err}");
    support::pg::drop_schema(&schema).await;
}

/// A route's status with `token` (none: no `Authorization` header).
async fn status_of(admin: &str, path: &str, token: Option<&str>) -> u16 {
    client::get_with_token(admin, path, token).await.unwrap_or_else(|e| panic!("GET {path}: {e}")).status.as_u16()
}

#[tokio::test]
async fn the_admin_token_guards_every_route_but_the_probes() {
    support::init_logging();
    let token = format!("admin-token-{}", uuid::Uuid::new_v4().simple());
    let handler = TestHandler::start().await;
    let mut config = base_config(&handler);
    config.admin.token = regent::config::Secret::new(token.clone());
    let schema = config.store.postgres.schema.clone();
    let node = regent::Node::start(config).await.expect("the node starts");
    let admin = node.admin_addr().expect("the admin endpoint").to_string();

    for path in ["/health", "/ready", "/", "/admin.js", "/admin.css"] {
        assert_eq!(status_of(&admin, path, None).await, 200, "{path} is open");
    }
    for path in ["/cluster", "/actors", "/readsides", "/metrics", "/nothing-here"] {
        assert_eq!(status_of(&admin, path, None).await, 401, "{path} without the token");
        assert_eq!(status_of(&admin, path, Some("wrong-token")).await, 401, "{path} with a wrong token");
        assert_eq!(status_of(&admin, path, Some(&token[..token.len() - 1])).await, 401, "{path} with a prefix");
    }
    for path in ["/cluster", "/actors", "/readsides", "/metrics"] {
        assert_eq!(status_of(&admin, path, Some(&token)).await, 200, "{path} with the token");
    }
    let unauthorized = client::get(&admin, "/cluster").await.unwrap();
    assert_eq!(unauthorized.headers.get("www-authenticate").unwrap(), "Bearer realm=\"regent-admin\"");
    assert!(!String::from_utf8_lossy(&unauthorized.body).contains(&token));

    // The CLI: --token, or the environment variable; without it, a clear failure.
    let (code, out, err) = support::regent_cli(&["admin", "cluster", "--node", &admin, "--token", &token]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("single node"), "{out}");
    let (code, _, err) = support::regent_cli(&["admin", "actors", "--node", &admin]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (node_arg, env_token) = (admin.clone(), token.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_regent"))
            .args(["admin", "cluster", "--node", &node_arg])
            .env_remove("REGENT_ADMIN_NODE")
            .env("REGENT_ADMIN_TOKEN", &env_token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (code, out, err) = support::regent_cli(&["admin", "health", "--node", &admin]).await;
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");

    // `--help` shows the variable but never a value taken from it.
    let help = Command::new(env!("CARGO_BIN_EXE_regent"))
        .args(["admin", "cluster", "--help"])
        .env("REGENT_ADMIN_TOKEN", &token)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("REGENT_ADMIN_TOKEN") && !help.contains(&token), "{help}");

    node.shutdown().await.unwrap();
    support::pg::drop_schema(&schema).await;
}

// ---------------------------------------------------------------------------------------------------------------
// secrets

/// `regent start` with `env` (nothing else of the test's environment), its output captured.
fn regent_start(args: &[&str], env: &[(String, String)], log: &Path) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_regent"));
    command.arg("start").args(args).stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    for (name, _) in std::env::vars() {
        if name.starts_with("COS_") || name.starts_with("REGENT_") || name.starts_with("OTEL_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.spawn().expect("spawn regent start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_output_even_at_trace_level() {
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let password = format!("pw-{suffix}");
    let cookie = format!("cookie-{suffix}");
    let token = format!("token-{suffix}");
    let secrets = [&password, &cookie, &token];

    // The shared PostgreSQL trusts loopback, so any password works; the node still holds and uses it.
    let db = support::pg::fresh_postgres_config();
    let handler = TestHandler::start().await;
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let (grpc, admin, link) = (
        support::cluster::free_port(localhost),
        support::cluster::free_port(localhost),
        support::cluster::free_port(localhost),
    );
    let env: Vec<(String, String)> = [
        ("LOG_LEVEL", "trace".to_string()),
        ("LOG_STYLE", "JSON".to_string()),
        ("REGENT_STORE_BACKEND", "postgres".into()),
        ("COS_DB_HOST", db.host.clone()),
        ("COS_DB_PORT", db.port.to_string()),
        ("COS_DB_USER", db.user.clone()),
        ("COS_DB_PASSWORD", password.clone()),
        ("COS_DB_NAME", db.database.clone()),
        ("COS_DB_SCHEMA", db.schema.clone()),
        ("COS_WRITE_SIDE_HOST", "127.0.0.1".into()),
        ("COS_WRITE_SIDE_PORT", handler.addr().port().to_string()),
        ("COS_ADDRESS", "127.0.0.1".into()),
        ("COS_PORT", grpc.to_string()),
        ("REGENT_ADMIN_ADDRESS", "127.0.0.1".into()),
        ("REGENT_ADMIN_PORT", admin.to_string()),
        ("REGENT_ADMIN_TOKEN", token.clone()),
        ("REGENT_CLUSTER_ENABLED", "true".into()),
        ("REGENT_CLUSTER_COOKIE", cookie.clone()),
        ("REGENT_NODE_NAME", "secretive".into()),
        ("REGENT_CLUSTER_HOST", "127.0.0.1".into()),
        ("REGENT_CLUSTER_BIND_ADDRESS", "127.0.0.1".into()),
        ("REGENT_CLUSTER_PORT", link.to_string()),
        ("NO_COLOR", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    // --dump-config
    let dump = Command::new(env!("CARGO_BIN_EXE_regent"))
        .args(["start", "--dump-config"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump_text = format!("{}{}", String::from_utf8_lossy(&dump.stdout), String::from_utf8_lossy(&dump.stderr));
    for secret in secrets {
        assert!(!dump_text.contains(secret.as_str()), "--dump-config printed a secret:\n{dump_text}");
    }
    assert!(dump_text.contains("token = \"***\"") && dump_text.contains("cookie = \"***\""), "{dump_text}");

    // A node at trace level: start, form, serve, answer the admin routes (with and without the token), stop.
    let log = dir.path().join("node.log");
    let mut child = regent_start(&[], &env, &log);
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    eventually("the node ready", Duration::from_secs(60), || async {
        matches!(http_get(admin_addr, "/ready").await, Ok((200, _))).then_some(())
    })
    .await;
    let mut node = ChiefOfStateServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let request =
        ProcessCommandRequest { entity_id: entity("secret"), command: Some(support::handler::command("Append", "a")) };
    node.process_command(request).await.expect("a command");
    let admin_text = admin_addr.to_string();
    assert_eq!(status_of(&admin_text, "/cluster", Some(&token)).await, 200);
    assert_eq!(status_of(&admin_text, "/cluster", Some("wrong")).await, 401);
    assert_eq!(status_of(&admin_text, "/metrics", Some(&token)).await, 200);
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let output = std::fs::read_to_string(&log).unwrap();
    assert!(output.len() > 10_000, "trace level logs a lot; got only:\n{output}");
    assert!(output.contains("regent node started"), "{output}");
    for secret in secrets {
        if let Some(at) = output.find(secret.as_str()) {
            let line = output[..at].rsplit('\n').next().unwrap_or("");
            panic!("the node printed a secret, in this line: {line}…");
        }
    }
    support::pg::drop_schema(&db.schema).await;
}

/// Headless Chromium's DOM of `url` after the page's scripts ran (Debian's `chromium`, see `tests/admin_page.rs`).
async fn rendered_dom(url: String) -> String {
    let chromium = std::env::var("REGENT_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let output = tokio::task::spawn_blocking(move || {
        // A page that waits on a dialog never finishes its virtual time: bound the run.
        Command::new("timeout")
            .args([
                "120",
                &chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ])
            .args(["--disable-extensions", "--virtual-time-budget=4000", "--dump-dom"])
            .arg(&url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {chromium} (install Debian's chromium, see scripts/test.sh): {e}"))
    })
    .await
    .unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_works_with_a_token() {
    support::init_logging();
    let token = format!("page-token-{}", uuid::Uuid::new_v4().simple());
    let handler = TestHandler::start().await;
    let mut config = base_config(&handler);
    config.admin.token = regent::config::Secret::new(token.clone());
    let schema = config.store.postgres.schema.clone();
    let node = regent::Node::start(config).await.expect("the node starts");
    let admin = node.admin_addr().unwrap();

    // The token in the link's fragment: the page keeps it and sends it, and renders the node's data.
    let dom = rendered_dom(format!("http://{admin}/#token={token}")).await;
    assert!(dom.contains(r#"data-loaded="true""#), "the page did not render with the token:\n{dom}");
    assert!(dom.contains(r#"data-node="#), "no member card:\n{dom}");
    // (Without it the page stops at its prompt for the token, which headless Chromium never answers; the routes'
    // 401 is checked in `the_admin_token_guards_every_route_but_the_probes`.)

    node.shutdown().await.unwrap();
    support::pg::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_sides_call_their_handler_over_tls_with_a_private_ca() {
    regent::tls::install_crypto_provider();
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("read handlers CA");
    let leaf = ca.leaf("read handler");
    let mut trusted = ReadHandler::start_with_tls(Some((leaf.cert.clone(), leaf.key.clone()))).await;
    // A second handler whose certificate comes from a CA the node does not trust.
    let stranger = TestCa::new("not trusted").leaf("impostor");
    let mut untrusted = ReadHandler::start_with_tls(Some((stranger.cert, stranger.key))).await;
    let yaml = ReadSidesYaml::write(&[
        ReadSideSpec::new("trusted", trusted.port()).use_tls(true),
        ReadSideSpec::new("untrusted", untrusted.port()).use_tls(true),
    ]);
    let handler = TestHandler::start().await;
    let mut config = base_config(&handler);
    config.entities.num_shards = 2;
    config.read_side.enabled = true;
    config.read_side.config = yaml.path_str();
    config.read_side.tls_ca_file = write(dir.path(), "read-ca.pem", &ca.pem);
    let schema = config.store.postgres.schema.clone();
    let node = regent::Node::start(config).await.expect("the node starts");
    let channel = Endpoint::from_shared(format!("http://{}", node.local_addr())).unwrap().connect().await.unwrap();
    let mut client = ChiefOfStateServiceClient::new(channel);
    let id = entity("read-tls");
    let request =
        ProcessCommandRequest { entity_id: id.clone(), command: Some(support::handler::command("Append", "a")) };
    client.process_command(request).await.expect("a command");

    eventually("the event delivered over TLS", Duration::from_secs(30), || {
        let delivered = trusted.log.has_delivered("trusted", &id, 1);
        async move { delivered.then_some(()) }
    })
    .await;
    // The other read side fails on the handler's certificate (and stops, its policy), having called nothing.
    let admin = node.admin_addr().unwrap().to_string();
    let failed = eventually("the untrusted read side failing", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let views: Vec<regent::metrics::ReadSideView> = client::get_json(&admin, "/readsides", &[]).await.ok()?;
            views.into_iter().find(|v| v.read_side == "untrusted" && v.failures > 0)
        }
    })
    .await;
    assert!(untrusted.log.is_empty(), "a handler with a certificate of an untrusted CA was called");
    assert_eq!(failed.delivered, 0, "{failed:?}");

    node.shutdown().await.unwrap();
    trusted.stop().await;
    untrusted.stop().await;
    support::pg::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_beyond_loopback_without_a_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let localhost = IpAddr::from([127, 0, 0, 1]);
    for (token, warned) in [("", true), ("a-token-for-the-wide-admin-endpoint", false)] {
        let admin = support::cluster::free_port(localhost);
        let env: Vec<(String, String)> = [
            ("REGENT_DATA_DIR", dir.path().join(format!("data-{warned}")).to_string_lossy().into_owned()),
            ("COS_ADDRESS", "127.0.0.1".to_string()),
            ("COS_PORT", "0".to_string()),
            ("REGENT_ADMIN_ADDRESS", "0.0.0.0".to_string()),
            ("REGENT_ADMIN_PORT", admin.to_string()),
            ("REGENT_ADMIN_TOKEN", token.to_string()),
            ("NO_COLOR", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let log = dir.path().join(format!("node-{warned}.log"));
        let mut child = regent_start(&["--example-handler"], &env, &log);
        // The warning comes before the node's "started" line.
        let output = eventually("the node started", Duration::from_secs(30), || {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            async move { output.contains("regent node started").then_some(output) }
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(output.contains("the admin endpoint listens beyond loopback without a token"), warned, "{output}");
    }
}
