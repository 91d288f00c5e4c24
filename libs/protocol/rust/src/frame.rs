//! The header frame, message type codes, and the canonical meta encoding (SPEC.md §3).

use std::ops::Deref;

use serde::{de::DeserializeOwned, Serialize};

pub const PROTOCOL_VERSION: u8 = 1;
pub const SIGNATURE: [u8; 2] = *b"NT";
/// Largest control-link message body: header and meta (SPEC.md §3).
pub const CONTROL_MAX_BYTES: usize = 1 << 20;
/// Largest control-link payload record (SPEC.md §3): a task catalog can outgrow a meta map.
pub const CONTROL_MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// Longest `traceparent` / `tracestate` in bytes: opaque to the orchestrator, bounded so a client
/// cannot make it hold and copy large metadata on every attempt (SPEC.md §4.5).
pub const TRACE_MAX_BYTES: usize = 512;
pub const STATUS_OK: &str = "ok";
pub const STATUS_ERROR: &str = "error";

/// Message type codes (SPEC.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    SubmitTask = 0x01,
    TaskAccepted = 0x02,
    TaskRejected = 0x03,
    TaskReply = 0x04,
    CancelTask = 0x05,
    Ping = 0x06,
    Pong = 0x07,
    DescribeTasks = 0x08,
    TaskCatalog = 0x09,
    WorkerReady = 0x10,
    TaskAssignment = 0x11,
    TaskResult = 0x12,
    Heartbeat = 0x13,
    Shutdown = 0x14,
    ZygoteReady = 0x20,
    ZygoteFailed = 0x21,
    Fork = 0x22,
    Forked = 0x23,
    WorkerExited = 0x24,
    ZygoteCatalog = 0x25,
}

impl MessageType {
    pub fn from_code(code: u8) -> Option<Self> {
        use MessageType::*;
        Some(match code {
            0x01 => SubmitTask,
            0x02 => TaskAccepted,
            0x03 => TaskRejected,
            0x04 => TaskReply,
            0x05 => CancelTask,
            0x06 => Ping,
            0x07 => Pong,
            0x08 => DescribeTasks,
            0x09 => TaskCatalog,
            0x10 => WorkerReady,
            0x11 => TaskAssignment,
            0x12 => TaskResult,
            0x13 => Heartbeat,
            0x14 => Shutdown,
            0x20 => ZygoteReady,
            0x21 => ZygoteFailed,
            0x22 => Fork,
            0x23 => Forked,
            0x24 => WorkerExited,
            0x25 => ZygoteCatalog,
            _ => return None,
        })
    }
}

/// When a message carries a payload frame (SPEC.md §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadRule {
    Never,
    Always,
    /// Exactly when the meta field `status` is `"ok"`.
    WhenOk,
    /// Exactly when the meta field `ready` is `true`.
    WhenReady,
}

/// A malformed message. The variant names match the vectors' failure classes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("expected {expected} frames, got {got}")]
    FrameCount { expected: &'static str, got: usize },
    #[error("bad header frame: expected 4 bytes starting \"NT\"")]
    Header,
    #[error("protocol version {0} is not supported (this peer speaks 1)")]
    Version(u8),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{message} expected, got another type")]
    WrongType { message: &'static str },
    #[error("bad meta: {0}")]
    Meta(String),
}

impl ProtocolError {
    /// The failure class used by the golden vectors (`frame_count`, `header`, ...).
    pub fn class(&self) -> &'static str {
        match self {
            ProtocolError::FrameCount { .. } => "frame_count",
            ProtocolError::Header => "header",
            ProtocolError::Version(_) => "version",
            ProtocolError::UnknownType(_) => "type",
            ProtocolError::WrongType { .. } => "type",
            ProtocolError::Meta(_) => "meta",
        }
    }
}

/// A message: its meta struct, with its type code and payload rule.
pub trait Message: Serialize + DeserializeOwned {
    const TYPE: MessageType;
    const PAYLOAD: PayloadRule = PayloadRule::Never;
    const NAME: &'static str;

