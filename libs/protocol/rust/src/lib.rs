//! Neutrino wire protocol: message types, frames and canonical encoding.
//!
//! `libs/protocol/SPEC.md` is the authority; `libs/protocol/vectors/*.json` pin the bytes and
//! are checked by this crate's tests and by the Python package's.
//!
//! # Layout
//!
//! - [`frame`]: the header frame, message type codes, meta encode/decode, frame-count rules.
//! - [`error`]: the shared `Error` structure, the error kinds and rejection reasons (enums named
//!   as on the wire), exit codes.
//! - [`frontend`]: client ↔ orchestrator messages.
//! - [`backend`]: worker ↔ orchestrator messages.
//! - [`control`]: zygote ↔ orchestrator messages (length-prefixed stream; a payload, when a
//!   message has one, is a second record).

pub mod backend;
pub mod control;
pub mod error;
pub mod frame;
pub mod frontend;

pub use backend::{Heartbeat, Shutdown, TaskAssignment, TaskResult, WorkerReady};
pub use control::{Fork, Forked, TaskOptions, WorkerExited, ZygoteCatalog, ZygoteFailed, ZygoteReady};
pub use error::{ErrorInfo, ErrorKind, ExitCode, RejectReason, UnknownName};
pub use frame::{
    control_payload_follows, decode_control, decode_frames, decode_meta, encode_control, encode_control_with_payload,
    encode_meta, header, parse_header, Message, MessageType, PayloadRule, ProtocolError, CONTROL_MAX_BYTES,
    CONTROL_MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, SIGNATURE, STATUS_ERROR, STATUS_OK, TRACE_MAX_BYTES,
};
pub use frontend::{
    CancelTask, DescribeTasks, Ping, Pong, SubmitTask, TaskAccepted, TaskCatalog, TaskRejected, TaskReply,
};
