//! Backend messages (`WorkerReady`, `TaskResult`, `Heartbeat`), assignments, and the worker
//! lifecycle the broker enforces: timeouts, liveness, recycling, killing workers.
//!
//! [`decode_worker`] needs no socket: the broker and the fuzz target
//! (`services/orchestrator-rs/fuzz`) both decode with it.

use std::ops::Deref;
use std::time::Instant;

use neutrino_protocol::{
    decode_frames, parse_header, ErrorInfo, ErrorKind, Heartbeat, Message, MessageType, ProtocolError, Shutdown,
    TaskAssignment, TaskReply, TaskResult, WorkerReady, STATUS_OK,
};
use tracing::{debug, error, info, warn};

use super::sockets::send;
use super::{Broker, Event, Side};
use crate::metrics::Link;
use crate::scheduler::{Assignment, Failure, Finished, RetireReason, TraceContext};

/// Heartbeats come from a worker's second socket, routing id `<worker_id>` + this suffix.
const HEARTBEAT_SUFFIX: &[u8] = b"/hb";

fn name(identity: &[u8]) -> String {
    String::from_utf8_lossy(identity).into_owned()
}

/// A backend message as the broker acts on it. `P` is a frame (`zmq::Message`, or bytes).
#[derive(Debug)]
pub enum WorkerMessage<P> {
    /// `payload`: the result frame, present exactly when the status is `ok`.
    Result {
        msg: TaskResult,
        payload: Option<P>,
    },
    Ready(WorkerReady),
    /// `worker`: the worker's routing id (the side socket's id without its `/hb` suffix), checked
    /// against the id the heartbeat names.
    Heartbeat {
        worker: Vec<u8>,
        msg: Heartbeat,
    },
    /// A well-formed header with a type code this orchestrator does not know: ignored (SPEC.md §4).
    Unknown(u8),
}

/// A malformed backend message: logged, counted and dropped.
#[derive(Debug)]
pub struct BadWorkerMessage {
    pub error: ProtocolError,
    /// The task of a malformed `TaskResult`, when its `task_id` is still readable: that task
    /// gets its one reply, a `protocol_error`, instead of waiting for an answer that never comes.
    pub task_id: Option<u64>,
}

#[derive(serde::Deserialize)]
struct TaskIdOnly {
    task_id: u64,
}

/// Decodes `[identity, header, meta, payload?]` from the backend socket. Takes the payload frame
/// out of `parts` (it is forwarded to the client untouched).
pub fn decode_worker<P: Deref<Target = [u8]>>(parts: &mut Vec<P>) -> Result<WorkerMessage<P>, BadWorkerMessage> {
    let bad = |error| BadWorkerMessage { error, task_id: None };
    if parts.len() < 3 {
        return Err(bad(ProtocolError::FrameCount { expected: "2 or 3", got: parts.len().saturating_sub(1) }));
    }
    let code = parse_header(&parts[1]).map_err(bad)?;
    let frames = &parts[1..];
    match MessageType::from_code(code) {
        Some(MessageType::TaskResult) => match decode_frames::<TaskResult, _>(frames).map(|(msg, _)| msg) {
            Ok(msg) => {
                let payload = if msg.has_payload() { parts.pop() } else { None };
                Ok(WorkerMessage::Result { msg, payload })
            }
            Err(error) => {
                let task_id = rmp_serde::from_slice::<TaskIdOnly>(&parts[2]).ok().map(|m| m.task_id);
                Err(BadWorkerMessage { error, task_id })
            }
        },
        Some(MessageType::WorkerReady) => {
            let (msg, _) = decode_frames::<WorkerReady, _>(frames).map_err(bad)?;
            // The broker signals this pid (timeouts, cancels): never 0, 1 or a negative pid_t,
            // which kill(2) reads as a process group, init, or every process it may signal.
            if msg.pid <= 1 || msg.pid > i32::MAX as u32 {
                return Err(bad(ProtocolError::Meta(format!("WorkerReady: pid {} is not a worker's", msg.pid))));
            }
            Ok(WorkerMessage::Ready(msg))
        }
        Some(MessageType::Heartbeat) => {
            let (msg, _) = decode_frames::<Heartbeat, _>(frames).map_err(bad)?;
            let identity = &parts[0][..];
            let worker = identity.strip_suffix(HEARTBEAT_SUFFIX).unwrap_or(identity);
            if worker != msg.worker_id.as_bytes() {
                let text = format!("heartbeat from {} names worker {}", name(identity), msg.worker_id);
                return Err(bad(ProtocolError::Meta(text)));
            }
            Ok(WorkerMessage::Heartbeat { worker: worker.to_vec(), msg })
        }
        Some(other) => Err(bad(ProtocolError::Meta(format!("{other:?} is not a worker message")))),
        None => Ok(WorkerMessage::Unknown(code)),
    }
}

