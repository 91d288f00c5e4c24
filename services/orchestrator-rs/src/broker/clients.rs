//! Frontend messages: `SubmitTask`, `CancelTask`, `Ping`, `DescribeTasks`, and every reply to a client.
//!
//! [`decode_client`] and [`task_policy`] need no socket: the broker and the fuzz target
//! (`services/orchestrator-rs/fuzz`) both decode with them.

use std::ops::Deref;
use std::time::Instant;

use neutrino_protocol::{
    decode_frames, parse_header, CancelTask, DescribeTasks, ErrorInfo, Message, MessageType, Ping, Pong, ProtocolError,
    RejectReason, SubmitTask, TaskAccepted, TaskOptions, TaskRejected, TaskReply, STATUS_ERROR,
};
use tracing::debug;

use super::sockets::Unsent;
use super::Broker;
use crate::metrics::Link;
use crate::scheduler::{
    Answer, Cancelled, Failure, Origin, Task, TaskPolicy, TraceContext, DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S,
};

/// Longest timeout or backoff honoured (a day).
const MAX_SECONDS: f64 = 86_400.0;

#[derive(serde::Deserialize)]
struct IdOnly {
    id: u64,
}

/// A frontend message as the broker acts on it. `P` is a frame (`zmq::Message`, or bytes).
#[derive(Debug)]
pub enum ClientMessage<P> {
    Submit {
        msg: SubmitTask,
        payload: P,
    },
    Cancel(CancelTask),
    Ping(Ping),
    Describe(DescribeTasks),
    /// A well-formed header with a type code this orchestrator does not know: ignored (SPEC.md §4).
    Unknown(u8),
}

/// A malformed frontend message: answered `TaskRejected{reason: invalid}` with `id` (the meta's
/// `id` when it is readable, else 0), and counted.
#[derive(Debug)]
pub struct BadClientMessage {
    pub id: u64,
    pub error: ProtocolError,
}

/// Decodes `[identity, header, meta, payload?]` from the frontend socket. Takes the payload
/// frame out of `parts` (it is forwarded to a worker untouched).
pub fn decode_client<P: Deref<Target = [u8]>>(parts: &mut Vec<P>) -> Result<ClientMessage<P>, BadClientMessage> {
    if parts.len() < 3 {
        let error = ProtocolError::FrameCount { expected: "2 or 3", got: parts.len().saturating_sub(1) };
        return Err(BadClientMessage { id: 0, error });
    }
    let code = parse_header(&parts[1]).map_err(|error| BadClientMessage { id: 0, error })?;
    let frames = &parts[1..];
    let result = match MessageType::from_code(code) {
        Some(MessageType::SubmitTask) => match decode_frames::<SubmitTask, _>(frames).map(|(msg, _)| msg) {
            Ok(msg) => {
                let payload = parts.pop().expect("decode_frames checked the payload frame");
                return Ok(ClientMessage::Submit { msg, payload });
            }
            Err(e) => Err(e),
        },
        Some(MessageType::CancelTask) => decode_frames::<CancelTask, _>(frames).map(|(m, _)| ClientMessage::Cancel(m)),
        Some(MessageType::Ping) => decode_frames::<Ping, _>(frames).map(|(m, _)| ClientMessage::Ping(m)),
        Some(MessageType::DescribeTasks) => {
            decode_frames::<DescribeTasks, _>(frames).map(|(m, _)| ClientMessage::Describe(m))
        }
        Some(other) => Err(ProtocolError::Meta(format!("{other:?} is not a client message"))),
        None => Ok(ClientMessage::Unknown(code)),
    };
    result.map_err(|error| {
        let id = rmp_serde::from_slice::<IdOnly>(&parts[2]).map(|m| m.id).unwrap_or(0);
        BadClientMessage { id, error }
    })
}

/// The app's defaults for a task (`defaults`, from `ZygoteReady`), overridden by the call's own
/// options. A value that makes no sense (not finite, not positive) falls back to the app's; both
/// are capped at a day, so no deadline arithmetic can overflow.
pub fn task_policy(msg: &SubmitTask, defaults: Option<&TaskOptions>) -> TaskPolicy {
    let valid = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0).map(|v| v.min(MAX_SECONDS));
    let pick = |call: Option<f64>, app: Option<f64>| valid(call).or(valid(app));
    TaskPolicy {
        timeout_s: pick(msg.timeout_s, defaults.and_then(|d| d.timeout_s)),
        retries: msg.retries.or(defaults.and_then(|d| d.retries)).unwrap_or(0),
        backoff_s: pick(None, defaults.and_then(|d| d.retry_backoff_s)).unwrap_or(DEFAULT_BACKOFF_S),
        backoff_max_s: pick(None, defaults.and_then(|d| d.retry_backoff_max_s)).unwrap_or(DEFAULT_BACKOFF_MAX_S),
    }
}

impl Broker {
    pub(super) fn on_client(&mut self, parts: &mut Vec<zmq::Message>) {
        let client = parts[0].to_vec();
        match decode_client(parts) {
            Ok(ClientMessage::Submit { msg, payload }) => self.on_submit(&client, msg, payload),
            Ok(ClientMessage::Cancel(m)) => self.on_cancel(&client, m.id),
            Ok(ClientMessage::Ping(m)) => self.on_ping(&client, m.nonce),
            Ok(ClientMessage::Describe(m)) => self.on_describe(&client, m.nonce),
            Ok(ClientMessage::Unknown(code)) => {
                debug!(code, "ignoring unknown message type from a client");
                self.metrics.malformed(Link::Frontend);
            }
            Err(BadClientMessage { id, error }) => {
                debug!(%error, "malformed client message");
                self.metrics.malformed(Link::Frontend);
                self.reject(&client, id, RejectReason::Invalid, &error.to_string());
            }
        }
    }

