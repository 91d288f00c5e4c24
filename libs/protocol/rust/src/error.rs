//! The shared `Error` structure, error kinds, rejection reasons and exit codes (SPEC.md §4.1, §5, §7).

use serde::{Deserialize, Serialize};

/// Jupyter-style error shape carried by `TaskReply`, `TaskResult`, `ZygoteFailed` and `WorkerExited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: String,
    pub ename: String,
    pub evalue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

impl ErrorInfo {
    /// An error raised by Neutrino itself (no remote exception): `ename` is the kind.
    pub fn neutrino(kind: &str, evalue: impl Into<String>) -> Self {
        ErrorInfo { kind: kind.to_owned(), ename: kind.to_owned(), evalue: evalue.into(), traceback: None }
    }
}

/// Error kinds (SPEC.md §5).
pub mod error_kind {
    pub const TASK_ERROR: &str = "task_error";
    pub const UNKNOWN_TASK: &str = "unknown_task";
    pub const BAD_ARGUMENTS: &str = "bad_arguments";
    pub const RESULT_NOT_SERIALIZABLE: &str = "result_not_serializable";
    pub const RESULT_TOO_LARGE: &str = "result_too_large";
    pub const WORKER_DIED: &str = "worker_died";
    pub const CANCELLED: &str = "cancelled";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const PROTOCOL_ERROR: &str = "protocol_error";
    pub const TIMEOUT: &str = "timeout";
    pub const APP_IMPORT_ERROR: &str = "app_import_error";
    pub const WORKER_START_ERROR: &str = "worker_start_error";
}

/// `TaskRejected.reason` values (SPEC.md §4.2).
pub mod reject_reason {
    pub const BUSY: &str = "busy";
    pub const DRAINING: &str = "draining";
    pub const INVALID: &str = "invalid";
    pub const TOO_LARGE: &str = "too_large";
}

/// Process exit codes (SPEC.md §7): what Neutrino's own processes exit with. A worker's code is
/// reported and logged, never acted on: user code can exit with any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    AppImport = 3,
    Protocol = 4,
}

impl ExitCode {
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => ExitCode::Ok,
            1 => ExitCode::Failure,
            2 => ExitCode::Usage,
            3 => ExitCode::AppImport,
            4 => ExitCode::Protocol,
            _ => return None,
        })
    }
}