impl Broker {
    pub(super) fn on_worker(&mut self, parts: &mut Vec<zmq::Message>) {
        let identity = parts[0].to_vec();
        let now = Instant::now();
        match decode_worker(parts) {
            Ok(WorkerMessage::Result { msg, payload }) => self.on_result(&identity, msg, payload, now),
            Ok(WorkerMessage::Ready(msg)) => self.on_ready(identity, msg),
            Ok(WorkerMessage::Heartbeat { worker, msg }) => self.on_heartbeat(&worker, msg, now),
            Ok(WorkerMessage::Unknown(code)) => {
                debug!(code, "ignoring unknown message type from a worker");
                self.metrics.malformed(Link::Backend);
            }
            Err(BadWorkerMessage { error, task_id }) => {
                warn!(worker = %name(&identity), %error, "malformed worker message");
                self.metrics.malformed(Link::Backend);
                // If at least the task id is readable, the task still gets its one reply.
                let finished = task_id.map(|id| self.sched.task_finished(&identity, id, None, None, now));
                if let Some(Finished::Reply(origin)) = finished {
                    let text = format!("the worker sent a malformed result: {error}");
                    self.reply_error(&origin, ErrorInfo::neutrino(ErrorKind::ProtocolError, text));
                }
            }
        }
    }

    fn on_ready(&mut self, identity: Vec<u8>, msg: WorkerReady) {
        if !self.standby_ids.contains(&msg.worker_id) {
            // Its `Standby` may have been sent after this pass looked at the command channel (a
            // thread kept off the CPU while reading the sockets outlasts a fork); if it was,
            // it is in the channel now, since it was sent before the fork.
            self.receive_commands();
        }
        let standby = self.standby_ids.remove(&msg.worker_id);
        let answers = self.sched.worker_ready(identity.clone(), msg.pid, msg.credits, standby, Instant::now());
        self.answer_all(answers);
        if let Some(reason) = self.retire_ids.remove(&msg.worker_id) {
            self.retire_known(&identity, reason);
        }
        let _ = self.events.send(Event::WorkerReady { worker_id: msg.worker_id, pid: msg.pid });
    }

    fn on_heartbeat(&mut self, worker: &[u8], msg: Heartbeat, now: Instant) {
        if let Some(rss) = msg.rss_kb {
            self.metrics.observe_worker_rss(rss);
        }
        if let Some(reason) = self.sched.heard_from(worker, msg.rss_kb, now) {
            self.recycle_due(worker, reason);
        }
    }

