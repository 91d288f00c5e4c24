//! Push-on-idle / pull-on-busy scheduling state: the bounded queue, tasks waiting to be
//! retried, the ready workers and the tasks they hold. Plain code with no sockets or processes,
//! so tests drive it directly; the broker turns its answers into messages and kills
//! (SPEC.md §6).

mod policy;
#[cfg(test)]
mod tests;
mod worker;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use neutrino_protocol::{error_kind, reject_reason, ErrorInfo};

pub use policy::{recycle_reason, Limits, TaskPolicy, DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S};
use worker::Worker;

/// Weight of a new `run_us` sample in the per-task moving average.
const RUN_TIME_EWMA_ALPHA: f64 = 0.2;

/// A payload frame the scheduler can keep a copy of, for retries.
pub trait Payload {
    fn duplicate(&self) -> Self;
}

/// The caller's W3C trace context from `SubmitTask`, opaque: forwarded on every
/// `TaskAssignment` of the task (SPEC.md §4.5). Both absent costs nothing to carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// A task accepted from a client. `P` is the payload frame, forwarded untouched.
#[derive(Debug)]
pub struct Task<P> {
    pub client: Vec<u8>,
    pub client_task_id: u64,
    pub name: String,
    pub policy: TaskPolicy,
    /// The attempt this task is waiting for (1 at first).
    pub attempt: u32,
    pub accepted_at: Instant,
    pub trace: TraceContext,
    pub payload: P,
}

impl<P> Task<P> {
    /// Whom to answer about a task answered while it waits (never assigned, or between
    /// attempts): the attempts made are those before the one it waits for.
    pub fn into_origin(self) -> Origin {
        Origin { client: self.client, client_task_id: self.client_task_id, attempts: self.attempt - 1, queue_us: None }
    }
}

/// A task chosen for a worker: what the broker sends as `TaskAssignment`.
#[derive(Debug)]
pub struct Assignment<P> {
    pub worker: Vec<u8>,
    pub task_id: u64,
    pub name: String,
    pub attempt: u32,
    pub timeout_s: Option<f64>,
    pub queued_for: Duration,
    /// Taken from the task; given back with the payload if the send fails (`requeue_front`).
    pub trace: TraceContext,
    pub payload: P,
}

/// Who to answer about a task, and how many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub client: Vec<u8>,
    pub client_task_id: u64,
    pub attempts: u32,
    /// Microseconds from acceptance to the assignment of the attempt answered about
    /// (`TaskReply.queue_us`); `None` when the task was answered while waiting for one.
    pub queue_us: Option<u64>,
}

/// A task that ends with an error the orchestrator produced.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub origin: Origin,
    pub error: ErrorInfo,
}

/// How a worker's attempt at its running task ended, when the worker did not answer it.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Timeout,
    WorkerDied(String),
    Cancelled,
}

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

#[derive(Debug)]
struct InFlight<P> {
    worker: Vec<u8>,
    client: Vec<u8>,
    client_task_id: u64,
    name: String,
    policy: TaskPolicy,
    attempt: u32,
    accepted_at: Instant,
    /// From acceptance to this attempt's assignment (SPEC.md §4.5).
    queue_us: u64,
    /// A copy of the arguments, kept while retries remain or while the task waits behind
    /// another on its worker (so it can be requeued if that worker dies first).
    copy: Option<P>,
    /// The trace context, kept (like `copy`, and only with it) for the next assignment.
    trace: TraceContext,
    short: bool,
    /// Answered `cancelled` while still waiting on its worker: drop its result.
    cancelled: bool,
}

impl<P> InFlight<P> {
    fn origin(&self) -> Origin {
        Origin {
            client: self.client.clone(),
            client_task_id: self.client_task_id,
            attempts: self.attempt,
            queue_us: Some(self.queue_us),
        }
    }

