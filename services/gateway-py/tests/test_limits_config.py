"""The gateway's slow-client limit flags: defaults, flags, environment, and what is refused."""

from __future__ import annotations

import pytest
from neutrino_gateway.config import ConfigError, load

BASE = ["--orchestrator", "tcp://127.0.0.1:5555", "--no-auth"]


def test_defaults_flags_and_environment() -> None:
    config = load(BASE, env={})
    assert (config.header_timeout_s, config.body_timeout_s, config.max_connections) == (30.0, 60.0, 10_000)
    flags = ["--header-timeout", "2.5", "--body-timeout", "4", "--max-connections", "50"]
    config = load([*BASE, *flags], env={})
    assert (config.header_timeout_s, config.body_timeout_s, config.max_connections) == (2.5, 4.0, 50)
    env = {"NEUTRINO_GATEWAY_HEADER_TIMEOUT": "3", "NEUTRINO_GATEWAY_MAX_CONNECTIONS": "9"}
    config = load(BASE, env=env)
    assert (config.header_timeout_s, config.max_connections) == (3.0, 9)
    assert load([*BASE, "--max-connections", "8"], env=env).max_connections == 8  # the flag wins


@pytest.mark.parametrize(
    ("flag", "value"), [("--header-timeout", "0"), ("--body-timeout", "-1"), ("--max-connections", "0")]
)
def test_limits_that_would_refuse_everything_are_refused(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=flag.lstrip("-")):
        load([*BASE, flag, value], env={})
