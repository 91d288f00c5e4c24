//! The orchestrator's handling of frontend and backend messages, without sockets: an input is a
//! sequence of events (messages from three clients and three workers, the clock moving, workers
//! exiting, assignments that cannot be sent, draining, recycling limits). Messages are decoded
//! with the broker's own `decode_client` / `decode_worker` / `task_policy`, and acted on as
//! `broker/clients.rs` and `broker/workers.rs` act, on the real `Scheduler`.
//!
//! Checked after every event: no panic; no task answered more often than it was accepted; every
//! task accepted and not yet answered is queued, waiting for a retry, or in flight; a submission
//! never grows the queue past its limit; every pid the broker would SIGKILL is a worker's (never
//! 0, 1 or negative). At the end, after the broker's stop sequence, every accepted task has been
//! answered exactly once.
//!
//! Input layout (what `scripts/fuzz_seeds.py` writes): events separated by `EVENT_SEP`; an
//! event is `[op, arg, rest...]`, and for messages `rest` is frames separated by `FRAME_SEP`.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use neutrino_orchestrator::broker::{
    decode_client, decode_worker, task_policy, BadClientMessage, BadWorkerMessage, ClientMessage, WorkerMessage,
};
use neutrino_orchestrator::scheduler::{
    Cancelled, Failure, Finished, Limits, Origin, Payload, Policy, RetireReason, Scheduler, Task, TraceContext,
};
use neutrino_protocol::{Message, RejectReason, TaskOptions};

const EVENT_SEP: &[u8] = b"\xffEV\xff";
const FRAME_SEP: &[u8] = b"\xffNT\xff";
const QUEUE_LIMIT: usize = 8;
const WINDOW: u32 = 4;
const MAX_PAYLOAD: usize = 64;
const LIVENESS: Duration = Duration::from_secs(3);
const PEERS: u8 = 3;

/// A frame, as `zmq::Message` is to the broker.
#[derive(Debug)]
struct Frame(Vec<u8>);

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Payload for Frame {
    fn duplicate(&self) -> Self {
        Frame(self.0.clone())
    }
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..at]);
        rest = &rest[at + sep.len()..];
    }
    out.push(rest);
    out
}

type Key = (Vec<u8>, u64);

struct Harness {
    sched: Scheduler<Frame>,
    now: Instant,
    task_options: HashMap<String, TaskOptions>,
    standby_ids: HashSet<String>,
    /// The next assignment cannot be sent: `Some(true)` the worker is unreachable, `Some(false)` its pipe is full.
    fail_next_send: Option<bool>,
    accepted: HashMap<Key, u32>,
    answered: HashMap<Key, u32>,
    accepted_total: u64,
    answered_total: u64,
}

impl Harness {
    fn new() -> Self {
        let policy =
            Policy { queue_limit: QUEUE_LIMIT, window: WINDOW, pipeline_max_us: 1000.0, limits: Limits::default() };
        let options = |timeout_s, retries| TaskOptions {
            timeout_s,
            retries,
            retry_backoff_s: Some(0.05),
            retry_backoff_max_s: Some(0.2),
        };
        let task_options = HashMap::from([
            ("add".to_owned(), options(None, None)),
            ("flaky".to_owned(), options(Some(1.0), Some(2))),
            ("slow".to_owned(), options(Some(0.5), None)),
        ]);
        Harness {
            sched: Scheduler::new(policy),
            now: Instant::now(),
            task_options,
            standby_ids: HashSet::new(),
            fail_next_send: None,
            accepted: HashMap::new(),
            answered: HashMap::new(),
            accepted_total: 0,
            answered_total: 0,
        }
    }

    fn answer(&mut self, origin: &Origin) {
        let key = (origin.client.clone(), origin.client_task_id);
        let answered = self.answered.entry(key.clone()).or_default();
        *answered += 1;
        let accepted = self.accepted.get(&key).copied().unwrap_or(0);
        assert!(*answered <= accepted, "task {key:?} answered {answered} times, accepted {accepted}");
        self.answered_total += 1;
    }

    fn answer_all(&mut self, answers: Vec<neutrino_orchestrator::scheduler::Answer>) {
        for a in answers {
            self.answer(&a.origin);
        }
    }

