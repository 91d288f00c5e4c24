"""Input limits of the model server, without a process: the V2 element count (checked from the
shapes before any data is converted) and the limit flags."""

from __future__ import annotations

import pytest
from neutrino_model_server import config, v2


def tensor(shape: list[int], data: list[int]) -> dict[str, object]:
    return {"name": "x", "shape": shape, "datatype": "INT32", "data": data}


def test_elements_over_the_limit_are_refused_before_the_data_is_read() -> None:
    with pytest.raises(v2.TooManyElements, match="--max-elements"):
        v2.parse_request({"inputs": [tensor([4, 3], [1] * 12)]}, max_elements=11)
    # Summed over the inputs; a shape's claim alone is enough (the data is never converted).
    with pytest.raises(v2.TooManyElements):
        v2.parse_request({"inputs": [tensor([10**15], [1])]}, max_elements=1000)
    doc = {"inputs": [tensor([2, 3], [1] * 6), {**tensor([2], [1, 2]), "name": "y"}]}
    with pytest.raises(v2.TooManyElements):
        v2.parse_request(doc, max_elements=7)
    assert len(v2.rows_from_tensors(v2.parse_request(doc, max_elements=8).inputs)) == 2
    # A malformed shape is still the protocol's 400, not a size refusal.
    with pytest.raises(v2.InferError) as caught:
        v2.parse_request({"inputs": [tensor("x", [1])]}, max_elements=1)  # type: ignore[arg-type]
    assert not isinstance(caught.value, v2.TooManyElements)


def test_limit_flags_and_their_environment_variables() -> None:
    base = ["--app", "a:app", "--model", "m"]
    defaults = config.load(base, env={})
    assert (defaults.max_body_bytes, defaults.max_elements) == (64 * 2**20, 16 * 2**20)
    assert (defaults.header_timeout_s, defaults.body_timeout_s, defaults.max_connections) == (30.0, 60.0, 10_000)
    flags = ["--max-body-bytes", "100", "--max-elements", "5", "--header-timeout", "2", "--body-timeout", "3"]
    got = config.load([*base, *flags, "--max-connections", "7"], env={})
    assert (got.max_body_bytes, got.max_elements, got.header_timeout_s, got.body_timeout_s) == (100, 5, 2.0, 3.0)
    assert got.max_connections == 7
    env = config.load(base, env={"NEUTRINO_MODEL_SERVER_MAX_ELEMENTS": "9", "NEUTRINO_MODEL_SERVER_BODY_TIMEOUT": "4"})
    assert (env.max_elements, env.body_timeout_s) == (9, 4.0)
    with pytest.raises(config.ConfigError, match="--max-elements"):
        config.load([*base, "--max-elements", "0"], env={})
