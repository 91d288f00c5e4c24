"""Command line and environment parsing for the zygote."""

from __future__ import annotations

import logging
import os

import pytest
from neutrino_worker.config import DEFAULT_CREDITS, parse_args

REQUIRED = ["--app", "m:app", "--control", "/run/x/control.sock", "--backend", "ipc:///run/x/backend.sock"]


def test_defaults() -> None:
    config = parse_args(REQUIRED)
    assert config.app == "m:app"
    assert config.credits == DEFAULT_CREDITS
    assert config.app_dir == os.path.abspath(".")


def test_credits_and_app_dir() -> None:
    config = parse_args([*REQUIRED, "--credits", "2", "--app-dir", "some/dir"])
    assert config.credits == 2
    assert config.app_dir == os.path.abspath("some/dir")


@pytest.mark.parametrize("argv", [["--app", "m:app"], [*REQUIRED, "--credits", "0"], [*REQUIRED, "--bogus"]])
def test_bad_usage_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("value", "level", "warned"),
    [
        (None, logging.WARNING, False),
        ("debug", logging.DEBUG, False),
        ("INFO", logging.INFO, False),
        ("nonsense", logging.WARNING, True),
    ],
)
def test_log_level(monkeypatch: pytest.MonkeyPatch, value: str | None, level: int, warned: bool) -> None:
    if value is None:
        monkeypatch.delenv("NEUTRINO_LOG", raising=False)
    else:
        monkeypatch.setenv("NEUTRINO_LOG", value)
    config = parse_args(REQUIRED)
    assert config.log_level == level
    if warned:
        assert config.log_level_warning is not None
        assert "NEUTRINO_LOG='nonsense' is not a log level" in config.log_level_warning
        assert "debug, info, warning, error" in config.log_level_warning
    else:
        assert config.log_level_warning is None
