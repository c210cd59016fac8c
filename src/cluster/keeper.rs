//! The lease keeper: renews this node's membership lease and says, through a [`Health`] watch, whether the node
//! may still act as a member (`shared/spec/cluster.md` C.2, "Node lease").
//!
//! It renews every `renew_interval` (TTL/3 by default) on a **dedicated** connection, never the store's pool, so
//! that a pool saturated by journal writes cannot starve the lease. It turns [`Health::Fenced`], for good, when:
//! - the local monotonic clock reaches *send time of the last successful renewal + TTL − margin*: the lease may
//!   be about to expire in the database and this node can no longer know, so it stops as if it had (this works
//!   with the database unreachable or the renewal hanging on a dead TCP connection);
//! - a renewal reports the member `down` or `removed` (the split-brain resolver or a newer incarnation of this node
//!   decided), or the member's row is gone.
//!
//! A renewal measured from its send time is conservative: the database computes the new expiry when it executes
//! the statement, later. The margin absorbs the drift between the two clocks' rates and the time the node needs
//! to stop writing once fenced. A failed renewal drops the connection and reconnects with exponential backoff
//! until the deadline.
//!
//! A fenced incarnation never becomes healthy again: the node stops its entities, shards and singletons, refuses
//! traffic and exits, to come back as a new incarnation. A process paused past its deadline (SIGSTOP) cannot see
//! that it is fenced; the journal's fencing predicate ([`super::membership::WRITER_VALID_SQL`]) covers that case.

use deadpool_postgres::tokio_postgres::{self, NoTls};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use super::membership::renew_on;
use super::{Error, MemberId, MemberStatus, Result};
use crate::config::PostgresConfig;
use crate::persistence;

/// Whether this node may act as a cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The lease is known to be valid.
    Healthy,
    /// The node must stop acting as a member and exit; it never becomes healthy again.
    Fenced { reason: String },
}

impl Health {
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }
}

/// How the keeper renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeeperOptions {
    /// The lease's time to live, given to the database at each renewal.
    pub ttl: Duration,
    /// The keeper fences the node this long before the lease could expire.
    pub margin: Duration,
    /// Time between two renewals (also the timeout of one renewal or connection attempt).
    pub renew_interval: Duration,
    /// First and longest wait before reconnecting after a failure.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl KeeperOptions {
    /// Renewals every `ttl / 3`, a margin of `ttl / 10` (at least 50 ms), backoff from 50 ms up to `ttl / 12`.
    ///
    /// The backoff stays short because the keeper fences the node `ttl - margin` after the last renewal, which may
    /// have been up to `ttl / 3` before the database went away: with retries `ttl / 3` apart, a retry could fall
    /// after the deadline and fence a node whose database was back (a 4 s `pg_ctl restart` fenced members at the
    /// default 10 s TTL, `tests/pg_faults.rs`). With `ttl / 12`, an outage of up to about `ttl / 2` is survived.
    pub fn new(ttl: Duration) -> Self {
        let renew_interval = ttl / 3;
        let backoff_max = ttl / 12;
        Self {
            ttl,
            margin: (ttl / 10).max(Duration::from_millis(50)).min(ttl / 2),
            renew_interval,
            backoff_min: Duration::from_millis(50).min(backoff_max),
            backoff_max,
        }
    }

    /// How long after a renewal was sent the node stops trusting it.
    fn trust(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }
}

/// Until when this node may trust its own lease, by its monotonic clock: the keeper's fencing deadline, moved on
/// by each successful renewal. Entities check it before every command, so that a process resumed after a pause
/// longer than its lease (SIGSTOP) refuses work at once, before its keeper has even run: nothing it does then can
/// overlap with the member that took its entities over.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    base: std::time::Instant,
    /// Nanoseconds after `base`; 0 once fenced.
    until: Arc<AtomicU64>,
}

impl LeaseClock {
    fn new() -> Self {
        Self { base: std::time::Instant::now(), until: Arc::new(AtomicU64::new(0)) }
    }

    /// Whether the lease is still trusted now.
    pub fn is_trusted(&self) -> bool {
        (self.base.elapsed().as_nanos() as u64) < self.until.load(Ordering::Acquire)
    }

    fn trust_until(&self, deadline: Instant) {
        let nanos = deadline.into_std().saturating_duration_since(self.base).as_nanos() as u64;
        self.until.fetch_max(nanos, Ordering::AcqRel);
    }

    fn revoke(&self) {
        self.until.store(0, Ordering::Release);
    }
}

/// The running keeper. Dropping it (or [`stop`](Self::stop)) stops renewing and reports the node fenced.
#[derive(Debug)]
pub struct LeaseKeeper {
    health: Arc<watch::Sender<Health>>,
    clock: LeaseClock,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Opens the dedicated connection to the configured schema, renews `member`'s lease once and starts renewing
    /// it in the background. Fails if that first renewal fails, or finds the member down, removed
    /// ([`Error::Tombstoned`]) or missing ([`Error::UnknownMember`]): the member must have joined.
    pub async fn start(postgres: &PostgresConfig, member: MemberId, options: KeeperOptions) -> Result<Self> {
        persistence::postgres::validate_identifier(&postgres.schema)?;
        let mut config = persistence::postgres::connection_config(postgres);
        config.application_name(format!("regent-keeper:{}", postgres.schema)).connect_timeout(options.renew_interval);
        let renewer = Renewer { config, member, options };

        let mut connection = None;
        let (sent, status) = renewer.attempt(&mut connection, Instant::now()).await?;
        if status.is_terminal() {
            return Err(Error::Tombstoned(renewer.member, status));
        }
        let health = Arc::new(watch::Sender::new(Health::Healthy));
        let clock = LeaseClock::new();
        clock.trust_until(sent + options.trust());
        let (shutdown, stopped) = oneshot::channel();
        let task = tokio::spawn(renewer.run(sent, connection, Arc::clone(&health), clock.clone(), stopped));
        Ok(Self { health, clock, shutdown: Some(shutdown), task })
    }

