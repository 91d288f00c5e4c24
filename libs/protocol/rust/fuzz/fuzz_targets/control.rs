//! The zygote's control link as the orchestrator reads it (zygote.rs `read_messages`): u32
//! big-endian length-prefixed records, a payload record after the types that carry one, limits
//! on both. Every record either ends the link with an error or decodes (or fails to) as the type
//! its header names; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neutrino_protocol::{
    control_payload_follows, decode_control, decode_meta, Message, CONTROL_MAX_BYTES, CONTROL_MAX_PAYLOAD_BYTES,
};
use neutrino_protocol_fuzz::{for_type, round_trip};

/// Takes one length-prefixed record of at most `max` bytes; `None` ends the link.
fn record<'a>(stream: &mut &'a [u8], max: usize) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(stream.get(..4)?.try_into().ok()?) as usize;
    if len > max || stream.len() < 4 + len {
        return None;
    }
    let body = &stream[4..4 + len];
    *stream = &stream[4 + len..];
    Some(body)
}

fn check<M: Message + std::fmt::Debug>(meta: &[u8], payload: Option<&[u8]>) {
    if let Ok(msg) = decode_meta::<M>(meta) {
        // The reader took a payload record exactly for the types that always carry one.
        if msg.has_payload() == payload.is_some() {
            round_trip(&msg, payload);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Some(body) = record(&mut stream, CONTROL_MAX_BYTES) {
        let Ok((code, meta)) = decode_control(body) else { break };
        let payload = if control_payload_follows(code) {
            match record(&mut stream, CONTROL_MAX_PAYLOAD_BYTES) {
                Some(p) => Some(p),
                None => break,
            }
        } else {
            None
        };
        for_type!(code, check(meta, payload));
    }
});
