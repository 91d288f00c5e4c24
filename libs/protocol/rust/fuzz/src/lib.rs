//! Shared by the fuzz targets: how an input becomes frames, and the checks every decoded
//! message must pass. The seed corpus (`scripts/fuzz_seeds.py`, from the golden vectors) writes
//! inputs in the same layout.

use std::fmt::Debug;

use neutrino_protocol::*;

/// Separates the frames of one message in a fuzz input.
pub const FRAME_SEP: &[u8] = b"\xffNT\xff";

/// Splits an input into frames at each [`FRAME_SEP`].
pub fn split_frames(data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(FRAME_SEP.len()).position(|w| w == FRAME_SEP) {
        frames.push(&rest[..at]);
        rest = &rest[at + FRAME_SEP.len()..];
    }
    frames.push(rest);
    frames
}

/// Calls `$f::<Type>($args)` for the message type whose code is `$code` (every type of SPEC.md §4).
#[macro_export]
macro_rules! for_type {
    ($code:expr, $f:ident ( $($args:expr),* )) => {{
        use neutrino_protocol::*;
        match MessageType::from_code($code) {
            Some(MessageType::SubmitTask) => $f::<SubmitTask>($($args),*),
            Some(MessageType::TaskAccepted) => $f::<TaskAccepted>($($args),*),
            Some(MessageType::TaskRejected) => $f::<TaskRejected>($($args),*),
            Some(MessageType::TaskReply) => $f::<TaskReply>($($args),*),
            Some(MessageType::CancelTask) => $f::<CancelTask>($($args),*),
            Some(MessageType::Ping) => $f::<Ping>($($args),*),
            Some(MessageType::Pong) => $f::<Pong>($($args),*),
            Some(MessageType::DescribeTasks) => $f::<DescribeTasks>($($args),*),
            Some(MessageType::TaskCatalog) => $f::<TaskCatalog>($($args),*),
            Some(MessageType::WorkerReady) => $f::<WorkerReady>($($args),*),
            Some(MessageType::TaskAssignment) => $f::<TaskAssignment>($($args),*),
            Some(MessageType::TaskResult) => $f::<TaskResult>($($args),*),
            Some(MessageType::Heartbeat) => $f::<Heartbeat>($($args),*),
            Some(MessageType::Shutdown) => $f::<Shutdown>($($args),*),
            Some(MessageType::ZygoteReady) => $f::<ZygoteReady>($($args),*),
            Some(MessageType::ZygoteFailed) => $f::<ZygoteFailed>($($args),*),
            Some(MessageType::Fork) => $f::<Fork>($($args),*),
            Some(MessageType::Forked) => $f::<Forked>($($args),*),
            Some(MessageType::WorkerExited) => $f::<WorkerExited>($($args),*),
            Some(MessageType::ZygoteCatalog) => $f::<ZygoteCatalog>($($args),*),
            None => Default::default(),
        }
    }};
}

/// Every type code of SPEC.md §4.
pub const TYPE_CODES: [u8; 20] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x11, 0x12, 0x13, 0x14, 0x20, 0x21, 0x22, 0x23, 0x24,
    0x25,
];

/// Decodes `frames` as a message of type `M`; whatever decodes must survive a round trip.
pub fn check_frames<M: Message + Debug>(frames: &[&[u8]]) {
    match decode_frames::<M, _>(frames) {
        Ok((msg, payload)) => round_trip(&msg, payload),
        Err(e) => {
            // Every error has a class and a message (what the broker logs and answers).
            assert!(!e.class().is_empty() && !e.to_string().is_empty());
        }
    }
}

/// Decodes `meta` alone as a meta map of type `M`; whatever decodes must survive a round trip.
pub fn check_meta<M: Message + Debug>(meta: &[u8]) {
    if let Ok(msg) = decode_meta::<M>(meta) {
        let payload = msg.has_payload().then_some(&b"\x80"[..]);
        round_trip(&msg, payload);
    }
}

/// A decoded message encodes to canonical bytes that decode to the same canonical bytes, as
/// frames and as a control-link record.
pub fn round_trip<M: Message + Debug>(msg: &M, payload: Option<&[u8]>) {
    assert_eq!(msg.has_payload(), payload.is_some(), "{}: payload frame disagrees with the meta", M::NAME);
    let meta = encode_meta(msg);
    let again: M = decode_meta(&meta).unwrap_or_else(|e| panic!("{}: canonical meta does not decode: {e}", M::NAME));
    assert_eq!(encode_meta(&again), meta, "{}: decode(encode(m)) encodes differently: {msg:?}", M::NAME);

    let mut frames = vec![header(M::TYPE).to_vec(), meta.clone()];
    frames.extend(payload.map(<[u8]>::to_vec));
    let (from_frames, p) = decode_frames::<M, _>(&frames).expect("canonical frames decode");
    assert_eq!(encode_meta(&from_frames), meta);
    assert_eq!(p, payload);

    let record = match payload {
        Some(p) => encode_control_with_payload(msg, p),
        None => encode_control(msg),
    };
    let n = u32::from_be_bytes(record[..4].try_into().unwrap()) as usize;
    let (code, body_meta) = decode_control(&record[4..4 + n]).expect("a record decodes");
    assert_eq!((code, body_meta), (M::TYPE as u8, &meta[..]));
    if let Some(p) = payload {
        let rest = &record[4 + n..];
        assert_eq!(u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize, p.len());
        assert_eq!(&rest[4..], p);
    }
}