    fn on_result(&mut self, worker: &[u8], msg: TaskResult, payload: Option<zmq::Message>, now: Instant) {
        let retry = (msg.retry == Some(true)).then_some(msg.retry_delay_s);
        if let Some(run_us) = msg.run_us {
            self.metrics.task_run.observe(run_us as f64 * 1e-6);
        }
        match self.sched.task_finished(worker, msg.task_id, msg.run_us, retry, now) {
            Finished::Reply(origin) => {
                self.metrics.task_finished(msg.error.as_ref().map_or(STATUS_OK, |e| e.kind.as_str()));
                let reply = TaskReply {
                    id: origin.client_task_id,
                    status: msg.status,
                    attempts: origin.attempts,
                    error: msg.error,
                    queue_us: origin.queue_us,
                    run_us: msg.run_us,
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
    }

    pub(super) fn dispatch(&mut self, now: Instant) {
        while let Some(a) = self.sched.next_assignment(now) {
            self.metrics.queue_wait.observe(a.queued_for.as_secs_f64());
            debug!(task_id = a.task_id, task = %a.name, attempt = a.attempt, worker = %name(&a.worker), "dispatch");
            if !self.assign(a) {
                break; // a worker could not take it; the next event retries
            }
        }
    }

    /// Sends an assignment; if the worker cannot take it, the task goes back to the queue front
    /// (it never reached a worker, so no attempt is spent). Returns whether it was sent.
    fn assign(&mut self, a: Assignment<zmq::Message>) -> bool {
        let meta = TaskAssignment {
            task_id: a.task_id,
            task: a.name,
            attempt: a.attempt,
            timeout_s: a.timeout_s,
            traceparent: a.trace.traceparent,
            tracestate: a.trace.tracestate,
        };
        let Err(unsent) = send(&self.backend, &a.worker, &meta, Some(a.payload)) else {
            return true;
        };
        match unsent.payload {
            Some(payload) => {
                let trace = TraceContext { traceparent: meta.traceparent, tracestate: meta.tracestate };
                self.sched.requeue_front(a.task_id, payload, trace);
            }
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
    fn recycle_due(&mut self, worker: &[u8], reason: RetireReason) {
        let promoted = self.sched.promote_standby(Instant::now()).map(|id| name(&id));
        match &promoted {
            Some(spare) => info!("Recycling worker {} ({reason}); standby {spare} takes its place", name(worker)),
            None => info!("Recycling worker {} ({reason})", name(worker)),
        }
        self.metrics.recycled(reason);
        let _ = self.events.send(Event::Recycled { worker_id: name(worker), reason, promoted });
    }

    /// `Command::Retire`. A worker not ready yet (a standby let go by a reload while it starts)
    /// is retired when it is (`on_ready`): dropping the command left it idle as a standby until
    /// shutdown, while the pool counted it as retired. Its exit forgets it (`on_worker_exited`):
    /// the pool retires only workers whose exit it has not handled, so that exit is still to come
    /// (or `ZygoteLost`), even for one this thread already removed (killed, unreachable).
    pub(super) fn retire(&mut self, worker_id: &str, reason: RetireReason) {
        if self.sched.knows(worker_id.as_bytes()) {
            self.retire_known(worker_id.as_bytes(), reason);
        } else {
            debug!(worker = %worker_id, reason = reason.as_str(), "retiring once it is ready");
            self.retire_ids.insert(worker_id.to_owned(), reason);
        }
    }

    fn retire_known(&mut self, worker: &[u8], reason: RetireReason) {
        if self.sched.retire(worker, reason) {
            debug!(worker = %name(worker), reason = reason.as_str(), "retiring");
            if reason == RetireReason::Idle {
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
        // One that exits before it is ready (it could not start, or not be forked) never reports
        // ready: what waited for that is forgotten.
        self.standby_ids.remove(worker_id);
        self.retire_ids.remove(worker_id);
    }

    pub(super) fn on_zygote_lost(&mut self) {
        self.drain(Side::Backend);
        // The workers still starting died too (`standby_ids`: see `receive_commands`).
        self.retire_ids.clear();
        for worker in self.sched.worker_ids() {
            let why = format!("worker {} died with its zygote", name(&worker));
            let answers = self.sched.worker_failed(&worker, Failure::WorkerDied(why), Instant::now());
            self.answer_all(answers);
        }
    }
}

#[cfg(test)]
mod tests {
    use neutrino_protocol::{encode_meta, header};

    use super::*;

    fn parts<M: Message>(identity: &str, msg: &M, payload: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut parts = vec![identity.as_bytes().to_vec(), header(M::TYPE).to_vec(), encode_meta(msg)];
        parts.extend(payload.map(<[u8]>::to_vec));
        parts
    }

    fn ready(pid: u32) -> WorkerReady {
        WorkerReady { worker_id: "w1".into(), pid, credits: 1, tasks: vec![] }
    }

    #[test]
    fn a_ready_worker_must_name_a_pid_the_broker_may_kill() {
        assert!(matches!(decode_worker(&mut parts("w1", &ready(4242), None)), Ok(WorkerMessage::Ready(_))));
        for pid in [0, 1, 1 << 31, u32::MAX] {
            let err = decode_worker(&mut parts("w1", &ready(pid), None)).unwrap_err();
            assert!(err.error.to_string().contains("is not a worker's"), "{pid}: {}", err.error);
        }
    }

    #[test]
    fn a_heartbeat_must_name_the_worker_it_comes_from() {
        let hb = Heartbeat { worker_id: "w1".into(), rss_kb: None };
        match decode_worker(&mut parts("w1/hb", &hb, None)) {
            Ok(WorkerMessage::Heartbeat { worker, .. }) => assert_eq!(worker, b"w1"),
            other => panic!("{other:?}"),
        }
        assert!(decode_worker(&mut parts("w2/hb", &hb, None)).is_err());
    }

    #[test]
    fn a_malformed_result_still_names_its_task_when_it_can() {
        let ok =
            TaskResult { task_id: 7, status: "ok".into(), error: None, run_us: None, retry: None, retry_delay_s: None };
        // status ok without its payload frame; then a status that is neither ok nor error
        let err = decode_worker(&mut parts("w1", &ok, None)).unwrap_err();
        assert_eq!((err.task_id, err.error.class()), (Some(7), "frame_count"));
        let odd = TaskResult { status: "maybe".into(), ..ok.clone() };
        assert_eq!(decode_worker(&mut parts("w1", &odd, None)).unwrap_err().task_id, Some(7));
        match decode_worker(&mut parts("w1", &ok, Some(b"\x03"))) {
            Ok(WorkerMessage::Result { payload, .. }) => assert_eq!(payload.as_deref(), Some(&b"\x03"[..])),
            other => panic!("{other:?}"),
        }
        let mut short = vec![b"w1".to_vec(), header(MessageType::TaskResult).to_vec()];
        assert_eq!(decode_worker(&mut short).unwrap_err().task_id, None);
    }
}
