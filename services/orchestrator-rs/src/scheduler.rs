//! Push-on-idle / pull-on-busy scheduling state: the bounded queue, the ready workers and the
//! tasks in flight. Plain code with no sockets, so tests drive it directly (SPEC.md §6).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use neutrino_protocol::reject_reason;

/// Weight of a new `run_us` sample in the per-task moving average.
const RUN_TIME_EWMA_ALPHA: f64 = 0.2;

/// A task accepted from a client. `P` is the payload frame, forwarded untouched.
#[derive(Debug)]
pub struct Task<P> {
    pub client: Vec<u8>,
    pub client_task_id: u64,
    pub name: String,
    pub timeout_s: Option<f64>,
    pub attempt: u32,
    pub accepted_at: Instant,
    pub payload: P,
}

/// A task chosen for a worker: what the broker sends as `TaskAssignment`.
#[derive(Debug)]
pub struct Assignment<P> {
    pub worker: Vec<u8>,
    pub task_id: u64,
    pub name: String,
    pub attempt: u32,
    pub timeout_s: Option<f64>,
    pub queued_for: std::time::Duration,
    pub payload: P,
}

/// Who to answer when a task in flight finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub client: Vec<u8>,
    pub client_task_id: u64,
    pub attempts: u32,
}

#[derive(Debug)]
struct InFlight {
    worker: usize,
    name: String,
    timeout_s: Option<f64>,
    accepted_at: Instant,
    origin: Origin,
    short: bool,
}

#[derive(Debug)]
struct Worker {
    identity: Vec<u8>,
    pid: u32,
    /// Most assignments this worker takes at once: min(its credits, the orchestrator's window).
    window: u32,
    in_flight: u32,
    /// Assignments in flight not known to be short: while non-zero, nothing is pipelined here.
    long_in_flight: u32,
    /// Dispatch sequence number of the last assignment, for least-recently-used ties.
    last_dispatch: u64,
}

/// Counts of workers by state, for `Pong` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerCounts {
    pub ready: u32,
    pub idle: u32,
}

/// Scheduling policy knobs (from the command line).
#[derive(Debug, Clone)]
pub struct Policy {
    pub queue_limit: usize,
    /// Most credits of a worker's window the orchestrator uses; 1 disables pipelining.
    pub window: u32,
    /// Tasks whose average run time is under this are pipelined (SPEC.md §6 rule 3).
    pub pipeline_max_us: f64,
}

#[derive(Debug)]
pub struct Scheduler<P> {
    policy: Policy,
    queue: VecDeque<Task<P>>,
    workers: Vec<Worker>,
    in_flight: HashMap<u64, InFlight>,
    run_time_us: HashMap<String, f64>,
    next_task_id: u64,
    dispatch_seq: u64,
    draining: bool,
}

impl<P> Scheduler<P> {
    pub fn new(policy: Policy) -> Self {
        Scheduler {
            policy,
            queue: VecDeque::new(),
            workers: Vec::new(),
            in_flight: HashMap::new(),
            run_time_us: HashMap::new(),
            next_task_id: 1,
            dispatch_seq: 0,
            draining: false,
        }
    }

    /// Queues a task, or says why it was rejected (a `TaskRejected` reason).
    pub fn submit(&mut self, task: Task<P>) -> Result<(), (&'static str, Task<P>)> {
        if self.draining {
            return Err((reject_reason::DRAINING, task));
        }
        if self.queue.len() >= self.policy.queue_limit {
            return Err((reject_reason::BUSY, task));
        }
        self.queue.push_back(task);
        Ok(())
    }

    /// A worker announced itself (`WorkerReady`). A known identity is replaced: its tasks in
    /// flight are returned so the caller can answer them.
    pub fn worker_ready(&mut self, identity: Vec<u8>, pid: u32, credits: u32) -> Vec<Origin> {
        let lost = self.worker_gone(&identity);
        let window = credits.clamp(1, self.policy.window.max(1));
        self.workers.push(Worker { identity, pid, window, in_flight: 0, long_in_flight: 0, last_dispatch: 0 });
        lost
    }

