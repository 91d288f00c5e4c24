//! Per-task policy (timeout, retries, backoff) and the worker recycling limits, with the
//! arithmetic on them: backoff with jitter and jittered lifetimes (SPEC.md §6 rules 5-7).

use std::time::Duration;

/// Defaults when neither the app nor the call says (the SDK's decorator has the same).
pub const DEFAULT_BACKOFF_S: f64 = 1.0;
pub const DEFAULT_BACKOFF_MAX_S: f64 = 60.0;
/// A worker's lifetime limit varies by up to this fraction either way, so a pool started at
/// once does not recycle at once.
const LIFETIME_JITTER: f64 = 0.1;

/// How one task runs: from the app's decorator, overridden per call by `SubmitTask`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    pub timeout_s: Option<f64>,
    /// Retries left (0: this attempt is the last).
    pub retries: u32,
    pub backoff_s: f64,
    pub backoff_max_s: f64,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        TaskPolicy { timeout_s: None, retries: 0, backoff_s: DEFAULT_BACKOFF_S, backoff_max_s: DEFAULT_BACKOFF_MAX_S }
    }
}

impl TaskPolicy {
    /// Delay before attempt `attempt + 1`: `min(max, base × 2^(attempt-1))` scaled by a random
    /// factor in [0.5, 1], and never less than what the task itself asked for.
    pub fn backoff(&self, attempt: u32, requested_s: Option<f64>) -> Duration {
        let exp = self.backoff_s * 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        let jittered = exp.min(self.backoff_max_s) * (0.5 + 0.5 * fastrand::f64());
        let secs = jittered.max(requested_s.unwrap_or(0.0));
        Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
    }
}

/// When to retire a worker (SPEC.md §6 rule 7); zero or `None` turns a limit off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub max_tasks: u64,
    pub max_rss_kb: u64,
    pub max_lifetime: Option<Duration>,
}

impl Limits {
    /// This worker's own lifetime limit, jittered by up to ±10%.
    pub fn lifetime_for_new_worker(&self) -> Option<Duration> {
        self.max_lifetime.map(|d| d.mul_f64(1.0 - LIFETIME_JITTER + 2.0 * LIFETIME_JITTER * fastrand::f64()))
    }
}

/// Why a worker is retired: a recycling limit it reached, or an elastic pool shrinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    MaxTasks,
    MaxRss,
    MaxLifetime,
    Idle,
}

impl RetireReason {
    /// The `reason` label of `neutrino_orchestrator_worker_recycles_total`, also in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            RetireReason::MaxTasks => "max_tasks",
            RetireReason::MaxRss => "max_rss",
            RetireReason::MaxLifetime => "max_lifetime",
            RetireReason::Idle => "idle",
        }
    }
}

impl std::fmt::Display for RetireReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let p = TaskPolicy { timeout_s: None, retries: 5, backoff_s: 1.0, backoff_max_s: 5.0 };
        for _ in 0..200 {
            let first = p.backoff(1, None).as_secs_f64();
            assert!((0.5..=1.0).contains(&first), "{first}");
            let third = p.backoff(3, None).as_secs_f64();
            assert!((2.0..=4.0).contains(&third), "{third}");
            let capped = p.backoff(30, None).as_secs_f64();
            assert!((2.5..=5.0).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn a_delay_the_task_asked_for_is_respected() {
        let p = TaskPolicy { timeout_s: None, retries: 1, backoff_s: 0.01, backoff_max_s: 0.02 };
        assert!(p.backoff(1, Some(3.0)) >= Duration::from_secs(3));
    }

    #[test]
    fn lifetimes_are_jittered_within_ten_percent() {
        let l = Limits { max_lifetime: Some(Duration::from_secs(100)), ..Limits::default() };
        for _ in 0..200 {
            let d = l.lifetime_for_new_worker().unwrap().as_secs_f64();
            assert!((90.0..=110.0).contains(&d), "{d}");
        }
        assert_eq!(Limits::default().lifetime_for_new_worker(), None);
    }
}
