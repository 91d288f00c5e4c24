//! Frontend messages: `SubmitTask`, `CancelTask`, `Ping`, `DescribeTasks`, and every reply to a client.

use std::time::Instant;

use neutrino_protocol::{
    decode_frames, parse_header, reject_reason, CancelTask, DescribeTasks, ErrorInfo, Message, MessageType, Ping, Pong,
    ProtocolError, SubmitTask, TaskAccepted, TaskRejected, TaskReply, STATUS_ERROR,
};
use tracing::debug;

use super::{send, Broker, Unsent};
use crate::scheduler::{
    Answer, Cancelled, Failure, Origin, Task, TaskPolicy, DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S,
};

/// Longest timeout or backoff honoured (a day).
const MAX_SECONDS: f64 = 86_400.0;

#[derive(serde::Deserialize)]
struct IdOnly {
    id: u64,
}

impl Broker {
    pub(super) fn on_client(&mut self, parts: &mut Vec<zmq::Message>) {
        let client = parts[0].to_vec();
        if parts.len() < 3 {
            return self.reject(&client, 0, reject_reason::INVALID, "expected header and meta frames");
        }
        let code = match parse_header(&parts[1]) {
            Ok(code) => code,
            Err(e) => return self.reject(&client, 0, reject_reason::INVALID, &e.to_string()),
        };
        let result = match MessageType::from_code(code) {
            Some(MessageType::SubmitTask) => self.on_submit(&client, parts),
            Some(MessageType::CancelTask) => frames::<CancelTask>(parts).map(|m| self.on_cancel(&client, m.id)),
            Some(MessageType::Ping) => frames::<Ping>(parts).map(|m| self.on_ping(&client, m.nonce)),
            Some(MessageType::DescribeTasks) => {
                frames::<DescribeTasks>(parts).map(|m| self.on_describe(&client, m.nonce))
            }
            Some(other) => Err(ProtocolError::Meta(format!("{other:?} is not a client message"))),
            None => {
                debug!(code, "ignoring unknown message type from a client");
                Ok(())
            }
        };
        if let Err(e) = result {
            let id = rmp_serde::from_slice::<IdOnly>(&parts[2]).map(|m| m.id).unwrap_or(0);
            debug!(error = %e, "malformed client message");
            self.reject(&client, id, reject_reason::INVALID, &e.to_string());
        }
    }

    fn on_submit(&mut self, client: &[u8], parts: &mut Vec<zmq::Message>) -> Result<(), ProtocolError> {
        let (msg, _) = decode_frames::<SubmitTask, _>(&parts[1..])?;
        let payload = parts.pop().expect("decode_frames checked the payload frame");
        if payload.len() > self.max_payload {
            self.metrics.tasks_rejected(reject_reason::TOO_LARGE);
            let text = format!("payload of {} bytes exceeds the limit of {} bytes", payload.len(), self.max_payload);
            self.reject(client, msg.id, reject_reason::TOO_LARGE, &text);
            return Ok(());
        }
        let policy = self.policy_for(&msg);
        let id = msg.id;
        let task = Task {
            client: client.to_vec(),
            client_task_id: msg.id,
            name: msg.task,
            policy,
            attempt: 1,
            accepted_at: Instant::now(),
            payload,
        };
        match self.sched.submit(task) {
            Ok(()) => {
                if msg.ack == Some(true) {
                    self.send_client(client, &TaskAccepted { id: msg.id }, None);
                }
            }
            Err(reason) => {
                self.metrics.tasks_rejected(reason);
                let text = match reason {
                    reject_reason::BUSY => format!(
                        "the queue is full ({} tasks waiting); retry later or on another orchestrator",
                        self.sched.queue_depth()
                    ),
                    _ => "the orchestrator is shutting down; retry on another orchestrator".to_owned(),
                };
                self.reject(client, id, reason, &text);
            }
        }
        Ok(())
    }

    /// The app's defaults for this task, overridden by the call's own options.
    fn policy_for(&self, msg: &SubmitTask) -> TaskPolicy {
        let defaults = self.task_options.get(&msg.task);
        // A call's value that makes no sense falls back to the app's; both are capped at a day,
        // so no deadline arithmetic can overflow.
        let valid = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0).map(|v| v.min(MAX_SECONDS));
        let pick = |call: Option<f64>, app: Option<f64>| valid(call).or(valid(app));
        TaskPolicy {
            timeout_s: pick(msg.timeout_s, defaults.and_then(|d| d.timeout_s)),
            retries: msg.retries.or(defaults.and_then(|d| d.retries)).unwrap_or(0),
            backoff_s: pick(None, defaults.and_then(|d| d.retry_backoff_s)).unwrap_or(DEFAULT_BACKOFF_S),
            backoff_max_s: pick(None, defaults.and_then(|d| d.retry_backoff_max_s)).unwrap_or(DEFAULT_BACKOFF_MAX_S),
        }
    }

    fn on_cancel(&mut self, client: &[u8], id: u64) {
        match self.sched.cancel(client, id) {
            Cancelled::Answer(answer) => self.answer(answer),
            Cancelled::Kill { worker, pid } => {
                self.kill(&worker, pid, "cancel");
                let answers = self.sched.worker_failed(&worker, Failure::Cancelled, Instant::now());
                self.answer_all(answers);
            }
            Cancelled::NotFound => debug!(id, "cancel for a task that is not waiting or running"),
        }
    }

    fn on_ping(&mut self, client: &[u8], nonce: u64) {
        let counts = self.sched.worker_counts();
        let pong = Pong {
            nonce,
            queue_depth: self.sched.queue_depth() as u64,
            workers: counts.ready,
            idle_workers: counts.idle,
            draining: self.sched.is_draining(),
            instance: Some(self.instance),
        };
        self.send_client(client, &pong, None);
    }

    fn on_describe(&mut self, client: &[u8], nonce: u64) {
        let (reply, payload) = self.catalog.reply(nonce);
        self.send_client(client, &reply, payload.map(zmq::Message::from));
    }

    fn reject(&mut self, client: &[u8], id: u64, reason: &str, message: &str) {
        let msg = TaskRejected { id, reason: reason.to_owned(), message: message.to_owned() };
        self.send_client(client, &msg, None);
    }

    pub(super) fn answer(&mut self, answer: Answer) {
        self.reply_error(&answer.origin, answer.error);
    }

    pub(super) fn answer_all(&mut self, answers: Vec<Answer>) {
        for a in answers {
            self.answer(a);
        }
    }

    pub(super) fn reply_error(&mut self, origin: &Origin, error: ErrorInfo) {
        self.metrics.task_finished(&error.kind);
        let reply = TaskReply {
            id: origin.client_task_id,
            status: STATUS_ERROR.into(),
            attempts: origin.attempts,
            error: Some(error),
        };
        self.send_client(&origin.client, &reply, None);
    }

    pub(super) fn send_client<M: Message>(&self, client: &[u8], msg: &M, payload: Option<zmq::Message>) {
        if let Err(Unsent { error, .. }) = send(&self.frontend, client, msg, payload) {
            // EHOSTUNREACH: the client disconnected; EAGAIN: it stopped reading replies.
            tracing::warn!(error = %error, message = M::NAME, "could not deliver to client");
            self.metrics.replies_undelivered.inc();
        }
    }
}

/// Decodes a payload-less message from [identity, header, meta].
pub(super) fn frames<M: Message>(parts: &[zmq::Message]) -> Result<M, ProtocolError> {
    decode_frames::<M, _>(&parts[1..]).map(|(m, _)| m)
}
