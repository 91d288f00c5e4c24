//! Push-on-idle / pull-on-busy scheduling (SPEC.md §6): which waiting task goes to which
//! worker, and what becomes of it. Plain code with no sockets or processes, so tests drive it
//! directly; the broker turns its answers into messages and kills.
//!
//! - `mod.rs`: the [`Scheduler`]: submitting, results, workers joining, failing and retiring,
//!   deadlines, cancelling, draining.
//! - `task.rs`: a task at each stage: waiting, assigned, answered.
//! - `queue.rs`: the tasks waiting for a worker, and those waiting out a retry delay.
//! - `dispatch.rs`: which worker takes the next task; pipelining short tasks.
//! - `retry.rs`: attempts that end without a result: retried, or answered ([`Failure`]).
//! - `worker.rs`: one worker's window, held assignments and recycling state.
//! - `policy.rs`: per-task policy (timeout, retries, backoff), recycling limits, [`RetireReason`].

mod dispatch;
mod policy;
mod queue;
mod retry;
mod task;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use neutrino_protocol::{ErrorInfo, ErrorKind, RejectReason};

pub use policy::{Limits, RetireReason, TaskPolicy, DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S};
use queue::Queue;
pub use retry::Failure;
use task::InFlight;
pub use task::{Answer, Assignment, Origin, Payload, Task, TraceContext};
use worker::Worker;

/// What became of a `TaskResult`.
#[derive(Debug, PartialEq)]
pub enum Finished {
    /// Forward the worker's result to this client.
    Reply(Origin),
    /// The task asked for a retry and has attempts left: it waits for its next attempt.
    Retrying,
    /// Nobody to answer (unknown task, or cancelled meanwhile).
    Dropped,
}

/// What `cancel` found.
#[derive(Debug, PartialEq)]
pub enum Cancelled {
    /// Answer this now (the task never ran, or had not started on its worker).
    Answer(Answer),
    /// The task is running: kill this worker (pid), then call `worker_failed(.., Cancelled)`.
    Kill {
        worker: Vec<u8>,
        pid: u32,
    },
    NotFound,
}

/// Counts of workers by state, for `Pong` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerCounts {
    /// Connected and taking tasks (not retiring, not standby).
    pub ready: u32,
    pub idle: u32,
    pub retiring: u32,
    pub standby: u32,
}

/// Scheduling knobs (from the command line).
#[derive(Debug, Clone)]
pub struct Policy {
    pub queue_limit: usize,
    /// Most credits of a worker's window the orchestrator uses; 1 disables pipelining.
    pub window: u32,
    /// Tasks whose average run time is under this are pipelined (SPEC.md §6 rule 3).
    pub pipeline_max_us: f64,
    pub limits: Limits,
}

#[derive(Debug)]
pub struct Scheduler<P> {
    policy: Policy,
    queue: Queue<P>,
    /// Ordered, so ties in worker choice break the same way every time.
    workers: BTreeMap<Vec<u8>, Worker>,
    in_flight: HashMap<u64, InFlight<P>>,
    run_time_us: HashMap<String, f64>,
    next_task_id: u64,
    dispatch_seq: u64,
    draining: bool,
}

