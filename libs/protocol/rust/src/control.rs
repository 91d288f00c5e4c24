//! Zygote ↔ orchestrator messages on the control link (SPEC.md §4.4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorInfo;
use crate::impl_message;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZygoteReady {
    pub pid: u32,
    pub tasks: Vec<String>,
    pub import_ms: f64,
    /// Sorted by task name (a BTreeMap), as the canonical encoding requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_options: Option<BTreeMap<String, TaskOptions>>,
}

/// A task's decorator defaults (SPEC.md §4.4); `SubmitTask` fields override them per call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_max_s: Option<f64>,
}
impl_message!(ZygoteReady, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZygoteFailed {
    pub error: ErrorInfo,
}
impl_message!(ZygoteFailed, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub worker_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u32>,
}
impl_message!(Fork, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forked {
    pub worker_id: String,
    pub pid: u32,
}
impl_message!(Forked, Never);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerExited {
    pub worker_id: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// Set only when the worker failed to start (it never sent `WorkerReady`): the start-up
    /// failure signal, kind `worker_start_error`. Never inferred from `exit_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}
impl_message!(WorkerExited, Never);

/// Payload (always, as a second record on the stream): the task catalog, task name →
/// description. The orchestrator forwards it without decoding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZygoteCatalog {
    pub tasks: Vec<String>,
    pub build_ms: f64,
}
impl_message!(ZygoteCatalog, Always);
