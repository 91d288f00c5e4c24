"""Property-based API test: schemathesis generates requests from the gateway's own OpenAPI document
(valid and invalid ones) and sends them to a live gateway on loopback, in front of a real
orchestrator and workers. No answer may be a 5xx except a run's own failure (a 500 whose
detail says `task_error`, or `timeout` when the generated `?timeout=` was too short for the
task), and every status must be one the document declares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from .conftest import free_port, start_orchestrator
from .gateway_harness import TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(300)

# A 500 is allowed only as the run's own failure: the task raised, overran a generated ?timeout=,
# or returned what msgpack cannot carry (add(-1, -2**63) is valid input whose sum is not an int64).
RUN_FAILURES = ("task_error", "timeout", "result_not_serializable")


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    orch = start_orchestrator("--frontend", tcp, workers=2, app="tests.apps.fuzz_app:app")
    gw = start_gateway([tcp], tmp_path_factory.mktemp("fuzz") / "runs.db")
    yield gw
    gw.stop()
    orch.stop()


# schemathesis' own pytest integration (`from_fixture`) does not run under pytest 9 yet, so each
# operation's strategy is driven by hypothesis directly; the checks are the same.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_but_task_failures(live_gateway: Gateway, mode: GenerationMode) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{live_gateway.port}/openapi.json", headers=auth)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10, "one operation per task, and the fixed routes"
    seen: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=auth, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                detail = response.json()["error"]["detail"] or {}
                assert response.status_code == 500 and detail.get("kind") in RUN_FAILURES, (
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> {response.status_code}: "
                    f"{response.text}"
                )
            case.validate_response(response, checks=(status_code_conformance,))

        try:
            check()
        except Unsatisfiable:
            # Negative mode on an operation with nothing to get wrong (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert sum(seen.values()) > 50, seen