    /// The broker SIGKILLs this pid: it must name one process, never a group or init.
    fn kill(pid: u32) {
        assert!(pid > 1 && pid <= i32::MAX as u32, "the broker would kill({})", pid as i32);
    }

    fn worker_failed(&mut self, worker: &[u8], failure: Failure) {
        let answers = self.sched.worker_failed(worker, failure, self.now);
        self.answer_all(answers);
    }

    // ---- as broker/clients.rs --------------------------------------------------------------

    fn on_client(&mut self, mut parts: Vec<Frame>) {
        let client = parts[0].to_vec();
        match decode_client(&mut parts) {
            Ok(ClientMessage::Submit { msg, payload }) => {
                if payload.len() > MAX_PAYLOAD {
                    return; // rejected too_large
                }
                let policy = task_policy(&msg, self.task_options.get(&msg.task));
                let task = Task {
                    client: client.clone(),
                    client_task_id: msg.id,
                    name: msg.task,
                    policy,
                    attempt: 1,
                    accepted_at: self.now,
                    trace: TraceContext { traceparent: msg.traceparent, tracestate: msg.tracestate },
                    payload,
                };
                match self.sched.submit(task) {
                    Ok(()) => {
                        *self.accepted.entry((client, msg.id)).or_default() += 1;
                        self.accepted_total += 1;
                        assert!(self.sched.queue_depth() <= QUEUE_LIMIT, "a submission grew the queue past its limit");
                    }
                    Err(reason) => assert!(matches!(reason, RejectReason::Busy | RejectReason::Draining)),
                }
            }
            Ok(ClientMessage::Cancel(m)) => match self.sched.cancel(&client, m.id) {
                Cancelled::Answer(answer) => self.answer(&answer.origin),
                Cancelled::Kill { worker, pid } => {
                    Self::kill(pid);
                    self.worker_failed(&worker, Failure::Cancelled);
                }
                Cancelled::NotFound => {}
            },
            Ok(ClientMessage::Ping(_)) => {
                let counts = self.sched.worker_counts();
                assert!(counts.idle <= counts.ready);
            }
            Ok(ClientMessage::Describe(_)) | Ok(ClientMessage::Unknown(_)) => {}
            Err(BadClientMessage { error, .. }) => assert!(!error.to_string().is_empty()),
        }
    }

    // ---- as broker/workers.rs --------------------------------------------------------------

    fn on_worker(&mut self, mut parts: Vec<Frame>) {
        let identity = parts[0].to_vec();
        let now = self.now;
        match decode_worker(&mut parts) {
            Ok(WorkerMessage::Result { msg, payload }) => {
                assert_eq!(payload.is_some(), msg.has_payload());
                let retry = (msg.retry == Some(true)).then_some(msg.retry_delay_s);
                match self.sched.task_finished(&identity, msg.task_id, msg.run_us, retry, now) {
                    Finished::Reply(origin) => self.answer(&origin),
                    Finished::Retrying | Finished::Dropped => {}
                }
                if self.sched.check_recycle(&identity, now).is_some() {
                    self.recycle_due();
                }
            }
            Ok(WorkerMessage::Ready(msg)) => {
                Self::kill(msg.pid); // the pid it will be killed by, if ever
                let standby = self.standby_ids.remove(&msg.worker_id);
                let answers = self.sched.worker_ready(identity, msg.pid, msg.credits, standby, now);
                self.answer_all(answers);
            }
            Ok(WorkerMessage::Heartbeat { worker, msg }) => {
                assert_eq!(worker, msg.worker_id.as_bytes());
                if self.sched.heard_from(&worker, msg.rss_kb, now).is_some() {
                    self.recycle_due();
                }
            }
            Ok(WorkerMessage::Unknown(_)) => {}
            Err(BadWorkerMessage { error, task_id }) => {
                assert!(!error.to_string().is_empty());
                if let Some(id) = task_id {
                    if let Finished::Reply(origin) = self.sched.task_finished(&identity, id, None, None, now) {
                        self.answer(&origin); // protocol_error
                    }
                }
            }
        }
    }

    fn recycle_due(&mut self) {
        self.sched.promote_standby(self.now);
    }

