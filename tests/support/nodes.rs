//! A cluster of real `regent start` processes for the observability tests: node `nK` binds `127.0.0.K` for its
//! cluster link, and free loopback ports for gRPC and the admin endpoint; all share one fresh PostgreSQL schema
//! and one test write handler. [`Cluster::start`] returns once every node answers `/ready` = 200; dropping the
//! cluster kills the processes it started (and only those).

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use regent::admin::client;
use regent::cluster::status::ClusterStatus;
use regent::config::PostgresConfig;

use super::eventually;

/// A free TCP port on `127.0.0.1` (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local address").port()
}

/// One running `regent` process.
pub struct NodeProcess {
    pub name: String,
    pub grpc_port: u16,
    pub admin_port: u16,
    child: Child,
}

impl NodeProcess {
    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
}

/// Real nodes of one cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    pub schema: String,
}

impl Cluster {
    /// Starts `n` cluster members on `db`, calling the write handler on `handler_port`, with `extra` environment
    /// (e.g. `OTEL_*`) for every node, and waits until each is ready.
    pub async fn start(n: usize, db: &PostgresConfig, handler_port: u16, extra: &[(&str, String)]) -> Cluster {
        let cluster_port = free_port();
        let mut nodes = Vec::new();
        for k in 1..=n {
            let name = format!("n{k}");
            let (grpc_port, admin_port) = (free_port(), free_port());
            let mut env: HashMap<&str, String> = HashMap::from([
                ("COS_DB_HOST", db.host.clone()),
                ("COS_DB_PORT", db.port.to_string()),
                ("COS_DB_USER", db.user.clone()),
                ("COS_DB_PASSWORD", db.password.clone()),
                ("COS_DB_NAME", db.database.clone()),
                ("COS_DB_SCHEMA", db.schema.clone()),
                ("COS_WRITE_SIDE_HOST", "127.0.0.1".into()),
                ("COS_WRITE_SIDE_PORT", handler_port.to_string()),
                ("COS_ADDRESS", "127.0.0.1".into()),
                ("COS_PORT", grpc_port.to_string()),
                ("COS_NUM_SHARDS", "12".into()),
                ("REGENT_ADMIN_PORT", admin_port.to_string()),
                ("REGENT_CLUSTER_ENABLED", "true".into()),
                ("REGENT_CLUSTER_COOKIE", "secret".into()),
                ("REGENT_NODE_NAME", name.clone()),
                ("REGENT_CLUSTER_HOST", format!("127.0.0.{k}")),
                ("REGENT_CLUSTER_BIND_ADDRESS", format!("127.0.0.{k}")),
                ("REGENT_CLUSTER_PORT", cluster_port.to_string()),
                ("REGENT_CLUSTER_LEASE_TTL_MS", "2000".into()),
                ("REGENT_CLUSTER_HEARTBEAT_INTERVAL_MS", "200".into()),
                ("REGENT_SBR_STABLE_AFTER_MS", "2000".into()),
                ("LOG_LEVEL", "WARN".into()),
                ("LOG_STYLE", "SIMPLE".into()),
            ]);
            for (key, value) in extra {
                env.insert(key, value.clone());
            }
            let child = Command::new(env!("CARGO_BIN_EXE_regent"))
                .arg("start")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start node {name}: {e}"));
            nodes.push(NodeProcess { name, grpc_port, admin_port, child });
        }
        let cluster = Cluster { nodes, schema: db.schema.clone() };
        for node in &cluster.nodes {
            let admin = node.admin();
            eventually(&format!("node {} ready", node.name), Duration::from_secs(60), || {
                let admin = admin.clone();
                async move { client::get(&admin, "/ready").await.ok().filter(|r| r.status == 200).map(|_| ()) }
            })
            .await;
        }
        cluster.wait_for_members(n).await;
        cluster
    }

    /// Waits until the first node sees `n` members `up`.
    pub async fn wait_for_members(&self, n: usize) {
        let admin = self.nodes[0].admin();
        eventually(&format!("{n} members up"), Duration::from_secs(30), || {
            let admin = admin.clone();
            async move {
                let status: ClusterStatus = client::get_json(&admin, "/cluster", &[]).await.ok()?;
                (status.members.iter().filter(|m| m.status == "up").count() == n).then_some(())
            }
        })
        .await;
    }

    /// `/cluster` as node `i` sees it.
    pub async fn status(&self, i: usize) -> ClusterStatus {
        client::get_json(&self.nodes[i].admin(), "/cluster", &[]).await.expect("GET /cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}
