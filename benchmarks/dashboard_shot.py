"""A picture of the gateway's /dashboard during a load run (issue 13): the whole stack as local
processes (`_stack.Stack`: two task pods, one `echo` model replica, a gateway), load through the
gateway for `--seconds`, and a full-page screenshot of /dashboard taken in Debian's chromium while it
runs.

The load is `--concurrency` clients, each sending one request after another:
- most are `infer` runs (`benchmarks/apps/soak_app.py`: it sleeps `--sleep-s`, then calls the
  `echo` model from the worker), answered when they finish (`?wait=`);
- every `--fail-every`th is an `infer` run that sleeps past its own `?timeout=` with `?retries=0`:
  it fails with `TaskTimeoutError` (its worker is killed and replaced), so the page lists a failed
  run with its error;
- every `--model-every`th is a model call through the gateway (`POST /v1/models/echo/predict`).

The screenshot is taken once the load has run `--shot-after` seconds and the page shows runs per
second above 0 and a failed run. Run from the repository root (build the orchestrator first:
`cargo build --release`):

    uv run python benchmarks/dashboard_shot.py                       # writes docs/dashboard-load.png
    uv run python benchmarks/dashboard_shot.py --seconds 60 --out /tmp/load.png

Prints one JSON document on stdout (requests sent by outcome, runs/s, what the page showed, where
the picture is); progress goes to stderr. Every process started is stopped by pid on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from _procs import Processes, log
from _stack import BINARY, MODEL, REPO, Stack
from dispatch import raise_interrupt

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright drives it through executable_path
VIEWPORT_WIDTH = 1280
PAGE_TIMEOUT_S = 60.0  # how long the picture waits for the page to show the load moving
REQUEST_TIMEOUT_S = 60.0


async def client(
    session: aiohttp.ClientSession, url: str, numbers: itertools.count[int], stop_at: float, args: argparse.Namespace
) -> Counter[str]:
    """One client: requests one after another until `stop_at`; what each was answered, by outcome."""
    outcomes: Counter[str] = Counter()
    while time.monotonic() < stop_at:
        i = next(numbers)
        failing = i % args.fail_every == 0
        if i % args.model_every == 0:
            path, query = f"/v1/models/{MODEL}/predict", ""
            body: dict[str, Any] = {"inputs": i}
        else:
            path, query = "/v1/tasks/infer", "?wait=30"
            body = {"token": f"shot-{i}", "x": i, "sleep_s": args.sleep_s}
            if failing:
                body["sleep_s"] = args.fail_timeout_s * 10
                query += f"&timeout={args.fail_timeout_s:g}&retries=0"
        try:
            async with session.post(f"{url}{path}{query}", json=body) as reply:
                status, answer = reply.status, _document(await reply.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            outcomes[f"{'model_' if path.startswith('/v1/models/') else ''}transport_{type(exc).__name__}"] += 1
            continue
        if path.startswith("/v1/models/"):
            outcomes["model_ok" if status == 200 else f"model_http_{status}"] += 1
        elif status == 200:
            outcomes["succeeded"] += 1
        elif status == 500 and isinstance(answer.get("error"), dict):
            kind = (answer["error"].get("detail") or {}).get("kind", "")
            outcomes[f"failed_{kind}" if failing else f"failed_unexpectedly_{kind}"] += 1
        else:
            outcomes[f"http_{status}"] += 1
    return outcomes


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def number(page: Any, selector: str) -> float:
    """A number the page shows (NaN for "-"), read from Python: the page's CSP refuses the string
    evaluation that Playwright's wait_for_function would use."""
    try:
        return float(await page.text_content(selector) or "")
    except ValueError:
        return math.nan


async def readings(page: Any) -> dict[str, Any]:
    """The tiles at the top of the page as it shows them, and the recent runs it lists."""
    tiles = ("pods", "workers", "queue", "active", "finished", "rate")
    shown: dict[str, Any] = {name: (await page.text_content(f"#t-{name}") or "").strip() for name in tiles}
    # Numbers for the checks, None where the page shows a dash (nothing yet).
    rate = await number(page, "#t-rate")
    shown["runs_per_s"] = None if math.isnan(rate) else rate
    shown["workers_busy"] = int(shown["workers"].split("/")[0]) if "/" in shown["workers"] else None
    shown["runs_listed"] = await page.locator("#runs tbody tr").count()
    shown["failed_runs_listed"] = await page.locator("#runs tr[data-status='failed']").count()
    first_failed = page.locator("#runs tr[data-status='failed'] .error").first
    shown["failed_run_error"] = await first_failed.text_content() if shown["failed_runs_listed"] else None
    return shown


