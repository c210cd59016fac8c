//! PostgreSQL side: the harness's own connection (statistics, schemas), and the pgbench baseline.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

/// Where the server is, split into the parts `COS_DB_*` and pgbench need.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl PgTarget {
    pub fn parse(url: &str) -> anyhow::Result<PgTarget> {
        let config: tokio_postgres::Config = url.parse().context("parsing the PostgreSQL URL")?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => bail!("the PostgreSQL URL needs a TCP host"),
        };
        Ok(PgTarget {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").into(),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
            database: config.get_dbname().unwrap_or("postgres").into(),
        })
    }

    pub async fn connect(&self, url: &str) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.context("connecting to PostgreSQL")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("harness PostgreSQL connection: {e}");
            }
        });
        Ok(client)
    }
}

/// Cumulative counters of the database at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgStats {
    pub xact_commit: i64,
    pub wal_bytes: f64,
    /// The next transaction id to be assigned: its delta counts the transactions that wrote (exact, no lag).
    pub next_xid: i64,
}

pub async fn stats(client: &Client) -> anyhow::Result<PgStats> {
    let row = client
        .query_one(
            "SELECT xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
             (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(PgStats { xact_commit: row.get(0), wal_bytes: row.get(1), next_xid: row.get(2) })
}

/// The postmaster's pid (the parent of this connection's backend).
pub async fn postmaster_pid(client: &Client) -> anyhow::Result<u32> {
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    crate::procs::parent(backend as u32).context("the PostgreSQL backend is not visible in /proc (not local?)")
}

pub async fn version(client: &Client) -> anyhow::Result<String> {
    Ok(client.query_one("SHOW server_version", &[]).await?.get(0))
}

pub async fn setting(client: &Client, name: &str) -> String {
    match client.query_one(&format!("SHOW {name}"), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => "?".into(),
    }
}

/// The journal's rows after `after` (an `ordering`): count and mean payload size.
pub async fn journal_since(client: &Client, schema: &str, after: i64) -> anyhow::Result<(i64, f64)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(avg(octet_length(payload)), 0)::float8 FROM \"{schema}\".journal WHERE ordering > $1"
            ),
            &[&after],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn journal_max(client: &Client, schema: &str) -> anyhow::Result<i64> {
    let row = client.query_one(&format!("SELECT coalesce(max(ordering), 0) FROM \"{schema}\".journal"), &[]).await?;
    Ok(row.get(0))
}

pub async fn snapshot_count(client: &Client, schema: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(&format!("SELECT count(*) FROM \"{schema}\".snapshots"), &[]).await?.get(0))
}

pub async fn drop_schema(client: &Client, schema: &str) {
    if let Err(e) = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("dropping schema {schema}: {e}");
    }
}

/// `pgbench` next to `initdb` (Debian's layout), or on the PATH.
pub fn pgbench_path() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|d| d.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("pgbench")).find(|p| p.exists())
    })
}

/// One pgbench measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchResult {
    pub clients: usize,
    pub payload: usize,
    pub tps: f64,
    pub latency_ms: f64,
    pub commits_per_tx: f64,
    pub write_tx_per_tx: f64,
    pub wal_bytes_per_tx: f64,
}

/// The journal-shaped table in a scratch schema (same columns, keys and indexes as Regent's PostgreSQL journal).
pub async fn pgbench_setup(client: &Client, schema: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
             CREATE TABLE {schema}.journal (
                 ordering BIGINT GENERATED ALWAYS AS IDENTITY, entity_id TEXT NOT NULL, revision BIGINT NOT NULL,
                 shard INT NOT NULL, written_at BIGINT NOT NULL, payload BYTEA NOT NULL,
                 tx_id BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text)::bigint,
                 PRIMARY KEY (entity_id, revision));
             CREATE UNIQUE INDEX ON {schema}.journal (ordering);
             CREATE INDEX ON {schema}.journal (shard, ordering);
             CREATE INDEX ON {schema}.journal (shard, tx_id, ordering);
             CREATE SEQUENCE {schema}.rev;
             -- Incompressible payloads (PostgreSQL compresses values over ~2 kB): one row per size, copied into
             -- each inserted row.
             CREATE TABLE {schema}.pad (n INT PRIMARY KEY, p BYTEA NOT NULL);"
        ))
        .await?;
    Ok(())
}

/// Where and how pgbench runs.
pub struct Pgbench<'a> {
    pub bin: &'a Path,
    pub target: &'a PgTarget,
    pub client: &'a Client,
    pub schema: &'a str,
    pub dir: &'a Path,
}

/// Runs pgbench with one journal-shaped INSERT per transaction (autocommit) at `clients`.
pub async fn pgbench(b: &Pgbench<'_>, clients: usize, payload: usize, secs: u64) -> anyhow::Result<PgbenchResult> {
    let Pgbench { bin: pgbench, target, client, schema, dir } = *b;
    let pad = crate::handler::noise(payload);
    client
        .execute(
            &format!("INSERT INTO {schema}.pad (n, p) VALUES ($1, $2) ON CONFLICT (n) DO NOTHING"),
            &[&(payload as i32), &pad],
        )
        .await?;
    let script = dir.join(format!("pgbench-{payload}.sql"));
    std::fs::write(
        &script,
        format!(
            "\\set e random(1, 1000000)\n\
             INSERT INTO {schema}.journal (entity_id, revision, shard, written_at, payload) \
             SELECT 'e-' || :client_id || '-' || :e, nextval('{schema}.rev'), :e % 16, 0, p \
             FROM {schema}.pad WHERE n = {payload};\n"
        ),
    )?;
    let before = stats(client).await?;
    let output = tokio::process::Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-T", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string(), "-f"])
        .arg(&script)
        .args(["-h", &target.host, "-p", &target.port.to_string(), "-U", &target.user, &target.database])
        .env("PGPASSWORD", &target.password)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // let the backends' statistics reach the view
    let after = stats(client).await?;
    let field = |prefix: &str| -> anyhow::Result<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix)).with_context(|| format!("no {prefix:?} in {text}"))?;
        Ok(line[prefix.len()..].split_whitespace().next().unwrap_or("").parse()?)
    };
    let tps = field("tps = ")?;
    let latency_ms = field("latency average = ")?;
    let done = field("number of transactions actually processed: ")?.max(1.0);
    Ok(PgbenchResult {
        clients,
        payload,
        tps,
        latency_ms,
        commits_per_tx: (after.xact_commit - before.xact_commit) as f64 / done,
        write_tx_per_tx: (after.next_xid - before.next_xid) as f64 / done,
        wal_bytes_per_tx: (after.wal_bytes - before.wal_bytes) / done,
    })
}