    /// The clock entities check before acting as this member's writers.
    pub fn clock(&self) -> LeaseClock {
        self.clock.clone()
    }

    /// A receiver of the node's health, to select on in every component that must stop when fenced.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Stops renewing (a graceful leave, once the member is `exiting` or `removed`); the node is fenced from now.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
        self.clock.revoke();
        fence(&self.health, "the lease keeper was stopped".into());
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
        self.clock.revoke();
        fence(&self.health, "the lease keeper was dropped".into());
    }
}

/// Reports the node fenced, keeping the first reason.
fn fence(health: &watch::Sender<Health>, reason: String) {
    health.send_if_modified(|current| {
        if current.is_fenced() {
            return false;
        }
        tracing::error!(%reason, "cluster member fenced");
        *current = Health::Fenced { reason };
        true
    });
}

/// The dedicated connection and the task driving it, stopped with it.
struct Connection {
    client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Renewer {
    config: tokio_postgres::Config,
    member: MemberId,
    options: KeeperOptions,
}

impl Renewer {
    async fn run(
        self,
        mut last_renewal: Instant,
        mut connection: Option<Connection>,
        health: Arc<watch::Sender<Health>>,
        clock: LeaseClock,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let fence = |health: &watch::Sender<Health>, reason: String| {
            clock.revoke();
            fence(health, reason);
        };
        let mut next = last_renewal + self.options.renew_interval;
        let mut backoff = self.options.backoff_min;
        loop {
            let deadline = last_renewal + self.options.trust();
            let outcome = tokio::select! {
                biased;
                _ = &mut stopped => return,
                () = sleep_until(deadline) => {
                    let reason = format!(
                        "no lease renewal for {:?} (ttl {:?}, margin {:?})",
                        deadline - last_renewal, self.options.ttl, self.options.margin
                    );
                    return fence(&health, reason);
                }
                outcome = self.attempt(&mut connection, next) => outcome,
            };
            match outcome {
                Ok((_, status)) if status.is_terminal() => {
                    return fence(&health, format!("member {} is {status}", self.member));
                }
                Ok((sent, _)) => {
                    clock.trust_until(sent + self.options.trust());
                    last_renewal = sent;
                    next = sent + self.options.renew_interval;
                    backoff = self.options.backoff_min;
                }
                Err(Error::UnknownMember(id)) => {
                    return fence(&health, format!("member {id} has no membership row"));
                }
                Err(err) => {
                    tracing::warn!(member = %self.member, error = %err, retry_in = ?backoff, "lease renewal failed");
                    connection = None;
                    next = Instant::now() + backoff;
                    backoff = (backoff * 2).min(self.options.backoff_max);
                }
            }
        }
    }

    /// At `at`: connects if needed and renews once. Returns when the renewal was sent and the member's status.
    async fn attempt(&self, connection: &mut Option<Connection>, at: Instant) -> Result<(Instant, MemberStatus)> {
        sleep_until(at).await;
        let limit = self.options.renew_interval;
        let client = match connection {
            Some(connection) => &connection.client,
            None => {
                let (client, driver) = timeout(limit, self.config.connect(NoTls))
                    .await
                    .map_err(|_| unavailable("connecting timed out"))?
                    .map_err(super::db)?;
                let member = self.member.clone();
                let driver = tokio::spawn(async move {
                    if let Err(err) = driver.await {
                        tracing::debug!(%member, error = %err, "lease keeper connection closed");
                    }
                });
                &connection.insert(Connection { client, driver }).client
            }
        };
        let sent = Instant::now();
        let status = timeout(limit, renew_on(client, &self.member, self.options.ttl))
            .await
            .map_err(|_| unavailable("the renewal timed out"))??;
        Ok((sent, status))
    }
}

fn unavailable(what: &str) -> Error {
    Error::Store(persistence::Error::Unavailable(format!("lease keeper: {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_renew_three_times_per_ttl_and_trust_less_than_the_ttl() {
        let options = KeeperOptions::new(Duration::from_secs(3));
        assert_eq!(options.renew_interval, Duration::from_secs(1));
        assert_eq!(options.margin, Duration::from_millis(300));
        assert_eq!(options.trust(), Duration::from_millis(2700));
        let short = KeeperOptions::new(Duration::from_millis(300));
        assert_eq!(short.margin, Duration::from_millis(50));
        assert!(short.backoff_min <= short.backoff_max);
        // Retries stay close enough together that one lands before the fencing deadline once the database is
        // back: the deadline is `trust()` after a renewal made up to `renew_interval` before the outage.
        let default = KeeperOptions::new(Duration::from_secs(10));
        assert!(default.backoff_max < Duration::from_millis(850), "{:?}", default.backoff_max);
        assert!(default.trust() - default.renew_interval - default.backoff_max >= Duration::from_secs(4));
    }

    #[test]
    fn fencing_keeps_the_first_reason() {
        let health = watch::Sender::new(Health::Healthy);
        fence(&health, "first".into());
        fence(&health, "second".into());
        assert_eq!(*health.borrow(), Health::Fenced { reason: "first".into() });
    }
}
