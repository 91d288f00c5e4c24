"""neutrino._tracing without processes: which variables switch tracing on, what they may say, the W3C
`traceparent` as a string, and SubmitTask frames with the context spliced in (equal to a whole new
encoding)."""

from __future__ import annotations

import neutrino_protocol as p
import pytest
from neutrino import _tracing
from neutrino._frontend import SubmitEncoder

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": " None "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_the_standard_variables_switch_tracing_on(env: dict[str, str], on: bool) -> None:
    assert _tracing.wanted(env) is on


def test_off_in_this_process_and_nothing_to_send() -> None:
    assert _tracing.ON is False, "the tests run without OTEL_* variables"
    assert _tracing.setup("neutrino-test") is False


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger': 'jaeger' is not an exporter"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL="),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='thrift' is not an OTLP protocol",
        ),
    ],
)
def test_variables_that_cannot_be_acted_on_are_named(env: dict[str, str], says: str) -> None:
    with pytest.raises(_tracing.TracingConfigError, match="use one of") as info:
        _tracing.check(env)
    assert says in str(info.value)


def test_good_variables_and_switched_off_ones_pass() -> None:
    _tracing.check({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    _tracing.check({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    # The traces-specific protocol wins over the general one.
    env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert _tracing.otlp_protocol(env) == "grpc"
    assert _tracing.otlp_protocol({}) == "http/protobuf"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "junk",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        TRACEPARENT + "-extra",  # version 00 has exactly four fields
        "0" * 600,
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert _tracing.parse(value) is None and _tracing.trace_id_of(value) is None and _tracing.fields(value) == {}


def test_a_valid_traceparent_and_a_new_one() -> None:
    assert _tracing.parse(TRACEPARENT) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert _tracing.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later") is not None
    assert _tracing.fields(TRACEPARENT) == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    fresh = _tracing.new_traceparent()
    parsed = _tracing.parse(fresh)
    assert parsed is not None and parsed[2] == 0, "a trace nobody recorded is not marked sampled"
    assert _tracing.new_traceparent() != fresh


def test_the_run_id_is_read_from_the_tracestate() -> None:
    assert _tracing.run_id_of("neutrino=abc,rojo=1") == "abc"
    assert _tracing.run_id_of("rojo=1, neutrino=abc") == "abc"
    assert _tracing.run_id_of("rojo=1") is None and _tracing.run_id_of(None) is None


@pytest.mark.parametrize("tracestate", [None, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"])
@pytest.mark.parametrize(("timeout_s", "retries"), [(None, None), (2.5, 3)])
def test_a_spliced_context_packs_as_a_whole_encoding(
    tracestate: str | None, timeout_s: float | None, retries: int | None
) -> None:
    encoder = SubmitEncoder("add", timeout_s, retries)
    for task_id in (0, 7, 2**40):
        header, meta, payload = encoder.frames(task_id, b"\x92\x90\x80")
        traced = [header, _tracing.with_trace(meta, (TRACEPARENT, tracestate)), payload]
        expected = p.SubmitTask(
            id=task_id,
            task="add",
            timeout_s=timeout_s,
            retries=retries,
            traceparent=TRACEPARENT,
            tracestate=tracestate,
            payload=b"\x92\x90\x80",
        ).encode()
        assert traced == expected
        decoded = p.decode(traced)
        assert isinstance(decoded, p.SubmitTask)
        assert (decoded.traceparent, decoded.tracestate) == (TRACEPARENT, tracestate)


def test_splicing_into_something_else_is_refused() -> None:
    with pytest.raises(ValueError, match="fixmap"):
        _tracing.with_trace(b"\xde\x00\x10", (TRACEPARENT, None))