    /// Removes a worker (it exited, or its messages became unroutable) and returns the origins
    /// of the tasks it held, which will never get a `TaskResult`.
    pub fn worker_gone(&mut self, identity: &[u8]) -> Vec<Origin> {
        let Some(idx) = self.workers.iter().position(|w| w.identity == identity) else {
            return Vec::new();
        };
        self.workers.swap_remove(idx);
        let moved_from = self.workers.len(); // swap_remove moved the last worker into `idx`
        let mut lost = Vec::new();
        self.in_flight.retain(|_, f| {
            if f.worker == idx {
                lost.push(f.origin.clone());
                return false;
            }
            if f.worker == moved_from {
                f.worker = idx;
            }
            true
        });
        lost
    }

    /// The pid a worker reported, if it is connected.
    pub fn worker_pid(&self, identity: &[u8]) -> Option<u32> {
        self.workers.iter().find(|w| w.identity == identity).map(|w| w.pid)
    }

    /// A worker answered `task_id`: frees its credit and learns the task's run time.
    /// Returns whom to answer, or `None` for a task this worker was not holding.
    pub fn task_finished(&mut self, identity: &[u8], task_id: u64, run_us: Option<u64>) -> Option<Origin> {
        let f = self.in_flight.get(&task_id)?;
        if self.workers[f.worker].identity != identity {
            return None;
        }
        let f = self.in_flight.remove(&task_id)?;
        let worker = &mut self.workers[f.worker];
        worker.in_flight -= 1;
        if !f.short {
            worker.long_in_flight -= 1;
        }
        if let Some(us) = run_us {
            self.observe_run_time(&f.name, us);
        }
        Some(f.origin)
    }

    /// Takes back an assignment that never reached its worker and puts the task first in line.
    pub fn requeue_front(&mut self, task_id: u64, payload: P) {
        let Some(f) = self.in_flight.remove(&task_id) else { return };
        let worker = &mut self.workers[f.worker];
        worker.in_flight -= 1;
        if !f.short {
            worker.long_in_flight -= 1;
        }
        self.queue.push_front(Task {
            client: f.origin.client,
            client_task_id: f.origin.client_task_id,
            name: f.name,
            timeout_s: f.timeout_s,
            attempt: f.origin.attempts,
            accepted_at: f.accepted_at,
            payload,
        });
    }