    fn on_submit(&mut self, client: &[u8], msg: SubmitTask, payload: zmq::Message) {
        if payload.len() > self.max_payload {
            self.metrics.tasks_rejected(RejectReason::TooLarge);
            let text = format!("payload of {} bytes exceeds the limit of {} bytes", payload.len(), self.max_payload);
            return self.reject(client, msg.id, RejectReason::TooLarge, &text);
        }
        let policy = task_policy(&msg, self.task_options.get(&msg.task));
        let id = msg.id;
        let task = Task {
            client: client.to_vec(),
            client_task_id: msg.id,
            name: msg.task,
            policy,
            attempt: 1,
            accepted_at: Instant::now(),
            trace: TraceContext { traceparent: msg.traceparent, tracestate: msg.tracestate },
            payload,
        };
        match self.sched.submit(task) {
            Ok(()) => {
                if msg.ack == Some(true) {
                    self.send_client(client, &TaskAccepted { id }, None);
                }
            }
            Err(reason) => {
                self.metrics.tasks_rejected(reason);
                let text = match reason {
                    RejectReason::Busy => format!(
                        "the queue is full ({} tasks waiting); retry later or on another orchestrator",
                        self.sched.queue_depth()
                    ),
                    _ => "the orchestrator is shutting down; retry on another orchestrator".to_owned(),
                };
                self.reject(client, id, reason, &text);
            }
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

    fn reject(&mut self, client: &[u8], id: u64, reason: RejectReason, message: &str) {
        let msg = TaskRejected { id, reason: reason.as_str().to_owned(), message: message.to_owned() };
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
            queue_us: origin.queue_us,
            run_us: None,
        };
        self.send_client(&origin.client, &reply, None);
    }

    pub(super) fn send_client<M: Message>(&self, client: &[u8], msg: &M, payload: Option<zmq::Message>) {
        if let Err(Unsent { error, .. }) = self.send_frontend(client, msg, payload) {
            // EHOSTUNREACH: the client disconnected; EAGAIN: it stopped reading replies.
            tracing::warn!(error = %error, message = M::NAME, "could not deliver to client");
            self.metrics.replies_undelivered.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use neutrino_protocol::{encode_meta, header, TRACE_MAX_BYTES};

    use super::*;

    fn submit() -> SubmitTask {
        SubmitTask {
            id: 9,
            task: "add".into(),
            timeout_s: None,
            retries: None,
            ack: None,
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn a_submission_hands_back_its_payload_frame() {
        let mut parts = vec![b"c".to_vec(), header(MessageType::SubmitTask).to_vec(), encode_meta(&submit()), vec![1]];
        match decode_client(&mut parts) {
            Ok(ClientMessage::Submit { msg, payload }) => assert_eq!((msg.id, payload), (9, vec![1])),
            other => panic!("{other:?}"),
        }
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn a_malformed_message_is_refused_with_its_id_when_readable() {
        // no payload frame: the id is still readable
        let mut parts = vec![b"c".to_vec(), header(MessageType::SubmitTask).to_vec(), encode_meta(&submit())];
        let err = decode_client(&mut parts).unwrap_err();
        assert_eq!((err.id, err.error.class()), (9, "frame_count"));
        for mut parts in [vec![b"c".to_vec()], vec![b"c".to_vec(), b"NT".to_vec()], vec![b"c".to_vec(), vec![], vec![]]]
        {
            assert_eq!(decode_client(&mut parts).unwrap_err().id, 0);
        }
        let mut wrong_way = vec![b"c".to_vec(), header(MessageType::TaskReply).to_vec(), vec![0x80]];
        assert!(decode_client(&mut wrong_way).unwrap_err().error.to_string().contains("not a client message"));
        let mut unknown = vec![b"c".to_vec(), b"NT\x01\x7f".to_vec(), vec![0x80]];
        assert!(matches!(decode_client(&mut unknown), Ok(ClientMessage::Unknown(0x7f))));
    }

    #[test]
    fn a_trace_context_over_the_limit_is_refused_with_its_id() {
        let parts =
            |msg: &SubmitTask| vec![b"c".to_vec(), header(MessageType::SubmitTask).to_vec(), encode_meta(msg), vec![1]];
        let fits = SubmitTask { traceparent: Some("0".repeat(TRACE_MAX_BYTES)), ..submit() };
        match decode_client(&mut parts(&fits)) {
            Ok(ClientMessage::Submit { msg, .. }) => assert_eq!(msg.traceparent, fits.traceparent),
            other => panic!("{other:?}"),
        }
        let over = SubmitTask { tracestate: Some("0".repeat(TRACE_MAX_BYTES + 1)), ..submit() };
        let err = decode_client(&mut parts(&over)).unwrap_err();
        assert_eq!((err.id, err.error.class()), (9, "meta"));
        assert!(err.error.to_string().contains("'tracestate' is 513 bytes, over 512"), "{}", err.error);
    }

    #[test]
    fn a_call_option_that_makes_no_sense_falls_back_to_the_app_default() {
        let app = TaskOptions { timeout_s: Some(2.0), retries: Some(1), ..TaskOptions::default() };
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            let msg = SubmitTask { timeout_s: Some(bad), ..submit() };
            assert_eq!(task_policy(&msg, Some(&app)).timeout_s, Some(2.0), "{bad}");
        }
        let long = SubmitTask { timeout_s: Some(1e300), retries: Some(0), ..submit() };
        let policy = task_policy(&long, Some(&app));
        assert_eq!((policy.timeout_s, policy.retries), (Some(MAX_SECONDS), 0));
    }
}