    /// Whether this message, as filled in, travels with a payload frame.
    fn has_payload(&self) -> bool {
        match Self::PAYLOAD {
            PayloadRule::Never => false,
            PayloadRule::Always => true,
            PayloadRule::WhenOk => self.status() == Some(STATUS_OK),
            PayloadRule::WhenReady => self.ready(),
        }
    }

    /// The `status` field, for messages whose payload depends on it.
    fn status(&self) -> Option<&str> {
        None
    }

    /// The `ready` field, for messages whose payload depends on it.
    fn ready(&self) -> bool {
        false
    }

    /// Checks beyond field types (e.g. `status` values); called after decoding.
    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
}

pub const fn header(t: MessageType) -> [u8; 4] {
    [SIGNATURE[0], SIGNATURE[1], PROTOCOL_VERSION, t as u8]
}

/// Returns the type code of a header frame; the code may be unknown to this peer.
pub fn parse_header(frame: &[u8]) -> Result<u8, ProtocolError> {
    if frame.len() != 4 || frame[..2] != SIGNATURE {
        return Err(ProtocolError::Header);
    }
    if frame[2] != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(frame[2]));
    }
    Ok(frame[3])
}

/// Canonical meta: a map with fields in declaration order (never an array).
pub fn encode_meta<M: Message>(msg: &M) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("meta structs always encode")
}

pub fn decode_meta<M: Message>(bytes: &[u8]) -> Result<M, ProtocolError> {
    // Meta must be a map: rmp_serde would also accept an array for a struct.
    match bytes.first() {
        Some(0x80..=0x8f) | Some(0xde) | Some(0xdf) => {}
        _ => return Err(ProtocolError::Meta("meta must be a msgpack map".into())),
    }
    let mut de = rmp_serde::Deserializer::new(bytes);
    let msg = M::deserialize(&mut de).map_err(|e| ProtocolError::Meta(format!("{}: {e}", M::NAME)))?;
    // from_slice would ignore bytes after the map; the Python decoder rejects them, and so do we.
    let rest = de.into_inner().len();
    if rest != 0 {
        return Err(ProtocolError::Meta(format!("{}: {rest} bytes after the meta map", M::NAME)));
    }
    msg.validate()?;
    Ok(msg)
}

/// Decodes a whole message of a known type from its frames (identity stripped), checking the
/// header and the frame count. Returns the meta and the payload frame, if any.
pub fn decode_frames<M: Message, F: Deref<Target = [u8]>>(frames: &[F]) -> Result<(M, Option<&[u8]>), ProtocolError> {
    if !(2..=3).contains(&frames.len()) {
        return Err(ProtocolError::FrameCount { expected: "2 or 3", got: frames.len() });
    }
    let code = parse_header(&frames[0])?;
    if code != M::TYPE as u8 {
        return Err(ProtocolError::WrongType { message: M::NAME });
    }
    let msg: M = decode_meta(&frames[1])?;
    let want = if msg.has_payload() { 3 } else { 2 };
    if frames.len() != want {
        return Err(ProtocolError::FrameCount { expected: if want == 3 { "3" } else { "2" }, got: frames.len() });
    }
    Ok((msg, frames.get(2).map(|f| &f[..])))
}

/// Frames a control-link message: u32 big-endian length, header, meta (SPEC.md §3).
pub fn encode_control<M: Message>(msg: &M) -> Vec<u8> {
    let meta = encode_meta(msg);
    let mut out = Vec::with_capacity(8 + meta.len());
    out.extend_from_slice(&((4 + meta.len()) as u32).to_be_bytes());
    out.extend_from_slice(&header(M::TYPE));
    out.extend_from_slice(&meta);
    out
}