    /// Records a run time sample for a task name (moving average).
    pub fn observe_run_time(&mut self, name: &str, run_us: u64) {
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
    pub fn next_assignment(&mut self) -> Option<Assignment<P>> {
        let front = self.queue.front()?;
        let short = self.is_short(&front.name);
        let idx = self.pick_worker(short)?;
        let task = self.queue.pop_front()?;
        self.dispatch_seq += 1;
        let worker = &mut self.workers[idx];
        worker.in_flight += 1;
        if !short {
            worker.long_in_flight += 1;
        }
        worker.last_dispatch = self.dispatch_seq;
        let task_id = self.next_task_id;
        self.next_task_id += 1;
        let origin = Origin { client: task.client, client_task_id: task.client_task_id, attempts: task.attempt };
        let record = InFlight {
            worker: idx,
            name: task.name.clone(),
            timeout_s: task.timeout_s,
            accepted_at: task.accepted_at,
            origin,
            short,
        };
        self.in_flight.insert(task_id, record);
        Some(Assignment {
            worker: worker.identity.clone(),
            task_id,
            name: task.name,
            attempt: task.attempt,
            timeout_s: task.timeout_s,
            queued_for: task.accepted_at.elapsed(),
            payload: task.payload,
        })
    }

    /// Push on idle first (least recently used idle worker); otherwise, for a short task,
    /// the least loaded worker with window left and only short tasks in flight.
    fn pick_worker(&self, short: bool) -> Option<usize> {
        let mut best: Option<(usize, (u32, u64))> = None;
        for (i, w) in self.workers.iter().enumerate() {
            let eligible = w.in_flight == 0 || (short && w.long_in_flight == 0 && w.in_flight < w.window);
            if !eligible {
                continue;
            }
            let key = (w.in_flight, w.last_dispatch);
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Removes a queued task (`CancelTask`); a task already assigned is not touched.
    pub fn cancel_queued(&mut self, client: &[u8], client_task_id: u64) -> Option<Task<P>> {
        let pos = self.queue.iter().position(|t| t.client_task_id == client_task_id && t.client == client)?;
        self.queue.remove(pos)
    }

    /// Stops accepting tasks and hands back everything still queued, to be answered.
    pub fn start_draining(&mut self) -> Vec<Task<P>> {
        self.draining = true;
        self.queue.drain(..).collect()
    }

    /// Forgets every task in flight (the orchestrator is stopping) and returns whom to answer.
    pub fn abandon_in_flight(&mut self) -> Vec<Origin> {
        for w in &mut self.workers {
            w.in_flight = 0;
            w.long_in_flight = 0;
        }
        self.in_flight.drain().map(|(_, f)| f.origin).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn worker_counts(&self) -> WorkerCounts {
        WorkerCounts {
            ready: self.workers.len() as u32,
            idle: self.workers.iter().filter(|w| w.in_flight == 0).count() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(window: u32, queue_limit: usize) -> Scheduler<u32> {
        Scheduler::new(Policy { queue_limit, window, pipeline_max_us: 1000.0 })
    }

    fn task(id: u64, name: &str) -> Task<u32> {
        Task {
            client: b"c1".to_vec(),
            client_task_id: id,
            name: name.into(),
            timeout_s: None,
            attempt: 1,
            accepted_at: Instant::now(),
            payload: id as u32,
        }
    }

    fn drain_assignments(s: &mut Scheduler<u32>) -> Vec<Assignment<u32>> {
        std::iter::from_fn(|| s.next_assignment()).collect()
    }

    #[test]
    fn a_task_waits_until_a_worker_is_ready_then_is_pushed() {
        let mut s = sched(1, 10);
        s.submit(task(1, "add")).unwrap();
        assert!(s.next_assignment().is_none());
        s.worker_ready(b"w1".to_vec(), 10, 8);
        let a = s.next_assignment().unwrap();
        assert_eq!((a.worker.as_slice(), a.payload, a.attempt), (&b"w1"[..], 1, 1));
        assert_eq!(s.worker_counts(), WorkerCounts { ready: 1, idle: 0 });
    }

    #[test]
    fn a_full_queue_rejects_busy_and_draining_rejects_draining() {
        let mut s = sched(1, 2);
        s.submit(task(1, "a")).unwrap();
        s.submit(task(2, "a")).unwrap();
        assert_eq!(s.submit(task(3, "a")).unwrap_err().0, "busy");
        assert_eq!(s.start_draining().len(), 2);
        assert_eq!(s.submit(task(4, "a")).unwrap_err().0, "draining");
    }

    #[test]
    fn a_finished_task_frees_the_worker_for_the_next_pull() {
        let mut s = sched(1, 10);
        s.worker_ready(b"w1".to_vec(), 10, 8);
        for i in 1..=3 {
            s.submit(task(i, "a")).unwrap();
        }
        let first = drain_assignments(&mut s);
        assert_eq!(first.len(), 1, "window 1: one in flight");
        let origin = s.task_finished(b"w1", first[0].task_id, None).unwrap();
        assert_eq!(origin.client_task_id, 1);
        assert_eq!(drain_assignments(&mut s).len(), 1);
        assert_eq!(s.queue_depth(), 1);
    }

    #[test]
    fn idle_workers_are_used_before_any_pipelining() {
        let mut s = sched(4, 10);
        s.observe_run_time("a", 10);
        s.worker_ready(b"w1".to_vec(), 10, 8);
        s.worker_ready(b"w2".to_vec(), 11, 8);
        s.submit(task(1, "a")).unwrap();
        s.submit(task(2, "a")).unwrap();
        let a = drain_assignments(&mut s);
        assert_ne!(a[0].worker, a[1].worker);
    }

    #[test]
    fn short_tasks_are_pipelined_up_to_the_window_and_long_ones_are_not() {
        let mut s = sched(3, 100);
        s.worker_ready(b"w1".to_vec(), 10, 8);
        s.observe_run_time("short", 20);
        s.observe_run_time("long", 50_000);
        for i in 1..=5 {
            s.submit(task(i, "short")).unwrap();
        }
        assert_eq!(drain_assignments(&mut s).len(), 3, "window of 3");

        let mut s = sched(3, 100);
        s.worker_ready(b"w1".to_vec(), 10, 8);
        s.observe_run_time("long", 50_000);
        s.submit(task(1, "long")).unwrap();
        s.submit(task(2, "long")).unwrap();
        assert_eq!(drain_assignments(&mut s).len(), 1);
    }

    #[test]
    fn nothing_is_pipelined_behind_a_long_or_unknown_task() {
        let mut s = sched(4, 100);
        s.worker_ready(b"w1".to_vec(), 10, 8);
        s.observe_run_time("short", 20);
        s.submit(task(1, "never-seen")).unwrap();
        s.submit(task(2, "short")).unwrap();
        assert_eq!(drain_assignments(&mut s).len(), 1);
    }

    #[test]
    fn the_worker_window_is_capped_by_its_credits() {
        let mut s = sched(8, 100);
        s.worker_ready(b"w1".to_vec(), 10, 2);
        s.observe_run_time("short", 20);
        for i in 1..=5 {
            s.submit(task(i, "short")).unwrap();
        }
        assert_eq!(drain_assignments(&mut s).len(), 2);
    }

    #[test]
    fn a_gone_worker_returns_its_tasks_and_others_keep_theirs() {
        let mut s = sched(1, 10);
        s.worker_ready(b"w1".to_vec(), 10, 1);
        s.worker_ready(b"w2".to_vec(), 11, 1);
        s.worker_ready(b"w3".to_vec(), 12, 1);
        for i in 1..=3 {
            s.submit(task(i, "a")).unwrap();
        }
        let a = drain_assignments(&mut s);
        let lost = s.worker_gone(b"w1");
        assert_eq!(lost.len(), 1);
        // w3 moved into w1's slot: its task must still be answerable.
        let w3 = a.iter().find(|x| x.worker == b"w3").unwrap();
        assert!(s.task_finished(b"w3", w3.task_id, None).is_some());
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_result_from_the_wrong_worker_is_ignored() {
        let mut s = sched(1, 10);
        s.worker_ready(b"w1".to_vec(), 10, 1);
        s.submit(task(1, "a")).unwrap();
        let a = s.next_assignment().unwrap();
        assert!(s.task_finished(b"w2", a.task_id, None).is_none());
        assert!(s.task_finished(b"w1", a.task_id, None).is_some());
        assert!(s.task_finished(b"w1", a.task_id, None).is_none(), "answered once");
    }

    #[test]
    fn a_requeued_assignment_goes_first_and_frees_its_credit() {
        let mut s = sched(1, 10);
        s.worker_ready(b"w1".to_vec(), 10, 1);
        s.submit(task(1, "a")).unwrap();
        s.submit(task(2, "a")).unwrap();
        let a = s.next_assignment().unwrap();
        s.requeue_front(a.task_id, a.payload);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.next_assignment().unwrap().payload, 1, "the requeued task runs first");
    }

    #[test]
    fn cancel_removes_only_the_queued_task_of_that_client() {
        let mut s = sched(1, 10);
        s.submit(task(1, "a")).unwrap();
        assert!(s.cancel_queued(b"other", 1).is_none());
        assert_eq!(s.cancel_queued(b"c1", 1).unwrap().client_task_id, 1);
        assert_eq!(s.queue_depth(), 0);
    }
}
