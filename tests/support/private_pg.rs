//! A private PostgreSQL server for the tests that restart, stop or crash the database (`tests/pg_faults.rs`): the
//! shared test server (`REGENT_TEST_DATABASE_URL`) serves every other test and must never be touched.
//!
//! [`PrivatePg::start`] runs `initdb` in a temporary folder and `pg_ctl start` on a free loopback port (fsync on,
//! as `scripts/pg.sh` does), with the binaries of `/usr/lib/postgresql/*/bin` (or `initdb` on the `PATH`); as root
//! they run as the `postgres` user (`runuser -u postgres --`). Dropping the value stops the server (immediate
//! mode) and removes its folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use regent::config::PostgresConfig;
use tokio_postgres::NoTls;

/// One private server.
pub struct PrivatePg {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    pub port: u16,
    as_postgres: bool,
}

/// The folder holding `initdb` and `pg_ctl`.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    if let Some(bin) = found.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()))
        .and_then(|dir| dir.canonicalize().ok());
    on_path.unwrap_or_else(|| {
        panic!("no PostgreSQL binaries (initdb, pg_ctl): install Debian's postgresql package (scripts/pg.sh does)")
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PrivatePg {
    /// Initialises and starts a server; panics (with its log) if it does not come up.
    pub async fn start() -> PrivatePg {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("regent-private-pg-").tempdir().expect("a folder for PostgreSQL");
        if as_postgres {
            let status = Command::new("chown").arg("postgres").arg(dir.path()).status().expect("run chown");
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let port = super::cluster::free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let pg = PrivatePg { bin, dir: Some(dir), port, as_postgres };
        let data = pg.data();
        pg.run_ok("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.start_server();
        pg.wait_accepting().await;
        pg
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the server folder").path()
    }

    fn data(&self) -> String {
        self.path().join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.path().join("log").display().to_string()
    }

    /// The server log's last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        command.args(args).current_dir(self.path()).output().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    #[track_caller]
    fn run_ok(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail(30)
        );
    }

    /// `pg_ctl start` options: loopback only, this port, the socket in our folder, fsync on.
    fn server_options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port,
            self.path().display()
        )
    }

    fn start_server(&self) {
        let (data, log, options) = (self.data(), self.log(), self.server_options());
        self.run_ok("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"]);
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub async fn start_again(&self) {
        self.start_server();
        self.wait_accepting().await;
    }

    /// `pg_ctl stop -m fast`: sessions are ended, the server shuts down cleanly.
    pub fn stop(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "-m", "fast", "stop"]);
    }

    /// `pg_ctl stop -m immediate`: every process quits at once, without a checkpoint (a crash: the next start
    /// runs recovery from the WAL).
    pub fn crash(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "-m", "immediate", "stop"]);
    }

    /// `pg_ctl restart -m immediate`, then waits until it accepts connections again.
    pub async fn restart_immediate(&self) {
        let (data, log, options) = (self.data(), self.log(), self.server_options());
        self.run_ok(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "-m", "immediate", "-o", &options, "restart"],
        );
        self.wait_accepting().await;
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Settings for a node on this server, in a fresh schema.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: String::new(),
            database: "postgres".into(),
            schema: crate::common::pg::unique_schema(),
            pool_max_size: 8,
            ..PostgresConfig::default()
        }
    }

    /// A direct connection (panics if the server does not answer).
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.try_connect().await.unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }

    pub async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn wait_accepting(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = match self.try_connect().await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                std::time::Instant::now() < deadline,
                "the private PostgreSQL did not accept connections within 60 s: {last}\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-w", "-t", "30", "-m", "immediate", "stop"]);
        if std::thread::panicking() {
            eprintln!("===== private PostgreSQL log:\n{}", self.log_tail(40));
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
