"""The README's examples, run as written, in order: a README edit that breaks one fails CI.

Each fenced `bash` or `python` block in README.md is preceded by a marker comment that says
what to do with it (none may be left unmarked):

    <!-- readme-test: file PATH -->                the block is the content of PATH in the workspace
    <!-- readme-test: background ready-log="RE" --> start it (bash) and wait for a log line matching RE
    <!-- readme-test: background ready-url="URL" --> start it and wait until URL answers 200
    <!-- readme-test: run -->                      run each command (bash); a `# ...` line right after a
                                                   command is the output it must print (`…` = anything)
    <!-- readme-test: python -->                   run it with the venv's Python; it must exit 0
    <!-- readme-test: stop -->                     (no block) stop what the background blocks started: each
                                                   must exit 0 on SIGTERM, as a drain should
    <!-- readme-test: skip reason="..." -->        not run here, with the reason

Blocks run in a fresh workspace folder with `.venv`, `target` and `examples` linked from the repository, the
venv's `bin` first on PATH (as after `source .venv/bin/activate`) and `$TOKEN` set.
`NEUTRINO_README=path/to/README.md pytest tests/test_readme.py` checks another copy.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT, ProcessLog, free_port, http_ok, wait_until

README = Path(os.environ.get("NEUTRINO_README", ROOT / "README.md"))
MARKER = re.compile(r"<!-- readme-test: ([a-z]+)(.*?) -->\n")
FENCE = re.compile(r"```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
ACTIONS = {"file", "background", "run", "python", "stop", "skip"}


@dataclass
class Step:
    action: str
    options: dict[str, str]
    args: list[str]
    language: str
    code: str
    line: int


def parse(text: str) -> list[Step]:
    """Every marker with the block right after it; fails on a bash/python block with no marker."""
    steps, marked = [], set()
    for m in MARKER.finditer(text):
        action, rest = m.group(1), shlex.split(m.group(2))
        assert action in ACTIONS, f"README line {text.count(chr(10), 0, m.start()) + 1}: unknown action {action!r}"
        options = dict(word.split("=", 1) for word in rest if "=" in word)
        args = [word for word in rest if "=" not in word]
        language = code = ""
        if action != "stop":
            fence = FENCE.match(text, m.end())
            assert fence, f"README line {text.count(chr(10), 0, m.start()) + 1}: {action!r} has no fenced block"
            language, code = fence.group(1), fence.group(2)
            marked.add(m.end())
        steps.append(Step(action, options, args, language, code, text.count("\n", 0, m.start()) + 1))
    for fence in FENCE.finditer(text):
        if fence.group(1) in ("bash", "sh", "python") and fence.start() not in marked:
            line = text.count("\n", 0, fence.start()) + 1
            raise AssertionError(f"README line {line}: a {fence.group(1)} block with no readme-test marker")
    return steps


def commands(code: str) -> Iterator[tuple[str, str | None]]:
    """(command, the output it must print or None) for each command of a `run` block."""
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        while command.rstrip().endswith("\\") and i < len(lines):
            command = command.rstrip()[:-1] + " " + lines[i]
            i += 1
        expected = []
        while i < len(lines) and lines[i].startswith("# "):
            expected.append(lines[i][2:])
            i += 1
        yield command, "\n".join(expected) if expected else None


def matches(pattern: str, output: str) -> bool:
    rx = ".*".join(re.escape(part) for part in pattern.split("…"))
    return re.fullmatch(rx, output.strip(), flags=re.S) is not None


@dataclass(kw_only=True)
class Background(ProcessLog):
    step: Step


@pytest.mark.timeout(300)
def test_readme_examples_run_as_written(tmp_path: Path) -> None:
    steps = parse(README.read_text())
    assert any(s.action == "run" for s in steps) and any(s.action == "python" for s in steps)
    for name in (".venv", "target", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    venv_bin = ROOT / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "VIRTUAL_ENV": str(ROOT / ".venv")}
    env["TOKEN"] = secrets.token_hex(8)
    env["NO_COLOR"] = "1"
    running: list[Background] = []
    try:
        for n, step in enumerate(steps):
            where = f"README line {step.line} ({step.action})"
            if step.action == "file":
                target = tmp_path / step.args[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.code)
            elif step.action == "background":
                running.append(start_background(step, tmp_path, env))
            elif step.action == "run":
                run_commands(step, tmp_path, env, where)
            elif step.action == "python":
                script = tmp_path / f"readme_snippet_{n}.py"
                script.write_text(step.code)
                out = subprocess.run(
                    [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
                )
                assert out.returncode == 0, f"{where}: the snippet failed:\n{out.stdout}\n{out.stderr}"
            elif step.action == "stop":
                stop(running, where)
            else:
                assert step.options.get("reason"), f'{where}: a skip needs reason="..."'
    finally:
        for proc in running:
            if proc.proc.poll() is None:
                os.killpg(proc.proc.pid, signal.SIGKILL)
                proc.proc.wait()


def run_commands(step: Step, cwd: Path, env: dict[str, str], where: str) -> None:
    for command, expected in commands(step.code):
        shell = ["bash", "-c", f"set -o pipefail; {command}"]
        out = subprocess.run(shell, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{where}: `{command}` exited {out.returncode}:\n{out.stderr}"
        if expected is not None:
            assert matches(expected, out.stdout), f"{where}: `{command}` printed\n{out.stdout}\nnot\n{expected}"


def start_background(step: Step, cwd: Path, env: dict[str, str]) -> Background:
    proc = subprocess.Popen(
        ["bash", "-c", step.code.strip()],  # one simple command: bash execs it, so signals reach it
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    bg = Background(proc=proc, stream=proc.stdout, step=step)
    bg.follow()
    if pattern := step.options.get("ready-log"):
        bg.wait_for(pattern, timeout=90)
    elif url := step.options.get("ready-url"):

        def ready() -> bool:
            assert proc.poll() is None, f"README line {step.line}: exited {proc.returncode}:\n{bg.log}"
            return http_ok(url)

        wait_until(ready, timeout=90, what=f"{url} (README line {step.line})")
    return bg


def stop(running: list[Background], where: str) -> None:
    for bg in running:
        if bg.proc.poll() is None:
            bg.proc.send_signal(signal.SIGTERM)
    for bg in running:
        try:
            code = bg.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(bg.proc.pid, signal.SIGKILL)
            code = bg.proc.wait()
        assert code == 0, f"{where}: README line {bg.step.line} exited {code} on SIGTERM:\n{bg.log}"
    running.clear()


def test_a_broken_example_is_caught() -> None:
    """The checker itself: a README whose curl example prints something else fails, as does an unmarked block."""
    assert matches('{"id":"…","status":"succeeded","result":3}', '{"id":"ab12","status":"succeeded","result":3}\n')
    assert not matches('{"id":"…","status":"succeeded","result":3}', '{"id":"ab12","status":"failed"}')
    with pytest.raises(AssertionError, match="no readme-test marker"):
        parse("text\n```bash\nrm -rf /\n```\n")
    steps = parse('<!-- readme-test: run -->\n```bash\ncurl -d x localhost\n# {"a":…}\n```\n')
    assert list(commands(steps[0].code)) == [("curl -d x localhost", '{"a":…}')]


@pytest.mark.timeout(120)
def test_the_curl_lines_make_demo_prints_work_when_pasted() -> None:
    """`make demo --keep-running`'s `$ curl ...` lines, pasted into bash, answer what the demo printed."""
    import json

    ports = [free_port(), free_port()]
    cmd = [sys.executable, "examples/quickstart/demo.py", "--keep-running", "--http-port", str(ports[0])]
    cmd += ["--frontend", f"tcp://127.0.0.1:{ports[1]}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    demo = ProcessLog(proc=proc, stream=proc.stdout)
    demo.follow()
    try:
        demo.wait_for("Ctrl-C to stop", timeout=90)
        lines = demo.log.splitlines()
        pasted = [(line[2:], lines[i + 1]) for i, line in enumerate(lines) if line.startswith("$ curl")]
        assert len(pasted) == 2, demo.log
        for command, printed in pasted:
            out = subprocess.run(["bash", "-c", command + " -s"], capture_output=True, text=True, timeout=30)
            shown = json.loads(printed.split("   (HTTP")[0])
            got = json.loads(out.stdout)
            for answer in (shown, got):
                answer.pop("id", None)
            assert got == shown, (command, out.stdout)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, demo.log