impl<P: Payload> Scheduler<P> {
    pub fn new(policy: Policy) -> Self {
        Scheduler {
            policy,
            queue: Queue::new(),
            workers: BTreeMap::new(),
            in_flight: HashMap::new(),
            run_time_us: HashMap::new(),
            next_task_id: 1,
            dispatch_seq: 0,
            draining: false,
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.policy.limits = limits;
    }

    // ---- tasks in --------------------------------------------------------------------------

    /// Queues a task, or says why it was rejected (a `TaskRejected` reason; the task is dropped).
    pub fn submit(&mut self, task: Task<P>) -> Result<(), RejectReason> {
        if self.draining {
            return Err(RejectReason::Draining);
        }
        if self.queue.len() >= self.policy.queue_limit {
            return Err(RejectReason::Busy);
        }
        self.queue.push_back(task);
        Ok(())
    }

    /// Moves tasks whose retry delay is over to the front of the queue, earliest due first.
    pub fn release_due_retries(&mut self, now: Instant) {
        self.queue.release_due(now);
    }

    // ---- workers ---------------------------------------------------------------------------

    /// A worker announced itself (`WorkerReady`); a `standby` takes no tasks until promoted.
    /// A known identity is replaced (its held tasks failed: the returned answers).
    pub fn worker_ready(
        &mut self,
        identity: Vec<u8>,
        pid: u32,
        credits: u32,
        standby: bool,
        now: Instant,
    ) -> Vec<Answer> {
        let answers = self.worker_failed(&identity, Failure::WorkerDied("the worker restarted".into()), now);
        let window = credits.clamp(1, self.policy.window.max(1));
        let lifetime = self.policy.limits.lifetime_for_new_worker();
        self.workers.insert(identity, Worker::new(pid, window, lifetime, standby, now));
        answers
    }

    /// Puts a ready standby to work (a worker was just recycled); returns its identity. A
    /// retiring standby (let go by a reload) is on its way out, not a spare.
    pub fn promote_standby(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (id, w) = self.workers.iter_mut().find(|(_, w)| w.standby && w.retiring.is_none())?;
        w.standby = false;
        w.ready_at = now;
        w.idle_since = now;
        Some(id.clone())
    }

    /// Any message from a worker: it is alive. A heartbeat may carry its RSS; returns the
    /// reason if that makes it due for recycling.
    pub fn heard_from(&mut self, identity: &[u8], rss_kb: Option<u64>, now: Instant) -> Option<RetireReason> {
        let limits = &self.policy.limits;
        let w = self.workers.get_mut(identity)?;
        w.last_seen = now;
        if let Some(rss) = rss_kb {
            w.rss_kb = rss;
        }
        w.check_limits(limits, now)
    }

    /// Whether this worker reported ready and has not been removed since.
    pub fn knows(&self, identity: &[u8]) -> bool {
        self.workers.contains_key(identity)
    }

    pub fn worker_ids(&self) -> Vec<Vec<u8>> {
        self.workers.keys().cloned().collect()
    }

    /// Removes a worker that will not answer what it holds (it exited, was killed, or went
    /// silent). Its running task's attempt ends with `failure` (retried if its policy allows,
    /// else answered); the tasks queued behind it never started and go back to the queue front.
    pub fn worker_failed(&mut self, identity: &[u8], failure: Failure, now: Instant) -> Vec<Answer> {
        let Some(worker) = self.workers.remove(identity) else { return Vec::new() };
        let mut answers = Vec::new();
        let mut held = worker.held.into_iter();
        if let Some(running) = held.next().and_then(|id| self.in_flight.remove(&id)) {
            if !running.cancelled {
                answers.extend(self.attempt_failed(running, &failure, now));
            }
        }
        // Reverse, so pushing each to the front keeps their order.
        let unstarted: Vec<u64> = held.collect();
        for id in unstarted.into_iter().rev() {
            let Some(mut f) = self.in_flight.remove(&id) else { continue };
            if f.cancelled {
                continue;
            }
            match f.copy.take() {
                Some(payload) => self.queue.push_front(f.into_task(payload, false)),
                None => {
                    // Unreachable: tasks held behind another always keep a copy.
                    let error = failure.error(&failure.worker_text());
                    answers.push(Answer { origin: f.origin(), error });
                }
            }
        }
        answers
    }

    /// A worker answered `task_id`. `retry` is the result's retry request (with its delay).
    pub fn task_finished(
        &mut self,
        identity: &[u8],
        task_id: u64,
        run_us: Option<u64>,
        retry: Option<Option<f64>>,
        now: Instant,
    ) -> Finished {
        if let Some(w) = self.workers.get_mut(identity) {
            w.last_seen = now; // any message counts as a heartbeat
        }
        match self.in_flight.get(&task_id) {
            Some(f) if f.worker == identity => {}
            _ => return Finished::Dropped,
        }
        let mut f = self.in_flight.remove(&task_id).expect("checked above");
        if let Some(w) = self.workers.get_mut(identity) {
            w.held.retain(|id| *id != task_id);
            if !f.short {
                w.long_held -= 1;
            }
            w.front_since = now;
            w.tasks_done += 1;
            if w.held.is_empty() {
                w.idle_since = now;
            }
        }
        if let Some(us) = run_us {
            self.observe_run_time(&f.name, us);
        }
        if f.cancelled {
            return Finished::Dropped;
        }
        if let Some(requested_s) = retry {
            match self.retry(f, requested_s, now) {
                Some(back) => f = back,
                None => return Finished::Retrying,
            }
        }
        Finished::Reply(f.origin())
    }

    /// Checks the recycling limits of one worker (after it answered a task): retires it and
    /// returns the reason, the first time one is reached.
    pub fn check_recycle(&mut self, identity: &[u8], now: Instant) -> Option<RetireReason> {
        let limits = &self.policy.limits;
        self.workers.get_mut(identity)?.check_limits(limits, now)
    }

    /// Workers newly retired by age.
    pub fn expired_lifetimes(&mut self, now: Instant) -> Vec<(Vec<u8>, RetireReason)> {
        let limits = &self.policy.limits;
        self.workers.iter_mut().filter_map(|(id, w)| w.check_limits(limits, now).map(|r| (id.clone(), r))).collect()
    }

    /// Marks a worker to be retired: it gets no new tasks and is shut down once it holds none
    /// (its replacement is ready, or the pool is shrinking). False if unknown or already retiring.
    pub fn retire(&mut self, identity: &[u8], reason: RetireReason) -> bool {
        match self.workers.get_mut(identity) {
            Some(w) if w.retiring.is_none() => {
                w.retiring = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Retiring workers that hold nothing now: send each `Shutdown` (once).
    pub fn to_shut_down(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (id, w) in &mut self.workers {
            if w.retiring.is_some() && !w.shutdown_sent && w.held.is_empty() {
                w.shutdown_sent = true;
                out.push(id.clone());
            }
        }
        out
    }

    /// Workers whose running task overran its timeout: (identity, pid). Kill each, then call
    /// `worker_failed(.., Failure::Timeout)`.
    pub fn overran(&self, now: Instant) -> Vec<(Vec<u8>, u32)> {
        self.workers
            .iter()
            .filter(|(_, w)| self.front_deadline(w).is_some_and(|d| d <= now))
            .map(|(id, w)| (id.clone(), w.pid))
            .collect()
    }

    /// Workers silent for longer than `liveness`: (identity, pid).
    pub fn silent(&self, liveness: Duration, now: Instant) -> Vec<(Vec<u8>, u32)> {
        self.workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > liveness)
            .map(|(id, w)| (id.clone(), w.pid))
            .collect()
    }

    fn front_deadline(&self, w: &Worker) -> Option<Instant> {
        let f = self.in_flight.get(w.held.front()?)?;
        let timeout = f.policy.timeout_s?;
        w.front_since.checked_add(Duration::from_secs_f64(timeout.clamp(0.0, 86_400.0)))
    }

    /// The next moment something time-based is due (a retry, a timeout, a silent worker, an
    /// expiring lifetime), so the broker can poll until then.
    pub fn next_deadline(&self, liveness: Option<Duration>) -> Option<Instant> {
        let retry = self.queue.next_due();
        let workers = self.workers.values().flat_map(|w| {
            [
                self.front_deadline(w),
                liveness.map(|l| w.last_seen + l),
                w.lifetime.filter(|_| w.retiring.is_none() && !w.standby).map(|l| w.ready_at + l),
            ]
        });
        retry.into_iter().chain(workers.flatten()).min()
    }

    /// The worker idle the longest, if any, and for how long (for shrinking a pool).
    pub fn longest_idle(&self, now: Instant) -> Option<(Vec<u8>, Duration)> {
        self.workers
            .iter()
            .filter(|(_, w)| w.held.is_empty() && w.retiring.is_none() && !w.standby)
            .map(|(id, w)| (id.clone(), now.duration_since(w.idle_since)))
            .max_by_key(|(_, d)| *d)
    }

    // ---- cancel and stop -------------------------------------------------------------------

    /// `CancelTask` from `client`: see [`Cancelled`].
    pub fn cancel(&mut self, client: &[u8], client_task_id: u64) -> Cancelled {
        if let Some(task) = self.queue.remove(client, client_task_id) {
            let error = ErrorInfo::neutrino(ErrorKind::Cancelled, "cancelled before it ran");
            return Cancelled::Answer(Answer { origin: task.into_origin(), error });
        }
        let Some((&task_id, f)) = self
            .in_flight
            .iter_mut()
            .find(|(_, f)| !f.cancelled && f.client == client && f.client_task_id == client_task_id)
        else {
            return Cancelled::NotFound;
        };
        let Some(w) = self.workers.get(&f.worker) else { return Cancelled::NotFound };
        if w.held.front() == Some(&task_id) {
            return Cancelled::Kill { worker: f.worker.clone(), pid: w.pid };
        }
        // Held behind the running task: it has not started. Answer now, drop its result later
        // (the worker may still run it: it cannot be taken back from the worker's socket).
        f.cancelled = true;
        let origin = Origin { attempts: f.attempt - 1, ..f.origin() };
        Cancelled::Answer(Answer {
            origin,
            error: ErrorInfo::neutrino(
                ErrorKind::Cancelled,
                "cancelled before it started (its worker may still run it)",
            ),
        })
    }

    /// Stops accepting tasks and hands back everything still waiting (queued or for a retry).
    pub fn start_draining(&mut self) -> Vec<Task<P>> {
        self.draining = true;
        self.queue.drain()
    }

    /// Forgets every task in flight (the orchestrator is stopping) and returns whom to answer.
    pub fn abandon_in_flight(&mut self) -> Vec<Origin> {
        for w in self.workers.values_mut() {
            w.held.clear();
            w.long_held = 0;
        }
        self.in_flight.drain().filter(|(_, f)| !f.cancelled).map(|(_, f)| f.origin()).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Tasks waiting for a retry.
    pub fn delayed(&self) -> usize {
        self.queue.delayed()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn worker_counts(&self) -> WorkerCounts {
        let mut c = WorkerCounts::default();
        for w in self.workers.values() {
            if w.retiring.is_some() {
                c.retiring += 1;
            } else if w.standby {
                c.standby += 1;
            } else {
                c.ready += 1;
                c.idle += u32::from(w.held.is_empty());
            }
        }
        c
    }
}
