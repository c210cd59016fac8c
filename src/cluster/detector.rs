//! Akka's phi-accrual failure detector (`shared/spec/cluster.md` B.2): suspicion grows with the time since the
//! last heartbeat, measured against the distribution of the intervals seen so far.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The detector of one monitored member.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    threshold: f64,
    acceptable_pause: Duration,
    min_std_deviation: Duration,
    max_samples: usize,
    intervals: VecDeque<f64>,
    last: Option<Instant>,
}

impl PhiAccrual {
    /// `first_heartbeat_estimate` bootstraps the history with two samples, μ ± μ/4 (Akka). Until the first
    /// heartbeat, the detector counts from `start` as if one had arrived then.
    pub fn new(threshold: f64, acceptable_pause: Duration, first_heartbeat_estimate: Duration, start: Instant) -> Self {
        let mean = first_heartbeat_estimate.as_secs_f64() * 1000.0;
        Self {
            threshold,
            acceptable_pause,
            min_std_deviation: Duration::from_millis(100),
            max_samples: 1000,
            intervals: VecDeque::from([mean - mean / 4.0, mean + mean / 4.0]),
            last: Some(start),
        }
    }

    /// A heartbeat arrived at `now`. An interval that ends while the member was unavailable is not recorded.
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let available = self.is_available(now);
            let interval = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
            if available {
                if self.intervals.len() >= self.max_samples {
                    self.intervals.pop_front();
                }
                self.intervals.push_back(interval);
            }
        }
        self.last = Some(now);
    }

    /// φ at `now`.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let elapsed = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        let n = self.intervals.len() as f64;
        let mean = self.intervals.iter().sum::<f64>() / n;
        let variance = self.intervals.iter().map(|i| (i - mean).powi(2)).sum::<f64>() / n;
        let std_dev = variance.sqrt().max(self.min_std_deviation.as_secs_f64() * 1000.0);
        phi(elapsed, mean + self.acceptable_pause.as_secs_f64() * 1000.0, std_dev)
    }

    pub fn is_available(&self, now: Instant) -> bool {
        self.phi(now) < self.threshold
    }
}

/// Akka's logistic approximation of the normal distribution's tail.
fn phi(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if elapsed > mean { -(e / (1.0 + e)).log10() } else { -(1.0 - 1.0 / (1.0 + e)).log10() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_heartbeats_keep_phi_low_and_silence_raises_it() {
        let start = Instant::now();
        let mut detector = PhiAccrual::new(8.0, Duration::from_secs(1), Duration::from_millis(200), start);
        let mut now = start;
        for _ in 0..20 {
            now += Duration::from_millis(200);
            detector.heartbeat(now);
        }
        assert!(detector.is_available(now + Duration::from_millis(300)));
        assert!(detector.phi(now + Duration::from_millis(300)) < 1.0);
        // Beyond the acceptable pause, suspicion passes the threshold.
        assert!(!detector.is_available(now + Duration::from_millis(2500)));
        assert!(detector.phi(now + Duration::from_millis(2500)) > detector.phi(now + Duration::from_millis(1300)));
    }

    #[test]
    fn a_member_never_heard_from_is_suspected_from_the_start() {
        let start = Instant::now();
        let detector = PhiAccrual::new(8.0, Duration::from_secs(1), Duration::from_millis(200), start);
        assert!(detector.is_available(start + Duration::from_millis(500)));
        assert!(!detector.is_available(start + Duration::from_secs(5)));
    }
}
