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
    pub fn neutrino(kind: ErrorKind, evalue: impl Into<String>) -> Self {
        ErrorInfo {
            kind: kind.as_str().to_owned(),
            ename: kind.as_str().to_owned(),
            evalue: evalue.into(),
            traceback: None,
        }
    }

    /// The kind as one this crate knows; `None` for a kind added by a newer peer.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.kind.parse().ok()
    }
}

/// Error kinds (SPEC.md §5). `ErrorInfo::kind` stays a string on the wire, so that a kind a
/// newer peer adds is forwarded as it came instead of failing the whole message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    TaskError,
    UnknownTask,
    BadArguments,
    ResultNotSerializable,
    ResultTooLarge,
    WorkerDied,
    Cancelled,
    ShuttingDown,
    ProtocolError,
    Timeout,
    AppImportError,
    WorkerStartError,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::TaskError,
        ErrorKind::UnknownTask,
        ErrorKind::BadArguments,
        ErrorKind::ResultNotSerializable,
        ErrorKind::ResultTooLarge,
        ErrorKind::WorkerDied,
        ErrorKind::Cancelled,
        ErrorKind::ShuttingDown,
        ErrorKind::ProtocolError,
        ErrorKind::Timeout,
        ErrorKind::AppImportError,
        ErrorKind::WorkerStartError,
    ];

    /// The wire name (SPEC.md §5), also the `outcome` label of the tasks metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::UnknownTask => "unknown_task",
            ErrorKind::BadArguments => "bad_arguments",
            ErrorKind::ResultNotSerializable => "result_not_serializable",
            ErrorKind::ResultTooLarge => "result_too_large",
            ErrorKind::WorkerDied => "worker_died",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::ProtocolError => "protocol_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::AppImportError => "app_import_error",
            ErrorKind::WorkerStartError => "worker_start_error",
        }
    }
}

/// `TaskRejected.reason` values (SPEC.md §4.2). The wire field stays a string, as for
/// [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Busy,
    Draining,
    Invalid,
    TooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] =
        [RejectReason::Busy, RejectReason::Draining, RejectReason::Invalid, RejectReason::TooLarge];

    /// The wire name (SPEC.md §4.2), also the `reason` label of the rejections metric.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Busy => "busy",
            RejectReason::Draining => "draining",
            RejectReason::Invalid => "invalid",
            RejectReason::TooLarge => "too_large",
        }
    }
}

/// A name that is not one of the enum's wire names (a kind or reason this crate does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {0:?}")]
pub struct UnknownName(pub String);

macro_rules! named {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName(s.to_owned()))
            }
        }
    };
}

named!(ErrorKind);
named!(RejectReason);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde names are the wire bytes: they must be what `as_str` says.
    #[test]
    fn serde_names_are_the_wire_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(rmp_serde::to_vec_named(&kind).unwrap(), rmp_serde::to_vec_named(kind.as_str()).unwrap());
            assert_eq!(rmp_serde::from_slice::<ErrorKind>(&rmp_serde::to_vec(kind.as_str()).unwrap()).unwrap(), kind);
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for reason in RejectReason::ALL {
            assert_eq!(rmp_serde::to_vec_named(&reason).unwrap(), rmp_serde::to_vec_named(reason.as_str()).unwrap());
            assert_eq!(reason.as_str().parse::<RejectReason>(), Ok(reason));
        }
        assert_eq!("too_large".parse::<RejectReason>(), Ok(RejectReason::TooLarge));
        assert_eq!("result_not_serializable".parse::<ErrorKind>(), Ok(ErrorKind::ResultNotSerializable));
    }

    #[test]
    fn an_unknown_kind_is_kept_as_it_came() {
        let error = ErrorInfo { kind: "new_kind".into(), ename: "X".into(), evalue: String::new(), traceback: None };
        assert_eq!(error.error_kind(), None);
        let back: ErrorInfo = rmp_serde::from_slice(&rmp_serde::to_vec_named(&error).unwrap()).unwrap();
        assert_eq!(back.kind, "new_kind");
        let ours = ErrorInfo::neutrino(ErrorKind::WorkerDied, "gone");
        assert_eq!((ours.kind.as_str(), ours.ename.as_str()), ("worker_died", "worker_died"));
        assert_eq!(ours.error_kind(), Some(ErrorKind::WorkerDied));
    }
}
