//! One ready worker as the scheduler sees it: its window, the assignments it holds in order,
//! and what recycling and liveness need (tasks done, age, RSS, last message).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::policy::{Limits, RetireReason};

#[derive(Debug)]
pub(super) struct Worker {
    pub pid: u32,
    /// Most assignments this worker takes at once: min(its credits, the orchestrator's window).
    pub window: u32,
    /// Task ids assigned and not answered, in the order sent. The worker runs them in that
    /// order, so the front one is running (SPEC.md §6 rule 5).
    pub held: VecDeque<u64>,
    /// Assignments held that are not known to be short: while non-zero, nothing is pipelined.
    pub long_held: u32,
    /// When the front assignment started (approximately: when the one before it was answered).
    pub front_since: Instant,
    /// Dispatch sequence number of the last assignment, for least-recently-used ties.
    pub last_dispatch: u64,
    pub tasks_done: u64,
    pub ready_at: Instant,
    pub lifetime: Option<Duration>,
    pub rss_kb: u64,
    pub last_seen: Instant,
    /// Since when it has held nothing (for shrinking an elastic pool).
    pub idle_since: Instant,
    /// Why it gets no new assignments, once it is being retired.
    pub retiring: Option<RetireReason>,
    /// `Shutdown` was sent (after its last assignment was answered).
    pub shutdown_sent: bool,
    /// A spare, ready but taking no tasks until it replaces a worker that is recycled, so
    /// recycling never leaves the pool short while a replacement starts.
    pub standby: bool,
}

impl Worker {
    pub fn new(pid: u32, window: u32, lifetime: Option<Duration>, standby: bool, now: Instant) -> Self {
        Worker {
            pid,
            window,
            held: VecDeque::new(),
            long_held: 0,
            front_since: now,
            last_dispatch: 0,
            tasks_done: 0,
            ready_at: now,
            lifetime,
            rss_kb: 0,
            last_seen: now,
            idle_since: now,
            retiring: None,
            shutdown_sent: false,
            standby,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.held.len() as u32
    }

    /// Can take a task now: idle, or (for a short task) window left and only short tasks held.
    pub fn can_take(&self, short: bool) -> bool {
        !self.standby
            && self.retiring.is_none()
            && (self.held.is_empty() || (short && self.long_held == 0 && self.in_flight() < self.window))
    }

    /// Retires the worker if a recycling limit is reached; returns the reason the first time.
    /// A standby's clock starts when it is promoted.
    pub fn check_limits(&mut self, limits: &Limits, now: Instant) -> Option<RetireReason> {
        if self.retiring.is_some() || self.standby {
            return None;
        }
        let reason = if limits.max_tasks > 0 && self.tasks_done >= limits.max_tasks {
            RetireReason::MaxTasks
        } else if limits.max_rss_kb > 0 && self.rss_kb > limits.max_rss_kb {
            RetireReason::MaxRss
        } else if self.lifetime.is_some_and(|l| now.duration_since(self.ready_at) >= l) {
            RetireReason::MaxLifetime
        } else {
            return None;
        };
        self.retiring = Some(reason);
        Some(reason)
    }
}
