//! Docker and Compose through their command lines: the images the tests use (built once per test binary), a
//! Compose project that is taken down when dropped, and what `docker inspect` tells of a container.
//!
//! The images: the Debian base from `deploy/scripts/base-image.sh` (pulled, or made with debootstrap where no
//! registry answers), Regent's image from `deploy/Dockerfile`'s `runtime-prebuilt` target with this build's own
//! `regent` binary (no Rust toolchain image needed), and PostgreSQL: the public image when it is present or can be
//! pulled, else `deploy/postgres` built from the Debian base (`deploy/compose.debian-postgres.yaml`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{deploy, repo};

/// The runtime base image (the Dockerfile's default `RUNTIME_IMAGE`).
pub const RUNTIME_BASE: &str = "debian:bookworm-slim";
/// The public PostgreSQL image `deploy/compose.yaml` uses.
pub const PUBLIC_POSTGRES: &str = "postgres:15-bookworm";
/// The tag `deploy/compose.debian-postgres.yaml` gives the PostgreSQL image it builds from Debian's packages.
pub const DEBIAN_POSTGRES: &str = "regent-postgres:15-bookworm";
/// The tag of the image the tests build from `deploy/Dockerfile` with this build's binary.
pub const REGENT_TEST_IMAGE: &str = "regent:deploy-test";

/// Why the container tests cannot run here, or `None`. Only a missing `docker` command skips them: a `docker`
/// whose engine does not answer is a failure (CI has one).
pub fn unavailable() -> Option<String> {
    match Command::new("docker").arg("--version").stdin(Stdio::null()).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("the `docker` command is not installed".into()),
        Err(e) => panic!("cannot run docker: {e}"),
        Ok(_) => None,
    }
}

/// Runs `command` to its end.
pub fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs `command`, panicking with its output unless it succeeds; returns its standard output, trimmed.
pub fn ok(command: &mut Command) -> String {
    let output = run(command);
    if !output.status.success() {
        panic!(
            "{command:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `docker ARGS`, which must succeed.
pub fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args))
}

/// The images the tests run.
#[derive(Debug)]
pub struct Images {
    /// Regent's image (`runtime-prebuilt` with this build's debug binary).
    pub regent: String,
    /// The PostgreSQL image.
    pub postgres: String,
    /// Whether PostgreSQL was built from Debian's packages (then Compose needs `compose.debian-postgres.yaml`).
    pub postgres_from_debian: bool,
}

/// The images, built on first use (once per test binary; Docker's layer cache makes later runs quick).
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let started = Instant::now();
        ok(Command::new("bash").arg(deploy("scripts/base-image.sh")).arg(RUNTIME_BASE));
        let base_ready = started.elapsed();
        let public_postgres = present_or_pulled(PUBLIC_POSTGRES);
        // The two builds install Debian packages: side by side they take the time of the longer one.
        let regent = std::thread::spawn(build_regent_image);
        let postgres = (!public_postgres).then(|| {
            std::thread::spawn(|| {
                docker(&[
                    "build",
                    "-q",
                    "--build-arg",
                    &format!("BASE_IMAGE={RUNTIME_BASE}"),
                    "-t",
                    DEBIAN_POSTGRES,
                    &deploy("postgres").to_string_lossy(),
                ])
            })
        });
        let regent = regent.join().expect("building the Regent image");
        if let Some(postgres) = postgres {
            postgres.join().expect("building the PostgreSQL image");
        }
        eprintln!(
            "deploy: images ready in {:.1?} (base image {:.1?}; PostgreSQL {})",
            started.elapsed(),
            base_ready,
            if public_postgres { "public image" } else { "built from Debian's packages" }
        );
        Images {
            regent,
            postgres: if public_postgres { PUBLIC_POSTGRES } else { DEBIAN_POSTGRES }.into(),
            postgres_from_debian: !public_postgres,
        }
    })
}

