//! A task at each stage the scheduler knows: accepted and waiting ([`Task`]), chosen for a
//! worker ([`Assignment`]), assigned and not answered yet (`InFlight`), and whom to answer
//! about it ([`Origin`], [`Answer`]).

use std::time::{Duration, Instant};

use neutrino_protocol::ErrorInfo;

use super::TaskPolicy;

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

#[derive(Debug)]
pub(super) struct InFlight<P> {
    pub worker: Vec<u8>,
    pub client: Vec<u8>,
    pub client_task_id: u64,
    pub name: String,
    pub policy: TaskPolicy,
    pub attempt: u32,
    pub accepted_at: Instant,
    /// From acceptance to this attempt's assignment (SPEC.md §4.5).
    pub queue_us: u64,
    /// A copy of the arguments, kept while retries remain or while the task waits behind
    /// another on its worker (so it can be requeued if that worker dies first).
    pub copy: Option<P>,
    /// The trace context, kept (like `copy`, and only with it) for the next assignment.
    pub trace: TraceContext,
    pub short: bool,
    /// Answered `cancelled` while still waiting on its worker: drop its result.
    pub cancelled: bool,
}

impl<P> InFlight<P> {
    pub fn origin(&self) -> Origin {
        Origin {
            client: self.client.clone(),
            client_task_id: self.client_task_id,
            attempts: self.attempt,
            queue_us: Some(self.queue_us),
        }
    }

    /// The task again, for a later attempt (`next` true) or for this one, never started.
    pub fn into_task(self, payload: P, next: bool) -> Task<P> {
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