    fn dispatch(&mut self) {
        while let Some(a) = self.sched.next_assignment(self.now) {
            let Some(unreachable) = self.fail_next_send.take() else { continue };
            self.sched.requeue_front(a.task_id, a.payload, a.trace);
            if unreachable {
                self.worker_failed(&a.worker, Failure::WorkerDied("the worker exited".into()));
            }
            break;
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = self.now;
        self.sched.release_due_retries(now);
        for (worker, pid) in self.sched.overran(now) {
            Self::kill(pid);
            self.worker_failed(&worker, Failure::Timeout);
        }
        for (worker, pid) in self.sched.silent(LIVENESS, now) {
            Self::kill(pid);
            self.worker_failed(&worker, Failure::WorkerDied("silent".into()));
        }
        if !self.sched.expired_lifetimes(now).is_empty() {
            self.recycle_due();
        }
        self.sched.to_shut_down();
        if let Some(at) = self.sched.next_deadline(Some(LIVENESS)) {
            let _ = at.saturating_duration_since(now);
        }
    }

    /// The broker's stop: answer what is queued or waiting for a retry, then what is in flight.
    fn stop(&mut self) {
        for task in self.sched.start_draining() {
            self.answer(&task.into_origin());
        }
        for origin in self.sched.abandon_in_flight() {
            self.answer(&origin);
        }
    }

    fn check(&self) {
        let alive = self.accepted_total - self.answered_total;
        let waiting = (self.sched.queue_depth() + self.sched.delayed()) as u64;
        assert!(waiting <= alive, "{waiting} tasks waiting but only {alive} accepted and unanswered");
        assert!(
            alive <= waiting + self.sched.in_flight() as u64,
            "{alive} tasks accepted and unanswered, but only {waiting} waiting and {} in flight",
            self.sched.in_flight()
        );
    }

    fn event(&mut self, event: &[u8]) {
        let (op, arg, rest) = match event {
            [op, arg, rest @ ..] => (*op, *arg, rest),
            [op] => (*op, 0, &[][..]),
            [] => return,
        };
        let peer = arg % PEERS;
        let frames = |identity: Vec<u8>| {
            let mut parts = vec![Frame(identity)];
            parts.extend(split(rest, FRAME_SEP).into_iter().filter(|_| !rest.is_empty()).map(|f| Frame(f.to_vec())));
            parts
        };
        match op % 8 {
            0 => self.on_client(frames(format!("client-{peer}").into_bytes())),
            1 => {
                let suffix = if arg & 0x80 != 0 { "/hb" } else { "" };
                self.on_worker(frames(format!("w{peer}{suffix}").into_bytes()));
            }
            2 => self.now += Duration::from_millis(u64::from(arg) * 50),
            3 => self.worker_failed(format!("w{peer}").as_bytes(), Failure::WorkerDied("exited".into())),
            4 => self.fail_next_send = Some(arg & 1 == 1),
            5 => {
                // Command::Drain: stop accepting, answer what is queued
                for task in self.sched.start_draining() {
                    self.answer(&task.into_origin());
                }
            }
            6 => self.sched.set_limits(Limits {
                max_tasks: u64::from(arg % 4),
                max_rss_kb: if arg & 0x40 != 0 { 1024 } else { 0 },
                max_lifetime: (arg & 0x80 != 0).then_some(Duration::from_secs(2)),
            }),
            _ => {
                if arg & 0x80 != 0 {
                    self.standby_ids.insert(format!("w{peer}"));
                } else {
                    self.sched.retire(format!("w{peer}").as_bytes(), RetireReason::Idle);
                }
            }
        }
        self.enforce_deadlines();
        self.dispatch();
        self.check();
    }
}

fuzz_target!(|data: &[u8]| {
    fastrand::seed(0x6e65_7574); // backoff and lifetime jitter: the same input runs the same way
    let mut h = Harness::new();
    for event in split(data, EVENT_SEP).into_iter().take(256) {
        h.event(event);
    }
    h.stop();
    h.check();
    for (key, accepted) in &h.accepted {
        let answered = h.answered.get(key).copied().unwrap_or(0);
        assert_eq!(answered, *accepted, "task {key:?}: accepted {accepted} times, answered {answered}");
    }
    assert_eq!(h.sched.queue_depth() + h.sched.delayed() + h.sched.in_flight(), 0);
});