fn present_or_pulled(image: &str) -> bool {
    run(Command::new("docker").args(["image", "inspect", image])).status.success()
        || run(Command::new("timeout").args(["120", "docker", "pull", "-q", image])).status.success()
}

/// `deploy/Dockerfile`, target `runtime-prebuilt`, with this build's `regent` binary as the context's only file.
fn build_regent_image() -> String {
    let context = tempfile::tempdir().expect("a temporary build context");
    std::fs::copy(env!("CARGO_BIN_EXE_regent"), context.path().join("regent")).expect("copy the regent binary");
    let previous = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", REGENT_TEST_IMAGE]));
    let built = docker(&[
        "build",
        "-q",
        "-f",
        &deploy("Dockerfile").to_string_lossy(),
        "--target",
        "runtime-prebuilt",
        "-t",
        REGENT_TEST_IMAGE,
        &context.path().to_string_lossy(),
    ]);
    // The image of the previous run, if this build replaced it (a new binary): no need to keep it.
    let previous = String::from_utf8_lossy(&previous.stdout).trim().to_string();
    if previous.starts_with("sha256:") && built != previous {
        let _ = run(Command::new("docker").args(["rmi", &previous]));
    }
    REGENT_TEST_IMAGE.into()
}

/// The size of an image, in bytes.
pub fn image_size(image: &str) -> u64 {
    docker(&["image", "inspect", "-f", "{{.Size}}", image]).parse().expect("an image size")
}

