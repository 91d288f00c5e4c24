//! Dispatch (SPEC.md §6 rules 1-3): which worker takes the next queued task (an idle one
//! first; for a task known to be short, one with window left that holds only short tasks), and
//! the per-task run-time average that says what is short.

use std::time::Instant;

use super::task::InFlight;
use super::{Assignment, Payload, Scheduler, TraceContext};

/// Weight of a new `run_us` sample in the per-task moving average.
const RUN_TIME_EWMA_ALPHA: f64 = 0.2;

impl<P: Payload> Scheduler<P> {
    /// Adds a `run_us` sample to the task name's moving average.
    pub(super) fn observe_run_time(&mut self, name: &str, run_us: u64) {
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
}
