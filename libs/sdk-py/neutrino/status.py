"""`neutrino status --gateway URL`: the dashboard's main numbers in a terminal.

It reads what the gateway's /dashboard page polls, `GET /v1/status` and `GET /v1/runs` (documented
in the gateway's /openapi.json), with the SDK's HTTP client and the same bearer token (`--token`,
else NEUTRINO_TOKEN). A gateway gives rates once it has two samples a second or more apart, so when
the first answer has none (nobody was looking), the numbers are asked for once more a moment later.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ._http import TOKEN_ENV, HttpClient
from .errors import AddressError, AuthenticationError, NeutrinoError

DEFAULT_GATEWAY = "http://127.0.0.1:8000"  # where `neutrino dev` serves it
TIMEOUT_S = 10.0
# The gateway samples at most once a second (dashboard.py MIN_SAMPLE_S): ask again after that for rates.
RESAMPLE_AFTER_S = 1.1
EXIT_FAILED = 1  # the gateway could not be read (unreachable, token refused, not a gateway)
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> None:
    """`neutrino status [--gateway URL] [--token T] [--runs N] [--json]`."""
    p = argparse.ArgumentParser(
        prog="neutrino status",
        description="Task pods and their workers, queue depth, runs per second by outcome, model replicas and "
        "recent runs, from a gateway's GET /v1/status and GET /v1/runs (what its /dashboard page shows).",
    )
    p.add_argument("--gateway", default=DEFAULT_GATEWAY, metavar="URL", help=f"default {DEFAULT_GATEWAY}")
    p.add_argument("--token", default=None, help=f"the gateway's bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--runs", type=int, default=10, metavar="N", help="recent runs to list (0: none; default 10)")
    p.add_argument("--json", action="store_true", help="print the status and runs as one JSON object")
    opts = p.parse_args(argv)
    if not 0 <= opts.runs <= 500:
        p.error(f"--runs must be from 0 to 500, not {opts.runs}")
    token = opts.token if opts.token is not None else os.environ.get(TOKEN_ENV)
    try:
        status, runs = fetch(opts.gateway, token, opts.runs)
    except AddressError as exc:
        print(f"neutrino status: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except NeutrinoError as exc:
        print(f"neutrino status: {explain(exc, opts.gateway, token)}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    if opts.json:
        print(json.dumps({"status": status, "runs": runs}, indent=2))
    else:
        print(render(opts.gateway, status, runs))


def fetch(gateway: str, token: str | None, runs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The gateway's status (with rates, asking twice if need be) and its `runs` newest runs."""
    with HttpClient(gateway, token=token or None, max_workers=1) as client:
        _, status = client._request("GET", "/v1/status", timeout=TIMEOUT_S)
        if status["window_s"] is None:
            time.sleep(RESAMPLE_AFTER_S)
            _, status = client._request("GET", "/v1/status", timeout=TIMEOUT_S)
        recent: list[dict[str, Any]] = []
        if runs:
            _, answer = client._request("GET", f"/v1/runs?limit={runs}", timeout=TIMEOUT_S)
            recent = answer["runs"]
    return status, recent


def explain(exc: NeutrinoError, gateway: str, token: str | None) -> str:
    """What went wrong, and what to do about it."""
    if isinstance(exc, AuthenticationError):
        if not token:
            return f"the gateway at {gateway} needs a token: pass --token TOKEN or set {TOKEN_ENV}"
        return f"the gateway at {gateway} refused the token: check --token or {TOKEN_ENV}"
    text = str(exc)
    if "answered 404" in text:
        return f"{gateway} has no /v1/status: is it a Neutrino gateway (and a recent one)?"
    if text.startswith(("cannot reach", "no answer")):
        return f"{text}. Is the gateway running? (--gateway URL, default {DEFAULT_GATEWAY})"
    return text


# -- the text ------------------------------------------------------------------------------------


def render(gateway: str, status: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    totals, counts = status["totals"], status["runs"]
    window = status["window_s"]
    lines = [f"gateway {gateway} at {status['time']}", ""]
    lines.append(
        f"task pods: {totals['task_pods_up']} of {totals['task_pods']} up; workers {totals['workers_busy']} busy, "
        f"{totals['workers_idle']} idle; queue depth {totals['queue_depth']}"
    )
    pods = status["task_pods"]
    lines += _table(
        ("POD", "STATE", "BUSY", "IDLE", "QUEUE", "IN FLIGHT"),
        (
            (
                p["address"],
                p["state"],
                p["workers"]["busy"],
                p["workers"]["idle"],
                p["queue_depth"],
                p["runs_in_flight"],
            )
            for p in pods
        ),
    )
    rates = ", ".join(f"{outcome} {_number(rate, 1)}" for outcome, rate in counts["per_second"].items())
    over = f" over {window:.1f} s" if window else ""
    lines += ["", f"runs: {counts['queued']} queued, {counts['running']} running; per second{over}: {rates or '-'}"]
    finished = ", ".join(f"{outcome} {n}" for outcome, n in counts["finished"].items())
    lines.append(f"  finished since the gateway started: {finished or 'none'}")
    replicas = [(model["name"], replica) for model in status["models"] for replica in model["replicas"]]
    if replicas:
        lines += ["", "models:"]
        lines += _table(
            ("MODEL", "REPLICA", "UP", "REQ/S", "REQUESTS", "BATCHES/S", "MEAN BATCH", "QUEUE", "IN FLIGHT"),
            (_replica_row(name, replica) for name, replica in replicas),
        )
        lines += [f"  {name} {r['url']}: {r['error']}" for name, r in replicas if not r["up"] and r.get("error")]
    if runs:
        lines += ["", "recent runs:"]
        lines += _table(
            ("RUN", "TASK", "STATUS", "ATTEMPTS", "CREATED", "TOOK", "ERROR"),
            (
                (
                    run["id"][-8:],  # the random end: a UUIDv7 starts with its creation time
                    run["task"],
                    run["status"],
                    run["attempts"],
                    _clock(run["created_at"]),
                    _took(run.get("started_at"), run.get("finished_at")),
                    _error(run.get("error")),
                )
                for run in runs
            ),
        )
    return "\n".join(lines)


def _replica_row(name: str, replica: dict[str, Any]) -> tuple[Any, ...]:
    if not replica["up"]:
        return (name, replica["url"], "down", "-", "-", "-", "-", "-", "-")  # why: on a line after the table
    return (
        name,
        replica["url"],
        "up",
        _number(replica["requests_per_s"], 1),
        replica["requests"],
        _number(replica["batches_per_s"], 1),
        _number(replica["mean_batch_size"], 2),
        replica["queue_depth"],
        replica["requests_in_flight"],
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    cells = [list(headers)] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _clock(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def _took(started: str | None, finished: str | None) -> str:
    if not started or not finished:
        return "-"
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _error(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    message = " ".join(str(error.get("message", "")).split())
    return f"{error.get('type', '')}: {message[:80]}"