/// A Compose project; `docker compose` (v2) where installed, else `docker-compose` (v1). Dropping it takes the
/// project down, volumes included (printing the last log lines first when the test failed).
pub struct Compose {
    program: Vec<String>,
    pub project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Compose {
    pub fn new(project: &str, files: &[PathBuf], env: &[(&str, String)]) -> Compose {
        let v2 = run(Command::new("docker").args(["compose", "version"])).status.success();
        let program = if v2 { vec!["docker".into(), "compose".into()] } else { vec!["docker-compose".into()] };
        Compose {
            program,
            project: project.into(),
            files: files.to_vec(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    /// `compose -p PROJECT -f FILE... ARGS`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command.args(&self.program[1..]).args(["-p", &self.project]);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command.args(args).envs(self.env.iter().map(|(k, v)| (k, v))).current_dir(repo());
        command
    }

    /// Runs a compose command, which must succeed.
    pub fn run(&self, args: &[&str]) -> String {
        ok(&mut self.command(args))
    }

    /// The containers of `service` (running or not), by their number.
    pub fn containers(&self, service: &str) -> Vec<Container> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let service = format!("label=com.docker.compose.service={service}");
        let format = "{{.ID}}\t{{.Names}}\t{{.Label \"com.docker.compose.container-number\"}}";
        let mut containers: Vec<Container> =
            docker(&["ps", "-a", "--no-trunc", "--filter", &project, "--filter", &service, "--format", format])
                .lines()
                .map(|line| {
                    let mut fields = line.split('\t');
                    let id = fields.next().unwrap_or_default().to_string();
                    let name = fields.next().unwrap_or_default().to_string();
                    let number = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    Container { id, name, number }
                })
                .collect();
        containers.sort_by_key(|c| c.number);
        containers
    }

    /// The one container of `service`.
    pub fn container(&self, service: &str) -> Container {
        let mut containers = self.containers(service);
        assert_eq!(containers.len(), 1, "one container of {service}");
        containers.remove(0)
    }

    /// `compose port --index INDEX SERVICE PORT`: the host address a container's port is published on.
    pub fn port(&self, service: &str, index: u32, port: u16) -> String {
        self.run(&["port", "--index", &index.to_string(), service, &port.to_string()])
    }

    /// The last `tail` log lines of every container.
    pub fn logs(&self, tail: usize) -> String {
        let output = run(&mut self.command(&["logs", "--no-color", "--tail", &tail.to_string()]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let path = std::env::temp_dir().join(format!("{}.log", self.project));
            match std::fs::write(&path, self.logs(100_000)) {
                Ok(()) => eprintln!("deploy: the containers' logs are in {}", path.display()),
                Err(e) => eprintln!("deploy: cannot keep the containers' logs in {}: {e}", path.display()),
            }
            eprintln!("deploy: last log lines of {}:\n{}", self.project, self.logs(60));
        }
        let _ = run(&mut self.command(&["--profile", "otel", "down", "-v", "--remove-orphans", "-t", "10"]));
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// Its number within its service (1, 2, ...).
    pub number: u32,
}

impl Container {
    /// `docker inspect`'s record of it.
    pub fn inspect(&self) -> Value {
        let text = docker(&["inspect", &self.id]);
        let mut all: Vec<Value> = serde_json::from_str(&text).expect("docker inspect prints JSON");
        all.remove(0)
    }

    /// Its host name: its node name and advertised cluster host.
    pub fn hostname(&self) -> String {
        self.inspect()["Config"]["Hostname"].as_str().unwrap_or_default().into()
    }

    pub fn status(&self) -> String {
        self.inspect()["State"]["Status"].as_str().unwrap_or_default().into()
    }

    pub fn exit_code(&self) -> i64 {
        self.inspect()["State"]["ExitCode"].as_i64().unwrap_or(-1)
    }

    pub fn restart_count(&self) -> i64 {
        self.inspect()["RestartCount"].as_i64().unwrap_or(0)
    }

    /// The health check's verdict (`starting`, `healthy`, `unhealthy`), if the container has one.
    pub fn health(&self) -> Option<String> {
        self.inspect()["State"]["Health"]["Status"].as_str().map(Into::into)
    }

    /// The networks it is attached to.
    pub fn networks(&self) -> Vec<String> {
        self.inspect()["NetworkSettings"]["Networks"]
            .as_object()
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `host:port` where its `port`/tcp is published, while it is.
    pub fn published(&self, port: u16) -> Option<String> {
        published(&self.inspect(), port)
    }

    /// `docker stop -t GRACE`: SIGTERM, then SIGKILL after `grace`; returns how long it took.
    pub fn stop(&self, grace: Duration) -> Duration {
        let started = Instant::now();
        docker(&["stop", "-t", &grace.as_secs().to_string(), &self.id]);
        started.elapsed()
    }

    pub fn start(&self) {
        docker(&["start", &self.id]);
    }

    pub fn kill(&self) {
        docker(&["kill", &self.id]);
    }
}

/// `host:port` where a container (as `docker inspect` describes it) publishes `port`/tcp.
pub fn published(inspect: &Value, port: u16) -> Option<String> {
    let binding = inspect["NetworkSettings"]["Ports"][format!("{port}/tcp")].as_array()?.first()?.clone();
    let host = match binding["HostIp"].as_str() {
        Some("") | Some("0.0.0.0") | None => "127.0.0.1",
        Some(ip) => ip,
    }
    .to_string();
    Some(format!("{host}:{}", binding["HostPort"].as_str()?))
}

/// The running containers among `ids` and where each publishes `port` (one `docker inspect` for all).
pub fn running_endpoints(ids: &[String], port: u16) -> Vec<(String, String)> {
    if ids.is_empty() {
        return Vec::new();
    }
    let output = run(Command::new("docker").arg("inspect").args(ids));
    let all: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    all.iter()
        .filter(|c| c["State"]["Running"].as_bool() == Some(true) && c["State"]["Restarting"].as_bool() != Some(true))
        .filter_map(|c| Some((c["Id"].as_str()?.to_string(), published(c, port)?)))
        .collect()
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after `patience`; returns the value
/// and how long it took.
pub fn eventually<T>(what: &str, patience: Duration, mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < patience, "timed out after {patience:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
