//! Scenario results for `docs/reliability.md`: every reliability scenario test records what its clients saw and
//! what the checker found, one JSON file per test, in `$REGENT_RELIABILITY_DIR` (default `target/reliability`).
//! The table in `docs/reliability.md` is rendered from these files after a real run.

use std::path::PathBuf;

use serde::Serialize;

use crate::support::history::{History, Outcome, Report};

/// One scenario run, as written to `<dir>/<test>.json`.
#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    /// The scenario's number in `shared/spec/reliability.md` §4.5 (e.g. `"4"`), or a short tag for extra tests.
    pub scenario: String,
    /// The test function that ran it.
    pub test: String,
    /// Logical commands sent (each may have been retried).
    pub commands: usize,
    /// Commands answered OK (their op must be in the journal: I1, I5).
    pub acknowledged: usize,
    /// Commands never answered OK (retries ran out or the error was final): their op may or may not be stored.
    pub indeterminate: usize,
    /// Attempts answered with an error (and retried, or given up), by gRPC code.
    pub failed_attempts: std::collections::BTreeMap<String, usize>,
    /// Invariant violations found by the checker (must be zero).
    pub violations: usize,
    /// Free-form figures of the scenario (failover time, ...).
    pub notes: Vec<String>,
}

impl ScenarioResult {
    pub fn new(scenario: &str, test: &str, history: &History, report: &Report) -> ScenarioResult {
        let commands = history.commands();
        let acknowledged = commands.values().filter(|attempts| attempts.iter().any(|a| a.acked().is_some())).count();
        let mut failed_attempts = std::collections::BTreeMap::new();
        for attempt in &history.attempts {
            if let Outcome::Failed { code, .. } = &attempt.outcome {
                *failed_attempts.entry(format!("{code:?}")).or_default() += 1;
            }
        }
        ScenarioResult {
            scenario: scenario.to_string(),
            test: test.to_string(),
            commands: commands.len(),
            acknowledged,
            indeterminate: commands.len() - acknowledged,
            failed_attempts,
            violations: report.violations.len(),
            notes: report.notes.clone(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> ScenarioResult {
        self.notes.push(note.into());
        self
    }

    /// Writes the result file (best effort: a test never fails because its report could not be written).
    pub fn write(&self) {
        let dir = std::env::var_os("REGENT_RELIABILITY_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("reliability"),
            PathBuf::from,
        );
        let path = dir.join(format!("{}.json", self.test));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(self).unwrap_or_default()));
        if let Err(e) = written {
            eprintln!("could not write {}: {e}", path.display());
        }
    }
}
