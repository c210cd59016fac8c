//! CoS's circuit breaker around handler calls (`COS_WRITE_SIDE_BREAKER_*`, `COS_READ_SIDE_BREAKER_*`), with the
//! states of Pekko's `CircuitBreaker`, which CoS uses:
//!
//! - **closed**: calls go through; `max_failures` failed calls in a row open the circuit (a success resets the
//!   count);
//! - **open**: every call fails at once, without reaching the handler, for `reset_timeout`;
//! - **half-open**: then one trial call goes through (the others still fail at once): its success closes the
//!   circuit, its failure opens it again for `reset_timeout`.
//!
//! A call running longer than `call_timeout` is abandoned and counts as a failure. What fails at once, or times
//! out, is answered as CoS answers it: `INTERNAL` with Pekko's messages ([`OPEN_MESSAGE`], [`TIMEOUT_MESSAGE`]).
//!
//! Regent's decision where CoS counts every exception: only a status saying the handler could not answer properly
//! counts as a failure ([`counts_as_failure`]: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
//! `INTERNAL`, `UNKNOWN`, `UNIMPLEMENTED`, `DATA_LOSS`). A handler that rejects commands (`INVALID_ARGUMENT`,
//! `NOT_FOUND`, `FAILED_PRECONDITION`, ...) is healthy: in CoS five rejections in a row would stop every command of
//! the node for a minute.

use std::sync::Mutex;
use std::time::Instant;

use tonic::{Code, Status};
use tracing::{info, warn};

use crate::config::BreakerSettings;

/// What an open circuit answers (Pekko's `CircuitBreakerOpenException`).
pub const OPEN_MESSAGE: &str = "Circuit Breaker is open; calls are failing fast";
/// What a call abandoned after `call_timeout` answers (Pekko's timeout).
pub const TIMEOUT_MESSAGE: &str = "Circuit Breaker Timed out.";

/// One circuit breaker; share it (`Arc`) among the callers it protects.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// Names the breaker in logs: `write side`, `read side <id>`.
    name: String,
    settings: BreakerSettings,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `trial`: the one call let through is in flight.
    HalfOpen {
        trial: bool,
    },
}

/// Whether a call's outcome counts against the circuit.
pub fn counts_as_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Unimplemented
            | Code::DataLoss
    )
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, settings: BreakerSettings) -> Self {
        Self { name: name.into(), settings, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    /// Runs `call` through the breaker.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let mut admitted = Admitted { breaker: self, trial: self.admit()?, settled: false };
        let outcome = tokio::time::timeout(self.settings.call_timeout, call)
            .await
            .unwrap_or_else(|_| Err(Status::internal(TIMEOUT_MESSAGE)));
        admitted.settle(outcome.as_ref().err().is_some_and(counts_as_failure));
        outcome
    }

    /// [`call`](Self::call) through `breaker` when there is one, else `call` as it is.
    pub async fn guard<T>(breaker: Option<&Self>, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        match breaker {
            Some(breaker) => breaker.call(call).await,
            None => call.await,
        }
    }

    /// Lets a call through, or refuses it while the circuit is open; `Ok(true)` for the half-open trial.
    fn admit(&self) -> Result<bool, Status> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            State::Closed { .. } => Ok(false),
            State::Open { until } if Instant::now() >= until => {
                info!(breaker = %self.name, "circuit breaker half-open: one trial call");
                *state = State::HalfOpen { trial: true };
                Ok(true)
            }
            State::HalfOpen { trial: false } => {
                *state = State::HalfOpen { trial: true };
                Ok(true)
            }
            State::Open { .. } | State::HalfOpen { trial: true } => Err(Status::internal(OPEN_MESSAGE)),
        }
    }

    fn record(&self, trial: bool, failed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let open = State::Open { until: Instant::now() + self.settings.reset_timeout };
        *state = match (*state, failed) {
            (State::HalfOpen { .. }, false) if trial => {
                info!(breaker = %self.name, "circuit breaker closed");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { .. }, true) if trial => {
                warn!(breaker = %self.name, reset_ms = self.settings.reset_timeout.as_millis() as u64,
                    "circuit breaker opened again: the trial call failed");
                open
            }
            (State::Closed { .. }, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) if failures + 1 >= self.settings.max_failures => {
                warn!(breaker = %self.name, failures = failures + 1, reset_ms = self.settings.reset_timeout.as_millis() as u64,
                    "circuit breaker opened: calls fail at once until the reset timeout");
                open
            }
            (State::Closed { failures }, true) => State::Closed { failures: failures + 1 },
            // A call admitted while closed that ends after the circuit opened changes nothing.
            (other, _) => other,
        };
    }

    /// The trial call went away without an outcome (its caller was cancelled): the next call is the trial.
    fn abandon_trial(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == (State::HalfOpen { trial: true }) {
            *state = State::HalfOpen { trial: false };
        }
    }
}

