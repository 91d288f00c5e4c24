"""Write the golden vectors from the case list below (run when adding cases; never edit ids).

    uv run python libs/protocol/vectors/generate.py

Valid cases are encoded with the Python implementation, then checked byte for byte by both
`cargo test` and `pytest`; invalid cases are hand-written frames. payload.json (SPEC.md §3.2, the
payload codec, which only Python implements) is checked by pytest alone. Review the diff of the JSON
files like code: a changed byte in an existing case is a protocol change (SPEC.md §8).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack
import neutrino_protocol as p
from neutrino_protocol import payload

HERE = pathlib.Path(__file__).parent
ARGS_ADD = msgpack.packb([[1, 2], {}])  # add(1, 2)
RESULT_3 = msgpack.packb(3)
TB = 'Traceback (most recent call last):\n  File "app.py", line 9, in fail\nValueError: boom\n'
ERR = {"kind": "task_error", "ename": "ValueError", "evalue": "boom", "traceback": TB}
# W3C Trace Context's own examples (https://www.w3.org/TR/trace-context/).
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
# A task catalog payload (SPEC.md §3.2), byte for byte as the SDK builds it for
# `def add(x: int, y: int) -> int`.
CATALOG = msgpack.packb(
    {
        "add": {
            "params": {
                "additionalProperties": False,
                "properties": {"x": {"title": "X", "type": "integer"}, "y": {"title": "Y", "type": "integer"}},
                "required": ["x", "y"],
                "title": "add",
                "type": "object",
            },
            "result": {"type": "integer"},
            "doc": "",
            "options": {},
            "http": True,
            "positional_only": [],
        }
    }
)

VALID: dict[str, list[tuple[int, str, str, dict, str]]] = {
    "frontend": [
        (1, "submit minimal", "SubmitTask", {"id": 7, "task": "add", "payload_hex": ARGS_ADD.hex()}, ""),
        (
            2,
            "submit with every option",
            "SubmitTask",
            {
                "id": 4294967296,
                "task": "sleep",
                "timeout_s": 2.5,
                "retries": 3,
                "ack": True,
                "payload_hex": msgpack.packb([[], {"seconds": 0.1}]).hex(),
            },
            "id needs uint64",
        ),
        (3, "accepted", "TaskAccepted", {"id": 7}, ""),
        (
            4,
            "rejected busy",
            "TaskRejected",
            {"id": 8, "reason": "busy", "message": "queue is full (10000 tasks); retry later"},
            "",
        ),
        (5, "reply ok", "TaskReply", {"id": 7, "status": "ok", "attempts": 1, "payload_hex": RESULT_3.hex()}, ""),
        (6, "reply error with traceback", "TaskReply", {"id": 9, "status": "error", "attempts": 1, "error": ERR}, ""),
        (
            7,
            "reply error without traceback",
            "TaskReply",
            {
                "id": 10,
                "status": "error",
                "attempts": 2,
                "error": {"kind": "unknown_task", "ename": "unknown_task", "evalue": "no task named 'nope'"},
            },
            "",
        ),
        (8, "cancel", "CancelTask", {"id": 11}, ""),
        (9, "ping", "Ping", {"nonce": 1}, ""),
        (10, "pong", "Pong", {"nonce": 1, "queue_depth": 300, "workers": 2, "idle_workers": 0, "draining": False}, ""),
        (
            14,
            "pong with instance",
            "Pong",
            {"nonce": 2, "queue_depth": 0, "workers": 8, "idle_workers": 8, "draining": False, "instance": 2**63 + 5},
            "instance is random per orchestrator process; a new value means it restarted",
        ),
        (11, "describe tasks", "DescribeTasks", {"nonce": 2}, ""),
        (
            12,
            "task catalog not ready",
            "TaskCatalog",
            {"nonce": 2, "ready": False, "tasks": []},
            "the zygote has not reported its catalog yet: no payload",
        ),
        (
            13,
            "task catalog",
            "TaskCatalog",
            {"nonce": 3, "ready": True, "tasks": ["add"], "payload_hex": CATALOG.hex()},
            "the payload is the zygote's ZygoteCatalog payload, byte for byte",
        ),
        (
            15,
            "submit with trace context",
            "SubmitTask",
            {
                "id": 7,
                "task": "add",
                "retries": 2,
                "traceparent": TRACEPARENT,
                "tracestate": TRACESTATE,
                "payload_hex": ARGS_ADD.hex(),
            },
            "opaque to the orchestrator: copied to every TaskAssignment of the task",
        ),
        (
            16,
            "reply ok with timings",
            "TaskReply",
            {"id": 7, "status": "ok", "attempts": 2, "queue_us": 1500250, "run_us": 12, "payload_hex": RESULT_3.hex()},
            "queue_us includes the first attempt and the backoff before the second",
        ),
        (
            17,
            "reply error with queue time only",
            "TaskReply",
            {
                "id": 9,
                "status": "error",
                "attempts": 1,
                "error": {"kind": "timeout", "ename": "timeout", "evalue": "attempt 1 overran its timeout of 1s"},
                "queue_us": 85,
            },
            "the orchestrator answered (no worker result): no run_us",
        ),
    ],
    "backend": [
        (
            1,
            "worker ready",
            "WorkerReady",
            {"worker_id": "worker-001", "pid": 12345, "credits": 8, "tasks": ["add", "noop"]},
            "",
        ),
        (
            2,
            "assignment",
            "TaskAssignment",
            {"task_id": 1, "task": "add", "attempt": 1, "payload_hex": ARGS_ADD.hex()},
            "",
        ),
        (
            3,
            "assignment with timeout",
            "TaskAssignment",
            {
                "task_id": 70000,
                "task": "sleep",
                "attempt": 2,
                "timeout_s": 30.0,
                "payload_hex": msgpack.packb([[0.5], {}]).hex(),
            },
            "",
        ),
        (4, "result ok", "TaskResult", {"task_id": 1, "status": "ok", "run_us": 12, "payload_hex": RESULT_3.hex()}, ""),
        (5, "result error", "TaskResult", {"task_id": 2, "status": "error", "error": ERR, "run_us": 250}, ""),
        (6, "heartbeat", "Heartbeat", {"worker_id": "worker-001", "rss_kb": 40960}, ""),
        (7, "heartbeat minimal", "Heartbeat", {"worker_id": "worker-002"}, ""),
        (8, "shutdown", "Shutdown", {"graceful": True}, ""),
        (
            9,
            "result asking for a retry",
            "TaskResult",
            {"task_id": 3, "status": "error", "error": ERR, "run_us": 900, "retry": True},
            "",
        ),
        (
            10,
            "result asking for a retry later",
            "TaskResult",
            {"task_id": 4, "status": "error", "error": ERR, "retry": True, "retry_delay_s": 2.5},
            "",
        ),
        (
            11,
            "assignment with trace context",
            "TaskAssignment",
            {
                "task_id": 2,
                "task": "add",
                "attempt": 2,
                "traceparent": TRACEPARENT,
                "tracestate": TRACESTATE,
                "payload_hex": ARGS_ADD.hex(),
            },
            "traceparent and tracestate as the SubmitTask carried them, on every attempt",
        ),
    ],
    "control": [
        (1, "zygote ready", "ZygoteReady", {"pid": 4242, "tasks": ["add"], "import_ms": 12.5}, ""),
        (
            2,
            "zygote failed",
            "ZygoteFailed",
            {
                "error": {
                    "kind": "app_import_error",
                    "ename": "ModuleNotFoundError",
                    "evalue": "No module named 'nope'",
                    "traceback": "Traceback (most recent call last):\nModuleNotFoundError: No module named 'nope'\n",
                }
            },
            "",
        ),
        (3, "fork", "Fork", {"worker_ids": ["worker-001", "worker-002"]}, ""),
        (4, "forked", "Forked", {"worker_id": "worker-001", "pid": 4243}, ""),
        (5, "worker exited by signal", "WorkerExited", {"worker_id": "worker-001", "pid": 4243, "signal": 9}, ""),
        (6, "worker exited with code", "WorkerExited", {"worker_id": "worker-002", "pid": 4244, "exit_code": 1}, ""),
        (7, "shutdown", "Shutdown", {"graceful": False}, ""),
        (
            8,
            "zygote ready with task options",
            "ZygoteReady",
            {
                "pid": 4242,
                "tasks": ["fetch", "add"],
                "import_ms": 30.25,
                "task_options": {
                    "add": {},
                    "fetch": {"timeout_s": 10.0, "retries": 3, "retry_backoff_s": 0.5, "retry_backoff_max_s": 30.0},
                },
            },
            "keys in sorted order; empty options are an empty map",
        ),
        (9, "fork with heartbeat", "Fork", {"worker_ids": ["worker-003"], "heartbeat_ms": 1000}, ""),
        (
            10,
            "zygote catalog",
            "ZygoteCatalog",
            {"tasks": ["add"], "build_ms": 180.5, "payload_hex": CATALOG.hex()},
            "on the stream, the payload is a second length-prefixed record",
        ),
        (
            11,
            "empty zygote catalog",
            "ZygoteCatalog",
            {"tasks": [], "build_ms": 0.25, "payload_hex": msgpack.packb({}).hex()},
            "what a zygote sends when building its catalog failed",
        ),
        (
            12,
            "worker failed to start",
            "WorkerExited",
            {
                "worker_id": "worker-003",
                "pid": 4245,
                "exit_code": 1,
                "error": {
                    "kind": "worker_start_error",
                    "ename": "ZMQError",
                    "evalue": "No such file or directory",
                    "traceback": "Traceback (most recent call last):\nzmq.error.ZMQError: No such file or directory\n",
                },
            },
            "the start-up failure signal: error is set only for a worker that never sent WorkerReady",
        ),
        (
            13,
            "fork failed",
            "WorkerExited",
            {
                "worker_id": "worker-004",
                "pid": 0,
                "exit_code": 1,
                "error": {
                    "kind": "worker_start_error",
                    "ename": "BlockingIOError",
                    "evalue": "fork() failed: [Errno 11]",
                },
            },
            "",
        ),
    ],
}

H = lambda t: p.header(t).hex()  # noqa: E731
INVALID: dict[str, list[tuple[int, str, list[str], str, str]]] = {
    "frontend": [
        (101, "one frame only", [H(1)], "frame_count", ""),
        (102, "four frames", [H(1), "80", "90", "90"], "frame_count", ""),
        (103, "submit without payload", [H(1), msgpack.packb({"id": 1, "task": "add"}).hex()], "frame_count", ""),
        (
            104,
            "reply ok without payload",
            [H(4), msgpack.packb({"id": 1, "status": "ok", "attempts": 1}).hex()],
            "frame_count",
            "",
        ),
        (
            105,
            "reply error with payload",
            [H(4), msgpack.packb({"id": 1, "status": "error", "attempts": 1, "error": ERR}).hex(), "c0"],
            "frame_count",
            "",
        ),
        (106, "meta is an array", [H(6), msgpack.packb([1]).hex()], "meta", "rmp_serde would accept this"),
        (107, "meta is not msgpack", [H(6), "c1"], "meta", "0xc1 is never used"),
        (108, "missing required field", [H(1), msgpack.packb({"task": "add"}).hex(), ARGS_ADD.hex()], "meta", ""),
        (109, "negative id", [H(1), msgpack.packb({"id": -1, "task": "add"}).hex(), ARGS_ADD.hex()], "meta", ""),
        (110, "task is not a string", [H(1), msgpack.packb({"id": 1, "task": 5}).hex(), ARGS_ADD.hex()], "meta", ""),
        (111, "bad status", [H(4), msgpack.packb({"id": 1, "status": "maybe", "attempts": 1}).hex()], "meta", ""),
        (
            112,
            "error status without error",
            [H(4), msgpack.packb({"id": 1, "status": "error", "attempts": 1}).hex()],
            "meta",
            "",
        ),
        (113, "unknown message type", ["4e5401ff", "80"], "type", "receivers ignore these"),
        (114, "bytes after the meta map", [H(6), msgpack.packb({"nonce": 1}).hex() + "00"], "meta", ""),
        (
            115,
            "attempts over 32 bits",
            [H(4), msgpack.packb({"id": 1, "status": "ok", "attempts": 2**32}).hex(), "c0"],
            "meta",
            "attempts, pid, credits, retries, workers are uint32",
        ),
        (118, "describe without nonce", [H(0x08), msgpack.packb({}).hex()], "meta", ""),
        (
            119,
            "catalog ready without payload",
            [H(0x09), msgpack.packb({"nonce": 1, "ready": True, "tasks": ["add"]}).hex()],
            "frame_count",
            "",
        ),
        (
            120,
            "catalog not ready with payload",
            [H(0x09), msgpack.packb({"nonce": 1, "ready": False, "tasks": []}).hex(), "80"],
            "frame_count",
            "",
        ),
        (
            121,
            "catalog tasks not strings",
            [H(0x09), msgpack.packb({"nonce": 1, "ready": True, "tasks": [1]}).hex(), "80"],
            "meta",
            "",
        ),
        (
            125,
            "traceparent over 512 bytes",
            [H(1), msgpack.packb({"id": 5, "task": "add", "traceparent": "0" * 513}).hex(), ARGS_ADD.hex()],
            "meta",
            "the orchestrator answers TaskRejected{invalid} with id 5",
        ),
        (
            126,
            "traceparent not a string",
            [H(1), msgpack.packb({"id": 6, "task": "add", "traceparent": 1}).hex(), ARGS_ADD.hex()],
            "meta",
            "",
        ),
    ],
    "backend": [
        (
            117,
            "pid over 32 bits",
            [H(0x10), msgpack.packb({"worker_id": "w", "pid": 2**32, "credits": 1, "tasks": []}).hex()],
            "meta",
            "",
        ),
        (
            127,
            "tracestate over 512 bytes",
            [
                H(0x11),
                msgpack.packb({"task_id": 1, "task": "add", "attempt": 1, "tracestate": "é" * 257}).hex(),
                ARGS_ADD.hex(),
            ],
            "meta",
            "the limit is in UTF-8 bytes: 257 characters here are 514 bytes",
        ),
    ],
    "control": [
        (
            122,
            "zygote catalog without payload",
            [H(0x25), msgpack.packb({"tasks": [], "build_ms": 1.0}).hex()],
            "frame_count",
            "",
        ),
        (
            123,
            "zygote catalog build_ms not a number",
            [H(0x25), msgpack.packb({"tasks": [], "build_ms": "1"}).hex(), "80"],
            "meta",
            "",
        ),
        (
            124,
            "worker exited with an error that is not a map",
            [H(0x24), msgpack.packb({"worker_id": "w", "pid": 1, "error": "boom"}).hex()],
            "meta",
            "",
        ),
    ],
    "header": [
        (201, "header too short", ["4e5401", "80"], "header", ""),
        (202, "header too long", ["4e54010600", "80"], "header", ""),
        (203, "wrong signature", ["4d440106", msgpack.packb({"nonce": 1}).hex()], "header", ""),
        (204, "wrong version", ["4e540206", msgpack.packb({"nonce": 1}).hex()], "version", ""),
    ],
}


# Payload vectors (SPEC.md §3.2, vectors/payload.json): what neutrino_protocol.payload packs and
# unpacks. `codec` names the pair of functions: args (pack_args/unpack_args), result, catalog.
# Valid: (id, name, codec, value, decoded or None when it is `value`, comment); for args, `value`
# is (args, kwargs). Invalid, decoding: (id, name, codec, payload bytes, error class, comment);
# invalid, encoding: (id, name, codec, value, "encode", comment).
PAYLOAD_VALID: list[tuple[int, str, str, Any, Any, str]] = [
    (1, "args add(1, 2)", "args", ([1, 2], {}), None, "the SPEC's SubmitTask example"),
    (2, "args none", "args", ([], {}), None, "payload.NO_ARGS"),
    (3, "args positional and named", "args", ([1], {"y": "z", "opts": {"deep": [True, None]}}), None, ""),
    (
        4,
        "args tuples become arrays",
        "args",
        (((1, 2),), {"t": (3,)}),
        ([[1, 2]], {"t": [3]}),
        "msgpack has one array type: a tuple comes back as a list",
    ),
    (5, "args bin and str", "args", ([b"ab", "ab"], {"raw": b"\x00\xff"}), None, "bytes as bin, text as str"),
    (6, "result None", "result", None, None, "payload.NONE"),
    (7, "result integer map keys", "result", {1: "a", -1: "b", 300: "c"}, None, "decoders MUST NOT restrict keys"),
    (
        8,
        "result map keys of other types",
        "result",
        {b"k": 1, 2: 2, "s": 3, 1.5: 4},
        None,
        "bin, int, str and float keys in one map",
    ),
    (9, "result bin vs str", "result", [b"\x00\xffab", "ünïcode", b"", ""], None, "bin stays bytes, str stays text"),
    (10, "result tuple", "result", (1, (2, 3)), [1, [2, 3]], "nested tuples come back as lists"),
    (
        11,
        "result nested maps",
        "result",
        {"a": {"b": {"c": [1, {"d": None}]}, "e": {}}, "f": 1.5, "g": [{"h": False}]},
        None,
        "",
    ),
    (12, "result uint64 max", "result", 2**64 - 1, None, "the largest integer msgpack carries"),
    (13, "result int64 min", "result", -(2**63), None, "the smallest integer msgpack carries"),
    (14, "result integers at the width edges", "result", [127, 128, -32, -33, 2**32, -(2**31) - 1], None, ""),
    (15, "catalog", "catalog", msgpack.unpackb(CATALOG), None, "the SPEC's §3.2 example: frontend 13's payload"),
    (16, "catalog empty", "catalog", {}, None, "what a zygote sends when building its catalog failed"),
]
PAYLOAD_INVALID: list[tuple[int, str, str, Any, str, str]] = [
    (128, "args not msgpack", "args", b"\xc1", "msgpack", "0xc1 is never used"),
    (129, "args truncated", "args", b"\x92\x92\x01", "msgpack", ""),
    (130, "args with trailing bytes", "args", b"\x92\x90\x80\xc0", "msgpack", "one value, nothing after it"),
    (131, "args not an array", "args", msgpack.packb({"a": 1}), "shape", ""),
    (132, "args array of one", "args", msgpack.packb([[1]]), "shape", "[args, kwargs] has exactly 2 elements"),
    (133, "args array of three", "args", msgpack.packb([[], {}, 1]), "shape", ""),
    (134, "args positional not an array", "args", msgpack.packb([1, {}]), "shape", ""),
    (135, "args kwargs not a map", "args", msgpack.packb([[], []]), "shape", ""),
    (136, "result not msgpack", "result", b"\xc1", "msgpack", ""),
    (137, "result empty", "result", b"", "msgpack", "a None result is c0, never empty"),
    (138, "result str not UTF-8", "result", b"\xa3\xff\xfe\xfd", "msgpack", "str is UTF-8; bytes go as bin"),
    (139, "catalog not a map", "catalog", msgpack.packb([1]), "shape", ""),
    (140, "catalog entry not a map", "catalog", msgpack.packb({"add": 1}), "shape", ""),
    (141, "catalog task name not a str", "catalog", msgpack.packb({1: {}}), "shape", ""),
    (142, "args kwargs key not a str", "args", ([], {1: "x"}), "encode", "keyword argument names must be str"),
    (143, "args integer over 64 bits", "args", ([], {"big": 2**64}), "encode", "names keyword argument 'big'"),
    (144, "args integer under int64", "args", ([-(2**63) - 1], {}), "encode", "names positional argument 0"),
    (145, "result integer over 64 bits", "result", 2**64, "encode", ""),
]


def typed_json(value: Any) -> Any:
    """A payload value as JSON that keeps what JSON would lose (see PAYLOAD_VALUE_ENCODING)."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, tuple):
        return {"$tuple": [typed_json(v) for v in value]}
    if isinstance(value, list):
        return [typed_json(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: typed_json(v) for k, v in value.items()}
        return {"$map": [[typed_json(k), typed_json(v)] for k, v in value.items()]}
    return value


PAYLOAD_VALUE_ENCODING = (
    "values are JSON, except: {'$bin': hex} is bytes (msgpack bin), {'$tuple': [...]} a tuple, "
    "{'$map': [[key, value], ...]} a map whose keys are not all strings; an args value is "
    "{'args': [...], 'kwargs': {...}}. frames holds the payload frame (hex), none when encoding must fail."
)


def payload_value(codec: str, value: Any) -> Any:
    if codec == "args":
        args, kwargs = value
        return {"args": typed_json(args), "kwargs": typed_json(kwargs)}
    return typed_json(value)


def payload_pack(codec: str, value: Any) -> bytes:
    if codec == "args":
        return payload.pack_args(*value)
    return payload.pack_result(value) if codec == "result" else payload.pack_catalog(value)


def payload_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for cid, name, codec, value, decoded, comment in PAYLOAD_VALID:
        case = {"id": cid, "name": name, "codec": codec, "result": "valid", "value": payload_value(codec, value)}
        if decoded is not None:
            case["decoded"] = payload_value(codec, decoded)
        case["frames"] = [payload_pack(codec, value).hex()]
        cases.append({**case, **({"comment": comment} if comment else {})})
    for cid, name, codec, data, err, comment in PAYLOAD_INVALID:
        case = {"id": cid, "name": name, "codec": codec, "result": "invalid"}
        if err == "encode":
            case.update(value=payload_value(codec, data), frames=[])
        else:
            case["frames"] = [data.hex()]
        cases.append({**case, "error": err, **({"comment": comment} if comment else {})})
    return cases


def valid_case(family: str, cid: int, name: str, message: str, fields: dict, comment: str) -> dict:
    cls = getattr(p, message)
    kwargs = {k: v for k, v in fields.items() if k != "payload_hex"}
    if "error" in kwargs:
        kwargs["error"] = p.ErrorInfo(**kwargs["error"])
    if "task_options" in kwargs:
        kwargs["task_options"] = {k: p.TaskOptions(**v) for k, v in kwargs["task_options"].items()}
    if "payload_hex" in fields:
        kwargs["payload"] = bytes.fromhex(fields["payload_hex"])
    frames = cls(**kwargs).encode()
    case = {
        "id": cid,
        "name": name,
        "message": message,
        "result": "valid",
        "fields": fields,
        "frames": [f.hex() for f in frames],
    }
    if family == "control":  # the same message as the control link's length-prefixed bytes
        case["stream"] = p.encode_control(cls(**kwargs)).hex()
    if comment:
        case["comment"] = comment
    return case


def main() -> None:
    for family in ("frontend", "backend", "control", "header"):
        cases = [valid_case(family, *c) for c in VALID.get(family, [])]
        cases += [
            {
                "id": cid,
                "name": name,
                "result": "invalid",
                "frames": frames,
                "error": err,
                **({"comment": c} if c else {}),
            }
            for cid, name, frames, err, c in INVALID.get(family, [])
        ]
        doc = {
            "protocol_version": p.PROTOCOL_VERSION,
            "family": family,
            "spec": "libs/protocol/SPEC.md",
            "cases": cases,
        }
        (HERE / f"{family}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{family}: {len(cases)} cases")
    cases = payload_cases()
    doc = {
        "protocol_version": p.PROTOCOL_VERSION,
        "family": "payload",
        "spec": "libs/protocol/SPEC.md",
        "value_encoding": PAYLOAD_VALUE_ENCODING,
        "cases": cases,
    }
    (HERE / "payload.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"payload: {len(cases)} cases")


if __name__ == "__main__":
    main()
