//! Processes: CPU time and RSS from `/proc`, spawning and stopping the node, the handler and the echo server.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux unless told otherwise).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the command name: (ppid, utime, stime, cutime, cstime) in ticks.
fn stat(pid: u32) -> Option<(u32, u64, u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid = field 4 → f[1]; utime = 14 → f[11]; stime f[12]; cutime f[13]; cstime f[14]
    Some((f[1].parse().ok()?, f[11].parse().ok()?, f[12].parse().ok()?, f[13].parse().ok()?, f[14].parse().ok()?))
}

/// CPU seconds (user + system) used by one process so far.
pub fn cpu_secs(pid: u32, ticks: f64) -> f64 {
    stat(pid).map(|(_, u, s, _, _)| (u + s) as f64 / ticks).unwrap_or(0.0)
}

/// CPU seconds of a PostgreSQL server: the postmaster (with its reaped children, so exited backends count) plus
/// every live child process.
pub fn pg_cpu_secs(postmaster: u32, ticks: f64) -> f64 {
    let mut total = stat(postmaster).map(|(_, u, s, cu, cs)| u + s + cu + cs).unwrap_or(0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some((ppid, u, s, _, _)) = stat(pid)
                && ppid == postmaster
            {
                total += u + s;
            }
        }
    }
    total as f64 / ticks
}

/// The parent of a process (the postmaster of a backend).
pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|(ppid, ..)| ppid)
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that is stopped with SIGTERM (then SIGKILL) when asked.
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    pub name: String,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file).kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("no pid")?;
        Ok(Proc { child, pid, name: name.into() })
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            eprintln!("{} (pid {}) did not stop within 10 s; killing it", self.name, self.pid);
            let _ = self.child.kill().await;
        }
    }
}

/// Polls `grpc.health.v1.Health/Check` of `service` at `endpoint` until it answers SERVING; returns how long
/// that took from `since`.
pub async fn wait_serving(
    endpoint: &str,
    service: &str,
    since: Instant,
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.to_string())?.connect().await {
            let mut client = HealthClient::new(channel);
            if let Ok(reply) = client.check(HealthCheckRequest { service: service.into() }).await
                && reply.into_inner().status == ServingStatus::Serving as i32
            {
                return Ok(since.elapsed());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("process exited before it was ready ({status})");
        }
        if since.elapsed() > limit {
            bail!("{endpoint} not SERVING after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
