//! The golden vectors (libs/protocol/vectors/*.json), byte for byte (SPEC.md §9).

use neutrino_protocol::*;
use serde_json::Value;

const FAMILIES: [&str; 4] = ["frontend", "backend", "control", "header"];

fn cases() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors");
    let mut out = Vec::new();
    for family in FAMILIES {
        let text = std::fs::read_to_string(dir.join(format!("{family}.json"))).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["protocol_version"], PROTOCOL_VERSION);
        for case in doc["cases"].as_array().unwrap() {
            out.push((format!("{family}-{}-{}", case["id"], case["name"]), case.clone()));
        }
    }
    assert!(out.len() > 30, "vectors went missing");
    out
}

fn hex_frames(case: &Value) -> Vec<Vec<u8>> {
    case["frames"].as_array().unwrap().iter().map(|f| hex::decode(f.as_str().unwrap()).unwrap()).collect()
}

/// Encodes `fields` as message `M`, checks the exact frames, decodes them back to `fields`.
fn check_valid<M: Message + PartialEq + std::fmt::Debug>(name: &str, case: &Value) {
    let mut fields = case["fields"].clone();
    let payload = fields.as_object_mut().unwrap().remove("payload_hex");
    let msg: M = serde_json::from_value(fields.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));

    let mut frames = vec![header(M::TYPE).to_vec(), encode_meta(&msg)];
    if let Some(p) = &payload {
        frames.push(hex::decode(p.as_str().unwrap()).unwrap());
    }
    assert_eq!(frames, hex_frames(case), "{name}: encoded bytes differ");
    if let Some(stream) = case.get("stream") {
        let encoded = match frames.get(2) {
            Some(payload) => encode_control_with_payload(&msg, payload),
            None => encode_control(&msg),
        };
        assert_eq!(hex::encode(encoded), stream.as_str().unwrap(), "{name}: stream differs");
        assert_eq!(control_payload_follows(M::TYPE as u8), frames.len() == 3, "{name}");
    }

    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let (decoded, got_payload) = decode_frames::<M, _>(&refs).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(decoded, msg, "{name}");
    assert_eq!(got_payload.map(hex::encode), payload.map(|p| p.as_str().unwrap().to_owned()), "{name}");
    let mut back = serde_json::to_value(&decoded).unwrap();
    strip_nulls(&mut back);
    assert_eq!(back, fields, "{name}: decoded fields differ");
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, x| !x.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

/// Calls macro `$m` with the name of every message type.
macro_rules! every_message {
    ($m:ident) => {
        $m!(
            SubmitTask,
            TaskAccepted,
            TaskRejected,
            TaskReply,
            CancelTask,
            Ping,
            Pong,
            DescribeTasks,
            TaskCatalog,
            WorkerReady,
            TaskAssignment,
            TaskResult,
            Heartbeat,
            Shutdown,
            ZygoteReady,
            ZygoteFailed,
            Fork,
            Forked,
            WorkerExited,
            ZygoteCatalog
        )
    };
}

/// Decodes frames as whatever type their header names (as a receiver would).
fn decode_any(frames: &[&[u8]]) -> Result<(), ProtocolError> {
    if !(2..=3).contains(&frames.len()) {
        return Err(ProtocolError::FrameCount { expected: "2 or 3", got: frames.len() });
    }
    let code = parse_header(frames[0])?;
    let ty = MessageType::from_code(code).ok_or(ProtocolError::UnknownType(code))?;
    macro_rules! go {
        ($($t:ident),*) => {
            match ty { $(MessageType::$t => decode_frames::<$t, _>(frames).map(|_| ()),)* }
        };
    }
    every_message!(go)
}

#[test]
fn valid_cases_encode_and_decode_byte_for_byte() {
    let mut seen = 0;
    for (name, case) in cases().iter().filter(|(_, c)| c["result"] == "valid") {
        macro_rules! go {
            ($($t:ident),*) => {
                match case["message"].as_str().unwrap() {
                    $(stringify!($t) => check_valid::<$t>(name, case),)*
                    other => panic!("{name}: unknown message {other}"),
                }
            };
        }
        every_message!(go);
        seen += 1;
    }
    assert!(seen >= 25);
}

#[test]
fn invalid_cases_are_rejected_with_their_class() {
    for (name, case) in cases().iter().filter(|(_, c)| c["result"] == "invalid") {
        let frames = hex_frames(case);
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let err = decode_any(&refs).expect_err(&format!("{name}: should be rejected"));
        assert_eq!(err.class(), case["error"].as_str().unwrap(), "{name}: {err}");
    }
}

#[test]
fn unknown_fields_are_ignored() {
    #[derive(serde::Serialize)]
    struct Future {
        nonce: u64,
        from_the_future: Vec<u8>,
    }
    let meta = rmp_serde::to_vec_named(&Future { nonce: 5, from_the_future: vec![1, 2] }).unwrap();
    assert_eq!(decode_meta::<Ping>(&meta).unwrap(), Ping { nonce: 5 });
}

#[test]
fn a_changed_byte_fails_the_comparison() {
    // Guards the test itself: the vectors are compared byte for byte, so one flipped bit shows.
    let (name, case) = cases().into_iter().find(|(_, c)| c["message"] == "SubmitTask").unwrap();
    let mut fields = case["fields"].clone();
    fields.as_object_mut().unwrap().remove("payload_hex");
    let msg: SubmitTask = serde_json::from_value(fields).unwrap();
    let mut expected = hex_frames(&case)[1].clone();
    assert_eq!(encode_meta(&msg), expected, "{name}");
    *expected.last_mut().unwrap() ^= 1;
    assert_ne!(encode_meta(&msg), expected, "{name}");
}

#[test]
fn error_kinds_and_reject_reasons_in_the_vectors_are_the_enums_names() {
    let (mut kinds, mut reasons) = (0, 0);
    for (name, case) in cases().iter().filter(|(_, c)| c["result"] == "valid") {
        if let Some(kind) = case["fields"]["error"]["kind"].as_str() {
            let parsed: ErrorKind = kind.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.as_str(), kind, "{name}");
            kinds += 1;
        }
        if let (Some(reason), "TaskRejected") = (case["fields"]["reason"].as_str(), case["message"].as_str().unwrap()) {
            let parsed: RejectReason = reason.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.as_str(), reason, "{name}");
            reasons += 1;
        }
    }
    assert!(kinds >= 5 && reasons >= 1, "{kinds} kinds, {reasons} reasons");
}