/// A call let through, until its outcome is recorded (or it is dropped unfinished).
struct Admitted<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    settled: bool,
}

impl Admitted<'_> {
    fn settle(&mut self, failed: bool) {
        self.settled = true;
        self.breaker.record(self.trial, failed);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.settled && self.trial {
            self.breaker.abandon_trial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(max_failures: u32, reset_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerSettings {
                max_failures,
                call_timeout: Duration::from_millis(200),
                reset_timeout: Duration::from_millis(reset_ms),
            },
        )
    }

    async fn fail(b: &CircuitBreaker) -> Status {
        b.call(async { Err::<(), _>(Status::unavailable("down")) }).await.unwrap_err()
    }

    async fn succeed(b: &CircuitBreaker) -> Result<u32, Status> {
        b.call(async { Ok(7) }).await
    }

    #[tokio::test]
    async fn opens_after_max_failures_in_a_row_and_fails_fast() {
        let b = breaker(3, 60_000);
        fail(&b).await;
        fail(&b).await;
        assert_eq!(succeed(&b).await.unwrap(), 7, "a success resets the count");
        for _ in 0..3 {
            assert_eq!(fail(&b).await.code(), Code::Unavailable, "the handler's own status while closed");
        }
        let reached = std::sync::atomic::AtomicBool::new(false);
        let refused = b
            .call(async {
                reached.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!((refused.code(), refused.message()), (Code::Internal, OPEN_MESSAGE));
        assert!(!reached.load(std::sync::atomic::Ordering::SeqCst), "an open circuit never calls");
    }

    #[tokio::test]
    async fn rejections_by_the_handler_do_not_count() {
        let b = breaker(2, 60_000);
        for code in [Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::AlreadyExists] {
            for _ in 0..3 {
                let status = b.call(async { Err::<(), _>(Status::new(code, "no")) }).await.unwrap_err();
                assert_eq!(status.code(), code);
            }
        }
        assert_eq!(succeed(&b).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_slow_call_times_out_and_counts() {
        let b = breaker(1, 60_000);
        let slow = b.call(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        let status = slow.await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::Internal, TIMEOUT_MESSAGE));
        assert_eq!(succeed(&b).await.unwrap_err().message(), OPEN_MESSAGE);
    }

    #[tokio::test]
    async fn half_open_lets_one_trial_through_which_closes_or_reopens() {
        let b = breaker(1, 50);
        fail(&b).await;
        assert_eq!(succeed(&b).await.unwrap_err().message(), OPEN_MESSAGE);
        tokio::time::sleep(Duration::from_millis(80)).await;
        // The trial fails: open again for the reset timeout.
        assert_eq!(fail(&b).await.code(), Code::Unavailable);
        assert_eq!(succeed(&b).await.unwrap_err().message(), OPEN_MESSAGE);
        tokio::time::sleep(Duration::from_millis(80)).await;

        // While the trial is in flight every other call fails at once; its success closes the circuit.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let trial = b.call(async {
            let _ = released.await;
            Ok(1)
        });
        let others = async {
            tokio::task::yield_now().await;
            let refused = succeed(&b).await.unwrap_err();
            let _ = release.send(());
            refused
        };
        let (trial, refused) = tokio::join!(trial, others);
        assert_eq!(trial.unwrap(), 1);
        assert_eq!(refused.message(), OPEN_MESSAGE);
        assert_eq!(succeed(&b).await.unwrap(), 7, "closed again");
    }

    #[tokio::test]
    async fn a_cancelled_trial_lets_the_next_call_try() {
        let b = breaker(1, 10);
        fail(&b).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let cancelled =
            tokio::time::timeout(Duration::from_millis(20), b.call(std::future::pending::<Result<(), _>>()));
        assert!(cancelled.await.is_err());
        assert_eq!(succeed(&b).await.unwrap(), 7, "the next call was the trial, and closed the circuit");
    }
}
