"""The gateway's OpenAPI document checked as a user's CI would check it (issue 17): the `schemathesis`
command line, pinned in pyproject.toml, with every check (`--checks all`) and every phase, the
stateful one included, against a live gateway in front of a real orchestrator and workers. The app
(services/gateway-py/tests/gateway_contract_app.py) has nested, optional, `Literal`,
length-constrained and `bytes` parameters. Any finding fails the test.

The seed and the number of examples are fixed, so the generated cases are the same on every run
(NEUTRINO_SCHEMATHESIS_SEED picks another seed by hand). One parameter is held still: `?timeout=`,
at 30 s. A run that overruns the timeout its caller gave it is answered 500 (the run's own failure,
kind `timeout`), and a generated `timeout=5e-324` makes one of every run, however fast the task:
a finding the not_a_server_error check cannot tell from a fault of the gateway. Its bounds are
tested in services/gateway-py/tests/test_gateway_contract.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port, start_orchestrator
from .gateway_harness import ROOT, TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("NEUTRINO_SCHEMATHESIS_SEED", "1"))
MAX_EXAMPLES = 100  # per operation; about 1,700 cases, 20 s on a loaded two-core machine
CONFIG = """\
[parameters]
"query.timeout" = 30
"""


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    app_dir = str(ROOT / "services" / "gateway-py" / "tests")
    orch = start_orchestrator("--frontend", tcp, "--app-dir", app_dir, workers=2, app="gateway_contract_app:app")
    gw = start_gateway([tcp], tmp_path_factory.mktemp("schemathesis") / "runs.db")
    yield gw
    gw.stop()
    orch.stop()


def test_schemathesis_cli_finds_nothing(live_gateway: Gateway, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{live_gateway.port}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output
    cases = int(generated.group(1))
    print(f"schemathesis, seed {SEED}: {cases} cases generated, exit code {done.returncode}")
    assert done.returncode == 0, output[-20_000:]
    assert re.search(r"✅ Stateful", output), "the stateful phase ran:\n" + output[-5_000:]
    assert cases > 14 * 20, f"too few cases for {MAX_EXAMPLES} examples per operation:\n{output[-5_000:]}"
    assert f"Seed: {SEED}" in output
