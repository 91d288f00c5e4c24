//! Worker ↔ orchestrator messages (SPEC.md §4.3).

use serde::{Deserialize, Serialize};

use crate::error::ErrorInfo;
use crate::impl_message;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReady {
    pub worker_id: String,
    pub pid: u32,
    pub credits: u32,
    pub tasks: Vec<String>,
}
impl_message!(WorkerReady, Never);

/// Payload: args `[args, kwargs]`, forwarded unchanged from `SubmitTask`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub task_id: u64,
    pub task: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// From the task's `SubmitTask`, unchanged, on every attempt (SPEC.md §4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}
impl_message!(TaskAssignment, Always, Traced);

/// Payload: the result, only when `status` is `ok`; forwarded unchanged into `TaskReply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: u64,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_s: Option<f64>,
}

impl_message!(TaskResult, WhenOk);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kb: Option<u64>,
}
impl_message!(Heartbeat, Never);

/// Also sent to the zygote on the control link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    pub graceful: bool,
}
impl_message!(Shutdown, Never);
