//! Backend messages (`WorkerReady`, `TaskResult`, `Heartbeat`), assignments, and the worker
//! lifecycle the broker enforces: timeouts, liveness, recycling, killing workers.

use std::time::Instant;

use neutrino_protocol::{
    decode_frames, decode_meta, error_kind, parse_header, ErrorInfo, Heartbeat, Message, MessageType, ProtocolError,
    Shutdown, TaskAssignment, TaskReply, TaskResult, WorkerReady, STATUS_OK,
};
use tracing::{debug, error, info, warn};

use super::clients::frames;
use super::{send, Broker, Event, Side};
use crate::scheduler::{recycle_reason, Assignment, Failure, Finished};

/// Heartbeats come from a worker's second socket, routing id `<worker_id>` + this suffix.
const HEARTBEAT_SUFFIX: &[u8] = b"/hb";

fn name(identity: &[u8]) -> String {
    String::from_utf8_lossy(identity).into_owned()
}

impl Broker {
    pub(super) fn on_worker(&mut self, parts: &mut Vec<zmq::Message>) {
        let identity = parts[0].to_vec();
        if parts.len() < 3 {
            return warn!(worker = %name(&identity), "worker sent a message without header and meta");
        }
        let now = Instant::now();
        let result = parse_header(&parts[1]).and_then(|code| match MessageType::from_code(code) {
            Some(MessageType::TaskResult) => self.on_result(&identity, parts, now),
            Some(MessageType::WorkerReady) => frames::<WorkerReady>(parts).map(|m| self.on_ready(identity.clone(), m)),
            Some(MessageType::Heartbeat) => frames::<Heartbeat>(parts).map(|m| self.on_heartbeat(&identity, m, now)),
            Some(other) => Err(ProtocolError::Meta(format!("{other:?} is not a worker message"))),
            None => {
                debug!(code, "ignoring unknown message type from a worker");
                Ok(())
            }
        });
        if let Err(e) = result {
            warn!(worker = %name(&identity), error = %e, "malformed worker message");
        }
    }

    fn on_ready(&mut self, identity: Vec<u8>, msg: WorkerReady) {
        let standby = self.standby_ids.remove(&msg.worker_id);
        let answers = self.sched.worker_ready(identity, msg.pid, msg.credits, standby, Instant::now());
        self.answer_all(answers);
        let _ = self.events.send(Event::WorkerReady { worker_id: msg.worker_id, pid: msg.pid });
    }

    fn on_heartbeat(&mut self, identity: &[u8], msg: Heartbeat, now: Instant) {
        // From the side socket the identity is `<worker_id>/hb`; the meta names the worker.
        let worker = identity.strip_suffix(HEARTBEAT_SUFFIX).unwrap_or(identity);
        if worker != msg.worker_id.as_bytes() {
            return warn!(identity = %name(identity), worker_id = %msg.worker_id, "heartbeat names another worker");
        }
        if let Some(rss) = msg.rss_kb {
            self.metrics.observe_worker_rss(rss);
        }
        if let Some(reason) = self.sched.heard_from(worker, msg.rss_kb, now) {
            self.recycle_due(worker, reason);
        }
    }

    fn on_result(&mut self, worker: &[u8], parts: &mut Vec<zmq::Message>, now: Instant) -> Result<(), ProtocolError> {
        let msg = match decode_frames::<TaskResult, _>(&parts[1..]) {
            Ok((msg, _)) => msg,
            Err(e) => {
                // If at least the task id is readable, the task still gets its one reply.
                if let Ok(broken) = decode_meta::<TaskResult>(&parts[2]) {
                    if let Finished::Reply(origin) = self.sched.task_finished(worker, broken.task_id, None, None, now) {
                        let text = format!("the worker sent a malformed result: {e}");
                        self.reply_error(&origin, ErrorInfo::neutrino(error_kind::PROTOCOL_ERROR, text));
                    }
                }
                return Err(e);
            }
        };
        let retry = (msg.retry == Some(true)).then_some(msg.retry_delay_s);
        match self.sched.task_finished(worker, msg.task_id, msg.run_us, retry, now) {
            Finished::Reply(origin) => {
                self.metrics.task_finished(msg.error.as_ref().map_or(STATUS_OK, |e| e.kind.as_str()));
                let payload = if msg.has_payload() { parts.pop() } else { None };
                let reply = TaskReply {
                    id: origin.client_task_id,
                    status: msg.status,
                    attempts: origin.attempts,
                    error: msg.error,
                };
                self.send_client(&origin.client, &reply, payload);
            }
            Finished::Retrying => {
                debug!(task_id = msg.task_id, "task asked for a retry");
                self.metrics.retries.inc();
            }
            Finished::Dropped => debug!(task_id = msg.task_id, "result for a task nobody waits for; dropped"),
        }
        if let Some(reason) = self.sched.check_recycle(worker, now) {
            self.recycle_due(worker, reason);
        }
        Ok(())
    }

    pub(super) fn dispatch(&mut self, now: Instant) {
        while let Some(a) = self.sched.next_assignment(now) {
            self.metrics.dispatch_latency.observe(a.queued_for.as_secs_f64());
            debug!(task_id = a.task_id, task = %a.name, attempt = a.attempt, worker = %name(&a.worker), "dispatch");
            if !self.assign(a) {
                break; // a worker could not take it; the next event retries
            }
        }
    }

