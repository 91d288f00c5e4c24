//! Client ↔ orchestrator messages (SPEC.md §4.2).

use serde::{Deserialize, Serialize};

use crate::error::ErrorInfo;
use crate::impl_message;

/// Payload: args `[args, kwargs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTask {
    pub id: u64,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<bool>,
    /// The caller's W3C `traceparent`, opaque, at most [`crate::TRACE_MAX_BYTES`] (SPEC.md §4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with it, opaque, at most [`crate::TRACE_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}
impl_message!(SubmitTask, Always, Traced);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccepted {
    pub id: u64,
}
impl_message!(TaskAccepted, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRejected {
    pub id: u64,
    pub reason: String,
    pub message: String,
}
impl_message!(TaskRejected, Never);

/// Payload: the result, only when `status` is `ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReply {
    pub id: u64,
    pub status: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Microseconds from acceptance to the last attempt's assignment, earlier attempts and
    /// backoffs included (SPEC.md §4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_us: Option<u64>,
    /// The last attempt's `TaskResult.run_us`, when a worker answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_us: Option<u64>,
}

impl_message!(TaskReply, WhenOk);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelTask {
    pub id: u64,
}
impl_message!(CancelTask, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}
impl_message!(Ping, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
    pub queue_depth: u64,
    pub workers: u32,
    pub idle_workers: u32,
    pub draining: bool,
    /// Random per orchestrator process: a client that sees it change knows the orchestrator
    /// restarted and forgot every task it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u64>,
}
impl_message!(Pong, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeTasks {
    pub nonce: u64,
}
impl_message!(DescribeTasks, Never);

/// Payload: the task catalog (task name → description), only when `ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCatalog {
    pub nonce: u64,
    pub ready: bool,
    pub tasks: Vec<String>,
}
impl_message!(TaskCatalog, WhenReady);
