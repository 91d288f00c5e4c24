//! Attempts that end without a result for their client: the worker died or was killed (timeout,
//! cancel), or its result asked for a retry. A timed-out or died attempt, or one that asked, is
//! tried again after the policy's backoff while retries remain (SPEC.md §6 rule 6); otherwise
//! the client is answered with the error kind the failure maps to.

use std::time::Instant;

use neutrino_protocol::{ErrorInfo, ErrorKind};

use super::task::InFlight;
use super::{Answer, Payload, Scheduler};

/// How a worker's attempt at its running task ended, when the worker did not answer it.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Timeout,
    WorkerDied(String),
    Cancelled,
}

impl Failure {
    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Timeout => ErrorKind::Timeout,
            Failure::WorkerDied(_) => ErrorKind::WorkerDied,
            Failure::Cancelled => ErrorKind::Cancelled,
        }
    }

    /// What happened to the worker, for a task this failure hit (the running one, or one held
    /// behind it).
    pub(super) fn worker_text(&self) -> String {
        match self {
            Failure::Timeout => "its worker was killed after another task overran its timeout".into(),
            Failure::WorkerDied(why) => why.clone(),
            Failure::Cancelled => "cancelled while it ran; its worker was killed and replaced".into(),
        }
    }

    pub(super) fn error(&self, text: &str) -> ErrorInfo {
        ErrorInfo::neutrino(self.kind(), text)
    }
}

impl<P: Payload> Scheduler<P> {
    /// An attempt ended without a result: retry it if it may be, else answer it.
    pub(super) fn attempt_failed(&mut self, f: InFlight<P>, failure: &Failure, now: Instant) -> Option<Answer> {
        let f = match failure {
            // Retried: nothing to answer yet.
            Failure::Timeout | Failure::WorkerDied(_) => self.retry(f, None, now)?,
            Failure::Cancelled => f,
        };
        let text = match failure {
            Failure::Timeout => format!(
                "attempt {} overran its timeout of {}s; the worker was killed and replaced",
                f.attempt,
                f.policy.timeout_s.unwrap_or(0.0)
            ),
            other => other.worker_text(),
        };
        Some(Answer { origin: f.origin(), error: failure.error(&text) })
    }

    /// Schedules the next attempt after the backoff (at least `requested_s`, the delay the task
    /// asked for) if retries remain; otherwise hands the attempt back, to be answered.
    pub(super) fn retry(&mut self, mut f: InFlight<P>, requested_s: Option<f64>, now: Instant) -> Option<InFlight<P>> {
        if f.policy.retries == 0 {
            return Some(f);
        }
        let Some(payload) = f.copy.take() else { return Some(f) };
        let delay = f.policy.backoff(f.attempt, requested_s);
        self.queue.delay(f.into_task(payload, true), now + delay);
        None
    }
}
