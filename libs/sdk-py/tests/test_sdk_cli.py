"""The `neutrino` command: subcommands reach the services' own entry points; mistakes say what to type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from neutrino.cli import main

NEUTRINO = Path(sys.executable).parent / "neutrino"


def test_usage_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0 and "model-server" in capsys.readouterr().out


def test_no_command_and_unknown_commands_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["model-sever"])
    assert exited.value.code == 2 and "did you mean 'model-server'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "flag"), [("model-server", "--model"), ("gateway", "--orchestrator")])
def test_subcommands_run_the_services_own_cli(command: str, flag: str) -> None:
    done = subprocess.run([str(NEUTRINO), command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and flag in done.stdout and f"neutrino-{command}" in done.stdout
    # a flag error comes from the service's own parser
    done = subprocess.run([str(NEUTRINO), command, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--no-such-flag" in done.stderr
