//! A multipart message as any peer receives it (routing id stripped): frames separated by
//! `FRAME_SEP`. Decoded as its header says, and its meta frame as every message type: either a
//! typed `ProtocolError` or a message that survives a round trip; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neutrino_protocol::parse_header;
use neutrino_protocol_fuzz::{check_frames, check_meta, for_type, split_frames, TYPE_CODES};

fuzz_target!(|data: &[u8]| {
    let frames = split_frames(data);
    if let Ok(code) = parse_header(frames[0]) {
        for_type!(code, check_frames(&frames));
    }
    if let Some(meta) = frames.get(1) {
        for code in TYPE_CODES {
            for_type!(code, check_meta(meta));
        }
    }
});
