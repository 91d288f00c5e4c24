"""The model server's OpenAPI document (`GET /openapi.json`) checked as a user's CI would (issue 17):
the pinned `schemathesis` command line with every check (`--checks all`) and every phase (stateful
included, on the links schemathesis infers between the operations) against a live server of the
test app's `noop` model (no `validate`, so no 422; predict echoes its input). Any finding fails
the test. The msgpack bodies of /v1 predict are declared but not validated (schemathesis has no
msgpack deserializer; it warns, and does not fail).

One check is configured, for the two infer operations only: `positive_data_acceptance` also
expects 400 and 413 there. The server refuses a tensor whose `data` does not hold exactly the
elements its `shape` claims, or does not fit its `datatype`, or a requested output the model does
not produce (400), and shapes that claim more than --max-elements elements (413). JSON Schema cannot
relate one field's length to another's product, so a document-valid request can get these answers;
the operations declare them and say why in their descriptions. Every other check runs as shipped.

The seed and the number of examples are fixed (NEUTRINO_SCHEMATHESIS_SEED picks another by hand).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from neutrino_model_server.testing import ServerProcess

pytestmark = pytest.mark.timeout(180)

SEED = int(os.environ.get("NEUTRINO_SCHEMATHESIS_SEED", "1"))
MAX_EXAMPLES = 40  # per operation: about 850 cases, 17 s on a loaded two-core machine
CONFIG = """\
[[operations]]
include-path-regex = "/infer$"
# schemathesis's defaults (2xx, 3xx, 401, 403, 404, 409, 429, 5xx), plus 400 and 413
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx",
]
"""


def test_schemathesis_cli_finds_nothing(serve: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = serve("noop")
    url = server.wait_ready()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output
    cases = int(generated.group(1))
    print(f"schemathesis against the model server, seed {SEED}: {cases} cases generated, exit code {done.returncode}")
    assert done.returncode == 0, output[-20_000:]
    assert re.search(r"✅ Stateful", output), "the stateful phase ran:\n" + output[-5_000:]
    assert cases > 11 * 10, f"too few cases for {MAX_EXAMPLES} examples per operation:\n{output[-5_000:]}"
    assert f"Seed: {SEED}" in output