/// Frames a control-link message that carries a payload: the message as [`encode_control`]
/// frames it, then the payload as a second record (u32 big-endian length, bytes).
pub fn encode_control_with_payload<M: Message>(msg: &M, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_control(msg);
    out.reserve(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether a control-link message of this type code is followed by a payload record
/// (SPEC.md §3). Only `ZygoteCatalog` is.
pub fn control_payload_follows(code: u8) -> bool {
    code == MessageType::ZygoteCatalog as u8
}

/// Splits a control-link body (after the length prefix) into its type code and meta bytes.
pub fn decode_control(body: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    if body.len() < 4 {
        return Err(ProtocolError::Header);
    }
    Ok((parse_header(&body[..4])?, &body[4..]))
}

/// Implements [`Message`] for a meta struct: `impl_message!(Name, PayloadRule)`. With `WhenOk`
/// the struct has `status` and `error` fields, checked by [`validate_status`]; with `WhenReady`
/// a `ready` field. `impl_message!(Name, PayloadRule, Traced)`: the struct has `traceparent` and
/// `tracestate` fields, checked by [`validate_trace`].
#[macro_export]
macro_rules! impl_message {
    ($name:ident, WhenOk) => {
        impl $crate::frame::Message for $name {
            const TYPE: $crate::frame::MessageType = $crate::frame::MessageType::$name;
            const PAYLOAD: $crate::frame::PayloadRule = $crate::frame::PayloadRule::WhenOk;
            const NAME: &'static str = stringify!($name);
            fn status(&self) -> Option<&str> {
                Some(&self.status)
            }
            fn validate(&self) -> Result<(), $crate::frame::ProtocolError> {
                $crate::frame::validate_status(Self::NAME, &self.status, self.error.is_some())
            }
        }
    };
    ($name:ident, WhenReady) => {
        impl $crate::frame::Message for $name {
            const TYPE: $crate::frame::MessageType = $crate::frame::MessageType::$name;
            const PAYLOAD: $crate::frame::PayloadRule = $crate::frame::PayloadRule::WhenReady;
            const NAME: &'static str = stringify!($name);
            fn ready(&self) -> bool {
                self.ready
            }
        }
    };
    ($name:ident, $payload:ident, Traced) => {
        impl $crate::frame::Message for $name {
            const TYPE: $crate::frame::MessageType = $crate::frame::MessageType::$name;
            const PAYLOAD: $crate::frame::PayloadRule = $crate::frame::PayloadRule::$payload;
            const NAME: &'static str = stringify!($name);
            fn validate(&self) -> Result<(), $crate::frame::ProtocolError> {
                $crate::frame::validate_trace(Self::NAME, self.traceparent.as_deref(), self.tracestate.as_deref())
            }
        }
    };
    ($name:ident, $payload:ident) => {
        impl $crate::frame::Message for $name {
            const TYPE: $crate::frame::MessageType = $crate::frame::MessageType::$name;
            const PAYLOAD: $crate::frame::PayloadRule = $crate::frame::PayloadRule::$payload;
            const NAME: &'static str = stringify!($name);
        }
    };
}

/// Status checks shared by `TaskReply` and `TaskResult`: `ok`, or `error` with an `error` field.
pub fn validate_status(name: &str, status: &str, has_error: bool) -> Result<(), ProtocolError> {
    match (status, has_error) {
        (STATUS_OK, _) | (STATUS_ERROR, true) => Ok(()),
        (STATUS_ERROR, false) => Err(ProtocolError::Meta(format!("{name} with status 'error' needs field 'error'"))),
        _ => Err(ProtocolError::Meta(format!("{name} field 'status' must be 'ok' or 'error'"))),
    }
}

/// Trace context checks shared by `SubmitTask` and `TaskAssignment`: each field at most
/// [`TRACE_MAX_BYTES`]; the values themselves are never parsed (SPEC.md §4.5).
pub fn validate_trace(name: &str, traceparent: Option<&str>, tracestate: Option<&str>) -> Result<(), ProtocolError> {
    for (field, value) in [("traceparent", traceparent), ("tracestate", tracestate)] {
        if let Some(v) = value.filter(|v| v.len() > TRACE_MAX_BYTES) {
            let len = v.len();
            return Err(ProtocolError::Meta(format!("{name} field '{field}' is {len} bytes, over {TRACE_MAX_BYTES}")));
        }
    }
    Ok(())
}