async def shoot(page: Any, out: Path, started: float, args: argparse.Namespace) -> dict[str, Any]:
    """Once the load has run --shot-after seconds, the picture: taken just after the page redraws
    (every 2 s), so that what it shows is what `page_showed` reads, and once the numbers move (runs/s
    above 0, a worker busy, a failed run listed), or PAGE_TIMEOUT_S later with whatever it shows."""
    await asyncio.sleep(max(0.0, started + args.shot_after - time.monotonic()))
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        updated = await page.text_content("#updated")
        while await page.text_content("#updated") == updated and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling what the page shows: it has no event for a redraw
        shown = await readings(page)
        moving = (shown["runs_per_s"] or 0) > 0 and (shown["workers_busy"] or 0) > 0 and shown["failed_runs_listed"] > 0
        if moving or time.monotonic() > deadline:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out), full_page=True)
    log(f"screenshot {out} at {time.monotonic() - started:.1f}s of load: {shown}")
    return {"taken_after_s": round(time.monotonic() - started, 1), "moving": moving, "page_showed": shown}


async def drive(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": VIEWPORT_WIDTH, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(f"{stack.url}/dashboard")
            # The stack's gateway runs with --no-auth: the page shows the numbers without a token.
            for address in stack.pod_addresses:
                await page.wait_for_selector(f"#pods tr[data-address='{address}'] .state-up")
            await page.wait_for_selector(f"#models tr[data-model='{MODEL}'] .state-up")
            numbers = itertools.count(1)
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                started = time.monotonic()
                stop_at = started + args.seconds
                clients = [client(session, stack.url, numbers, stop_at, args) for _ in range(args.concurrency)]
                shooting = asyncio.create_task(shoot(page, args.out, started, args))
                try:
                    counts = await asyncio.gather(*clients)
                    load_s = time.monotonic() - started
                    shot = await shooting
                finally:
                    shooting.cancel()
        finally:
            await browser.close()
    outcomes: Counter[str] = sum(counts, Counter())
    runs = sum(n for outcome, n in outcomes.items() if not outcome.startswith("model"))
    return {
        "requests": sum(outcomes.values()),
        "runs": runs,
        "model_calls": sum(outcomes.values()) - runs,
        "by_outcome": dict(sorted(outcomes.items())),
        "load_s": round(load_s, 1),
        "runs_per_s": round(runs / load_s, 1),
        "model_calls_per_s": round((sum(outcomes.values()) - runs) / load_s, 1),
        "screenshot": {**shot, "path": str(args.out), "bytes": args.out.stat().st_size},
        "page_errors": problems,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard-load.png", help="the picture")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--shot-after", type=float, default=20.0, help="seconds of load before the picture")
    parser.add_argument("--concurrency", type=int, default=12, help="clients, each one request at a time")
    parser.add_argument("--sleep-s", type=float, default=0.05, help="how long each succeeding run sleeps")
    parser.add_argument("--fail-every", type=int, default=25, help="every Nth request is a run that times out")
    parser.add_argument("--fail-timeout-s", type=float, default=0.2, help="the failing runs' ?timeout=")
    parser.add_argument("--model-every", type=int, default=4, help="every Nth request is a model call")
    parser.add_argument("--pods", type=int, default=2, help="task pods")
    parser.add_argument("--workers", type=int, default=2, help="workers per task pod")
    parser.add_argument("--orchestrator", type=Path, default=BINARY, help="binary")
    args = parser.parse_args(argv)
    if args.shot_after >= args.seconds:
        parser.error("--shot-after must be less than --seconds: the picture is taken while the load runs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not CHROMIUM.exists():
        log(f"{CHROMIUM} is missing: install Debian's chromium package (make setup does)")
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    args.out = args.out.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="nt-shot-"))
    report: dict[str, Any] = {
        "benchmark": "dashboard_shot",
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "orchestrator")},
            "shape": "HTTP -> gateway -> task pods -> workers -> model server (echo); chromium on /dashboard",
        },
    }
    try:
        with Processes() as procs:
            stack = Stack(procs, workdir, pods=args.pods, replicas=1, workers=args.workers, binary=args.orchestrator)
            # The gateway reads the replica's numbers for the page's Models table, and forwards model
            # calls, only for the models named by --model; the replica's port is chosen by Stack.
            stack.services["gateway"].argv += ["--model", f"{MODEL}={','.join(stack.replica_urls)}"]
            try:
                log(f"starting the stack in {workdir}")
                stack.start()
                report.update(asyncio.run(drive(stack, args)))
            finally:
                report["stop"] = stack.stop()
                report["log_problems"] = stack.problems()
                report["findings"] = stack.findings + procs.findings
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if report.get("screenshot", {}).get("moving") else 1


if __name__ == "__main__":
    sys.exit(main())
