//! Zygote ↔ orchestrator messages on the control link (SPEC.md §4.4).

use serde::{Deserialize, Serialize};

use crate::error::ErrorInfo;
use crate::impl_message;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZygoteReady {
    pub pid: u32,
    pub tasks: Vec<String>,
    pub import_ms: f64,
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
}
impl_message!(WorkerExited, Never);