    /// Sends an assignment; if the worker cannot take it, the task goes back to the queue front
    /// (it never reached a worker, so no attempt is spent). Returns whether it was sent.
    fn assign(&mut self, a: Assignment<zmq::Message>) -> bool {
        let meta = TaskAssignment { task_id: a.task_id, task: a.name, attempt: a.attempt, timeout_s: a.timeout_s };
        let Err(unsent) = send(&self.backend, &a.worker, &meta, Some(a.payload)) else {
            return true;
        };
        match unsent.payload {
            Some(payload) => self.sched.requeue_front(a.task_id, payload),
            None => error!(worker = %name(&a.worker), error = %unsent.error, "assignment half sent"),
        }
        if unsent.error == zmq::Error::EHOSTUNREACH {
            // The worker vanished before the zygote's report reached us.
            warn!(worker = %name(&a.worker), "worker unreachable; dropping it");
            let answers =
                self.sched.worker_failed(&a.worker, Failure::WorkerDied("the worker exited".into()), Instant::now());
            self.answer_all(answers);
        } else {
            warn!(worker = %name(&a.worker), error = %unsent.error, "worker cannot take an assignment now; requeued");
        }
        false
    }

    /// Time-based duties: retries that are due, tasks over their timeout, silent workers,
    /// lifetimes, and `Shutdown` for retired workers with nothing left to do.
    pub(super) fn enforce_deadlines(&mut self, now: Instant) {
        self.sched.release_due_retries(now);
        for (worker, pid) in self.sched.overran(now) {
            warn!(worker = %name(&worker), pid, "task overran its timeout; killing the worker");
            self.metrics.timeouts.inc();
            self.kill(&worker, pid, "timeout");
            let answers = self.sched.worker_failed(&worker, Failure::Timeout, now);
            self.answer_all(answers);
        }
        if let Some(liveness) = self.liveness {
            for (worker, pid) in self.sched.silent(liveness, now) {
                warn!(worker = %name(&worker), pid, "no heartbeat for {liveness:?}; killing the worker");
                self.kill(&worker, pid, "silent");
                let why = format!(
                    "worker {} stopped answering (no heartbeat for {liveness:?}) and was killed",
                    name(&worker)
                );
                let answers = self.sched.worker_failed(&worker, Failure::WorkerDied(why), now);
                self.answer_all(answers);
            }
        }
        for (worker, reason) in self.sched.expired_lifetimes(now) {
            self.recycle_due(&worker, reason);
        }
        for worker in self.sched.to_shut_down() {
            debug!(worker = %name(&worker), "sending Shutdown to a retired worker");
            if send(&self.backend, &worker, &Shutdown { graceful: true }, None).is_err() {
                debug!(worker = %name(&worker), "retired worker already gone");
            }
        }
    }

    /// A worker reached a recycling limit (the scheduler retired it): a standby takes its
    /// place at once if one is ready, and the supervisor forks the next standby or replacement.
    fn recycle_due(&mut self, worker: &[u8], reason: &'static str) {
        let promoted = self.sched.promote_standby(Instant::now()).map(|id| name(&id));
        match &promoted {
            Some(spare) => info!("Recycling worker {} ({reason}); standby {spare} takes its place", name(worker)),
            None => info!("Recycling worker {} ({reason})", name(worker)),
        }
        self.metrics.recycled(reason);
        let _ = self.events.send(Event::Recycled { worker_id: name(worker), reason, promoted });
    }

    pub(super) fn retire(&mut self, worker_id: &str, reason: &'static str) {
        if self.sched.retire(worker_id.as_bytes(), reason) {
            debug!(worker = %worker_id, reason, "retiring");
            if reason == recycle_reason::IDLE {
                self.metrics.recycled(reason);
            }
        }
    }

    /// SIGKILLs a worker process; the zygote reaps it and reports `WorkerExited`.
    pub(super) fn kill(&mut self, worker: &[u8], pid: u32, reason: &'static str) {
        let _ = self.events.send(Event::Killed { worker_id: name(worker), reason });
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is a live child of our
        // zygote (it reported WorkerReady and no WorkerExited yet), so it cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }

    pub(super) fn on_worker_exited(&mut self, worker_id: &str, how: &str) {
        // Its last results may still wait in the backend socket: read them first.
        self.drain(Side::Backend);
        let why = format!("worker {worker_id} exited ({how}) while running this task");
        let answers = self.sched.worker_failed(worker_id.as_bytes(), Failure::WorkerDied(why), Instant::now());
        if !answers.is_empty() {
            warn!(worker = %worker_id, tasks = answers.len(), "worker exited while running tasks");
        }
        self.answer_all(answers);
    }

    pub(super) fn on_zygote_lost(&mut self) {
        self.drain(Side::Backend);
        for worker in self.sched.worker_ids() {
            let why = format!("worker {} died with its zygote", name(&worker));
            let answers = self.sched.worker_failed(&worker, Failure::WorkerDied(why), Instant::now());
            self.answer_all(answers);
        }
    }
}