    /// The task again, for a later attempt (`next` true) or for this one, never started.
    fn into_task(self, payload: P, next: bool) -> Task<P> {
        let mut policy = self.policy;
        if next {
            policy.retries -= 1;
        }
        Task {
            client: self.client,
            client_task_id: self.client_task_id,
            name: self.name,
            policy,
            attempt: if next { self.attempt + 1 } else { self.attempt },
            accepted_at: self.accepted_at,
            trace: self.trace,
            payload,
        }
    }
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
    queue: VecDeque<Task<P>>,
    /// Tasks waiting for their next attempt: due time and a key into `delayed_tasks`.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_tasks: HashMap<u64, Task<P>>,
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
            queue: VecDeque::new(),
            delayed: BinaryHeap::new(),
            delayed_tasks: HashMap::new(),
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
    pub fn submit(&mut self, task: Task<P>) -> Result<(), &'static str> {
        if self.draining {
            return Err(reject_reason::DRAINING);
        }
        if self.queue.len() >= self.policy.queue_limit {
            return Err(reject_reason::BUSY);
        }
        self.queue.push_back(task);
        Ok(())
    }

    /// Moves tasks whose retry delay is over to the front of the queue, earliest due first.
    pub fn release_due_retries(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = self.delayed.peek().copied() {
            if at > now {
                break;
            }
            self.delayed.pop();
            due.extend(self.delayed_tasks.remove(&key));
        }
        for task in due.into_iter().rev() {
            self.queue.push_front(task);
        }
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

    /// Puts a ready standby to work (a worker was just recycled); returns its identity.
    pub fn promote_standby(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (id, w) = self.workers.iter_mut().find(|(_, w)| w.standby)?;
        w.standby = false;
        w.ready_at = now;
        w.idle_since = now;
        Some(id.clone())
    }

    /// Any message from a worker: it is alive. A heartbeat may carry its RSS; returns the
    /// reason if that makes it due for recycling.
    pub fn heard_from(&mut self, identity: &[u8], rss_kb: Option<u64>, now: Instant) -> Option<&'static str> {
        let limits = &self.policy.limits;
        let w = self.workers.get_mut(identity)?;
        w.last_seen = now;
        if let Some(rss) = rss_kb {
            w.rss_kb = rss;
        }
        w.check_limits(limits, now)
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
                    let error = failure_error(&failure, &worker_failure_text(&failure));
                    answers.push(Answer { origin: f.origin(), error });
                }
            }
        }
        answers
    }

    /// An attempt ended without a result: retry it if it may be, else answer it.
    fn attempt_failed(&mut self, mut f: InFlight<P>, failure: &Failure, now: Instant) -> Option<Answer> {
        let retryable = matches!(failure, Failure::Timeout | Failure::WorkerDied(_));
        if retryable && f.policy.retries > 0 {
            if let Some(payload) = f.copy.take() {
                let delay = f.policy.backoff(f.attempt, None);
                self.delay(f.into_task(payload, true), now + delay);
                return None;
            }
        }
        let text = match failure {
            Failure::Timeout => format!(
                "attempt {} overran its timeout of {}s; the worker was killed and replaced",
                f.attempt,
                f.policy.timeout_s.unwrap_or(0.0)
            ),
            other => worker_failure_text(other),
        };
        Some(Answer { origin: f.origin(), error: failure_error(failure, &text) })
    }

    fn delay(&mut self, task: Task<P>, due: Instant) {
        let key = self.next_task_id;
        self.next_task_id += 1;
        self.delayed.push(Reverse((due, key)));
        self.delayed_tasks.insert(key, task);
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
        if let Some(requested) = retry {
            if f.policy.retries > 0 {
                if let Some(payload) = f.copy.take() {
                    let delay = f.policy.backoff(f.attempt, requested);
                    self.delay(f.into_task(payload, true), now + delay);
                    return Finished::Retrying;
                }
            }
        }
        Finished::Reply(f.origin())
    }

    /// Checks the recycling limits of one worker (after it answered a task): retires it and
    /// returns the reason, the first time one is reached.
    pub fn check_recycle(&mut self, identity: &[u8], now: Instant) -> Option<&'static str> {
        let limits = &self.policy.limits;
        self.workers.get_mut(identity)?.check_limits(limits, now)
    }

    /// Workers newly retired by age.
    pub fn expired_lifetimes(&mut self, now: Instant) -> Vec<(Vec<u8>, &'static str)> {
        let limits = &self.policy.limits;
        self.workers.iter_mut().filter_map(|(id, w)| w.check_limits(limits, now).map(|r| (id.clone(), r))).collect()
    }

    /// Marks a worker to be retired: it gets no new tasks and is shut down once it holds none
    /// (its replacement is ready, or the pool is shrinking). False if unknown or already retiring.
    pub fn retire(&mut self, identity: &[u8], reason: &'static str) -> bool {
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
        let retry = self.delayed.peek().map(|Reverse((due, _))| *due);
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

    // ---- dispatch --------------------------------------------------------------------------

    fn observe_run_time(&mut self, name: &str, run_us: u64) {
        let sample = run_us as f64;
        match self.run_time_us.get_mut(name) {
            Some(avg) => *avg += RUN_TIME_EWMA_ALPHA * (sample - *avg),
            None => {
                self.run_time_us.insert(name.to_owned(), sample);
            }
        }
    }

    fn is_short(&self, name: &str) -> bool {
        self.run_time_us.get(name).is_some_and(|avg| *avg < self.policy.pipeline_max_us)
    }

    /// Picks the next queued task and the worker for it, if any worker can take it now.
    /// Call until it returns `None` after every event.
    pub fn next_assignment(&mut self, now: Instant) -> Option<Assignment<P>> {
        if self.draining {
            return None; // what is still queued (requeued, retried) is answered when we stop
        }
        let short = self.is_short(&self.queue.front()?.name);
        let identity = self.pick_worker(short)?;
        let task = self.queue.pop_front()?;
        self.dispatch_seq += 1;
        let task_id = self.next_task_id;
        self.next_task_id += 1;
        let w = self.workers.get_mut(&identity).expect("picked from the map");
        let pipelined = !w.held.is_empty();
        if !pipelined {
            w.front_since = now;
        }
        w.held.push_back(task_id);
        if !short {
            w.long_held += 1;
        }
        w.last_dispatch = self.dispatch_seq;
        // What another attempt (or a requeue) needs is kept only when one may come; the
        // assignment takes the originals, so a task without retries copies nothing.
        let keep = task.policy.retries > 0 || pipelined;
        let copy = keep.then(|| task.payload.duplicate());
        let trace = if keep { task.trace.clone() } else { TraceContext::default() };
        let queued_for = now.saturating_duration_since(task.accepted_at);
        let record = InFlight {
            worker: identity.clone(),
            client: task.client,
            client_task_id: task.client_task_id,
            name: task.name.clone(),
            policy: task.policy.clone(),
            attempt: task.attempt,
            accepted_at: task.accepted_at,
            queue_us: u64::try_from(queued_for.as_micros()).unwrap_or(u64::MAX),
            copy,
            trace,
            short,
            cancelled: false,
        };
        self.in_flight.insert(task_id, record);
        Some(Assignment {
            worker: identity,
            task_id,
            name: task.name,
            attempt: task.attempt,
            timeout_s: task.policy.timeout_s,
            queued_for,
            trace: task.trace,
            payload: task.payload,
        })
    }

    /// Push on idle first (least recently used idle worker); otherwise, for a short task,
    /// the least loaded worker with window left and only short tasks held.
    fn pick_worker(&self, short: bool) -> Option<Vec<u8>> {
        self.workers
            .iter()
            .filter(|(_, w)| w.can_take(short))
            .min_by_key(|(_, w)| (w.in_flight(), w.last_dispatch))
            .map(|(id, _)| id.clone())
    }

    /// Takes back an assignment that never reached its worker (its payload and trace context)
    /// and puts the task first in line.
    pub fn requeue_front(&mut self, task_id: u64, payload: P, trace: TraceContext) {
        let Some(mut f) = self.in_flight.remove(&task_id) else { return };
        f.trace = trace;
        if let Some(w) = self.workers.get_mut(&f.worker) {
            w.held.retain(|id| *id != task_id);
            if !f.short {
                w.long_held -= 1;
            }
        }
        self.queue.push_front(f.into_task(payload, false));
    }

    // ---- cancel and stop -------------------------------------------------------------------

    /// `CancelTask` from `client`: see [`Cancelled`].
    pub fn cancel(&mut self, client: &[u8], client_task_id: u64) -> Cancelled {
        let mine = |c: &[u8], id: u64| c == client && id == client_task_id;
        let cancelled = |origin: Origin| {
            Cancelled::Answer(Answer {
                origin,
                error: ErrorInfo::neutrino(error_kind::CANCELLED, "cancelled before it ran"),
            })
        };
        if let Some(pos) = self.queue.iter().position(|t| mine(&t.client, t.client_task_id)) {
            return cancelled(self.queue.remove(pos).expect("found above").into_origin());
        }
        if let Some(key) = self.delayed_tasks.iter().find(|(_, t)| mine(&t.client, t.client_task_id)).map(|(k, _)| *k) {
            return cancelled(self.delayed_tasks.remove(&key).expect("found above").into_origin());
        }
        let Some((&task_id, f)) =
            self.in_flight.iter_mut().find(|(_, f)| !f.cancelled && mine(&f.client, f.client_task_id))
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
                error_kind::CANCELLED,
                "cancelled before it started (its worker may still run it)",
            ),
        })
    }

    /// Stops accepting tasks and hands back everything still waiting (queued or for a retry).
    pub fn start_draining(&mut self) -> Vec<Task<P>> {
        self.draining = true;
        self.delayed.clear();
        let mut out: Vec<Task<P>> = self.queue.drain(..).collect();
        out.extend(self.delayed_tasks.drain().map(|(_, t)| t));
        out
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
        self.delayed_tasks.len()
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

fn worker_failure_text(failure: &Failure) -> String {
    match failure {
        Failure::Timeout => "its worker was killed after another task overran its timeout".into(),
        Failure::WorkerDied(why) => why.clone(),
        Failure::Cancelled => "cancelled while it ran; its worker was killed and replaced".into(),
    }
}

fn failure_error(failure: &Failure, text: &str) -> ErrorInfo {
    let kind = match failure {
        Failure::Timeout => error_kind::TIMEOUT,
        Failure::WorkerDied(_) => error_kind::WORKER_DIED,
        Failure::Cancelled => error_kind::CANCELLED,
    };
    ErrorInfo::neutrino(kind, text)
}
