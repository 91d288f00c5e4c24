"""The `neutrino` command: the SDK's subcommands and those installed packages declare (the
`neutrino.commands` entry points, which reach the services' own entry points); mistakes say what to type."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoints
from pathlib import Path

import pytest
from neutrino import cli, serve
from neutrino.cli import main
from neutrino.models import CLUSTER_URL_TEMPLATE, URL_TEMPLATE_ENV

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


def _fake_package(root: Path, name: str, commands: dict[str, str], module: str | None = None) -> None:
    """An installed distribution in `root` (its metadata only, and `module` beside it when given)."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nSummary: {name}, for a test\n")
    lines = "".join(f"{command} = {target}\n" for command, target in commands.items())
    (info / "entry_points.txt").write_text(f"[{cli.GROUP}]\n{lines}")
    if module is not None:
        (root / f"{name.replace('-', '_')}.py").write_text(module)


def test_a_package_adds_a_command_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = "import sys\n\ndef main(argv):\n    print('hello', *argv)\n"
    # `dev` is the SDK's: a package cannot take it over.
    _fake_package(tmp_path, "neutrino-hello", {"hello": "neutrino_hello:main", "dev": "neutrino_hello:main"}, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "  hello " in out and "neutrino-hello, for a test" in out
    assert "run gateway, task pods and model servers locally" in out  # dev's own line
    main(["hello", "a", "--b"])
    assert capsys.readouterr().out == "hello a --b\n"
    assert cli.find("dev") is importlib.import_module("neutrino.dev").main


def test_a_command_that_does_not_load_names_the_package_to_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_package(tmp_path, "neutrino-broken", {"broken": "neutrino_no_such_module:main"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["broken"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith(
        "neutrino broken: the neutrino-broken package declares this command as neutrino_no_such_module:main"
    )
    assert "reinstall neutrino-broken" in err


def test_two_packages_declaring_one_command_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_package(tmp_path, "neutrino-one", {"twice": "neutrino_one:main"})
    _fake_package(tmp_path, "neutrino-two", {"twice": "neutrino_two:main"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["twice"])
    assert exited.value.code == 2
    assert "neutrino-one and neutrino-two both declare the command 'twice'" in capsys.readouterr().err


def _without(command: str) -> Callable[..., EntryPoints]:
    """`entry_points` as if the package that declares `command` were not installed."""
    real = cli.entry_points

    def entry_points(*, group: str) -> EntryPoints:
        return EntryPoints(ep for ep in real(group=group) if ep.name != command)

    return entry_points


@pytest.mark.parametrize(
    ("command", "package"), [("gateway", "neutrino-gateway"), ("model-server", "neutrino-model-server")]
)
def test_a_missing_service_package_is_named(
    command: str, package: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "entry_points", _without(command))
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"install {package})" in err and f"  {command} " not in err


@pytest.mark.parametrize(
    ("role", "package"), [(["gateway"], "neutrino-gateway"), (["model", "digits"], "neutrino-model-server")]
)
def test_serve_names_a_missing_service_package(
    role: list[str], package: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "entry_points", _without(package.removeprefix("neutrino-")))
    # serve sets this default before it starts the service; set here, so that the test restores it.
    monkeypatch.setenv(URL_TEMPLATE_ENV, CLUSTER_URL_TEMPLATE)
    with pytest.raises(SystemExit) as exited:
        serve.main([*role, "--app", "examples.models.app:app"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(f"neutrino serve {role[0]}: ") and f"install {package})" in err
