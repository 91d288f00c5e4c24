"""Soak: a steady request rate through the whole stack for M minutes, with workers recycling all along.

    uv run python benchmarks/soak.py --minutes 10 --json > soak.json

Gateway → two task pods (the real orchestrator, `--max-tasks-per-worker` small so workers are
replaced many times a minute) → workers → a model server: every request is `POST /v1/tasks/infer`
(sync, `?wait=`), whose task calls the `echo` model over HTTP (`benchmarks/apps/soak_app.py`).
Requests leave at a fixed rate (open loop: a slow answer does not slow the next request down).

Reported: lost runs (accepted, never terminal, or answered twice: must be 0; `_runs.audit`), how
many times each run's task ran (from the workers' own files), RSS and open file descriptors of every
long-lived process (gateway, orchestrators, zygotes, model server) sampled every `--sample-s`
with a least-squares slope per minute (over the whole run and its second half, past warm-up),
and p50/p99 latency per minute. The floor, measured in the same run before and after the load:
sequential requests straight to the model server, the one hop every run pays for besides the
gateway and the pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from _machine import cpu_seconds, other_load
from _procs import Processes, log
from _runs import Ledger, Submission, audit, percentiles_ms, settle, slope_per_min, submit
from _stack import BINARY, Stack, open_fds, rss_kb

SETTLE_BOUND_S = 60.0  # after the load, how long accepted runs may take to become terminal
FLOOR_CALLS = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--workers", type=int, default=2, help="workers per task pod (default 2)")
    p.add_argument("--max-tasks-per-worker", type=int, default=25, help="recycle after this many tasks (default 25)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    p.add_argument("--wait", type=float, default=60.0, help="each POST's ?wait= in seconds (default 60)")
    p.add_argument("--orchestrator", type=Path, default=BINARY, help="orchestrator binary")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite file)")
    p.add_argument("--json", action="store_true", help="print only the JSON document on stdout")
    return p.parse_args(argv)


class Sampler:
    """RSS and open fds of the stack's long-lived processes, every `every_s` seconds."""

    def __init__(self, stack: Stack, every_s: float, started: float) -> None:
        self.stack = stack
        self.every_s = every_s
        self.started = started
        self.series: dict[str, list[tuple[float, int, int, int]]] = defaultdict(list)  # name -> (t, rss kB, fds, pid)

    def sample(self) -> None:
        t = round(time.monotonic() - self.started, 2)
        for name, pid in self.stack.long_lived().items():
            rss, fds = rss_kb(pid), open_fds(pid)
            if rss is not None and fds is not None:
                self.series[name].append((t, rss, fds, pid))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)

    def report(self) -> dict[str, Any]:
        out = {}
        for name, points in sorted(self.series.items()):
            half = [p for p in points if p[0] >= points[-1][0] / 2]
            out[name] = {
                "samples": len(points),
                "pids": sorted({p[3] for p in points}),
                "rss_mb": {
                    "first": _mb(points[0][1]),
                    "last": _mb(points[-1][1]),
                    "max": _mb(max(p[1] for p in points)),
                },
                "rss_kb_slope_per_min": slope_per_min([(p[0], p[1]) for p in points]),
                "rss_kb_slope_per_min_second_half": slope_per_min([(p[0], p[1]) for p in half]),
                "fds": {"first": points[0][2], "last": points[-1][2], "max": max(p[2] for p in points)},
                "fds_slope_per_min": slope_per_min([(p[0], p[2]) for p in points]),
                "fds_slope_per_min_second_half": slope_per_min([(p[0], p[2]) for p in half]),
                "series_t_rsskb_fds": [[p[0], p[1], p[2]] for p in points],
            }
        return out


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


async def floor(session: aiohttp.ClientSession, url: str, calls: int) -> dict[str, Any]:
    """Sequential predicts straight to the model server: what the model hop alone costs."""
    values = []
    for i in range(calls):
        started = time.perf_counter()
        async with session.post(f"{url}/v1/models/echo/predict", json={"inputs": i}) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"model server answered {resp.status}")
        values.append(time.perf_counter() - started)
    return percentiles_ms(values)


async def soak(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    ledger = Ledger()
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=args.wait + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        floor_before = await floor(session, stack.replica_urls[0], FLOOR_CALLS)
        started = time.monotonic()
        sampler = Sampler(stack, args.sample_s, started)
        sampling = asyncio.get_running_loop().create_task(sampler.run())
        interval = 1.0 / args.rate
        total = int(args.minutes * 60 * args.rate)
        pending: set[asyncio.Task[None]] = set()
        behind_max = 0.0
        run_tag = uuid.uuid4().hex[:8]
        log(f"soak: {total} requests at {args.rate}/s for {args.minutes} min")
        for i in range(total):
            due = started + i * interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                behind_max = max(behind_max, now - due)
            sub = Submission(token=f"soak-{run_tag}-{i}", x=i, sent_at=time.monotonic() - started)
            ledger.submissions.append(sub)
            task = asyncio.get_running_loop().create_task(submit(session, stack.url, sub, wait_s=args.wait))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if i % int(max(1, args.rate * 60)) == 0 and i:
                log(f"soak: minute {i / args.rate / 60:.0f} done, {len(pending)} requests in flight")
        load_s = time.monotonic() - started
        if pending:
            await asyncio.wait(pending, timeout=args.wait + 30)
        sampler.sample()
        sampling.cancel()
        await settle(session, stack.url, ledger.accepted(), SETTLE_BOUND_S)
        floor_after = await floor(session, stack.replica_urls[0], FLOOR_CALLS)
    per_minute: dict[int, list[float]] = defaultdict(list)
    for sub in ledger.submissions:
        if sub.latency_s is not None and sub.http_status == 200:
            per_minute[int(sub.sent_at // 60)].append(sub.latency_s)
    runs = audit(ledger, stack.executions())
    return {
        "runs": runs,
        "latency_ms_per_minute": [{"minute": m, **percentiles_ms(v)} for m, v in sorted(per_minute.items())],
        "latency_ms_all": percentiles_ms([v for values in per_minute.values() for v in values]),
        "load": {
            "requests": total,
            "seconds": round(load_s, 1),
            "achieved_rate": round(total / load_s, 1) if load_s else None,
            "generator_behind_max_ms": round(behind_max * 1000, 1),
        },
        "processes": sampler.report(),
        "floor": {"model_server_direct_ms_before": floor_before, "model_server_direct_ms_after": floor_after},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="nt-soak-"))
    report: dict[str, Any] = {
        "benchmark": "soak",
        "config": {
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "task_pods": 2,
            "workers_per_pod": args.workers,
            "max_tasks_per_worker": args.max_tasks_per_worker,
            "model_replicas": 1,
            "sample_s": args.sample_s,
            "shape": "HTTP POST ?wait= -> gateway -> orchestrator x2 -> workers -> model server (echo)",
        },
    }
    before = cpu_seconds()
    wall = time.monotonic()
    with Processes() as procs:
        stack = Stack(
            procs,
            workdir,
            pods=2,
            replicas=1,
            workers=args.workers,
            binary=args.orchestrator,
            max_tasks_per_worker=args.max_tasks_per_worker,
        )
        try:
            log(f"starting the stack in {workdir}")
            stack.start()
            report.update(asyncio.run(soak(stack, args)))
            report["recycles"] = stack.recycles()
            report["gateway_metrics"] = stack.gateway_metrics()
            report["gateway_runs_active_after"] = stack.runs_active()
        except Exception:  # a service that would not start or come back: the report says which, and how
            report["error"] = traceback.format_exc()[-5000:]
            log(report["error"])
        finally:
            report["stop"] = stack.stop()
            report["log_problems"] = stack.problems()
            report["findings"] = stack.findings + procs.findings
    report["machine"] = other_load(before, time.monotonic() - wall)
    runs = report.get("runs", {})
    report["ok"] = (
        bool(runs) and runs["lost"] == 0 and runs["violations"] == 0 and runs["accepted"] == runs["submitted"]
    )
    text = json.dumps(report, indent=2)
    print(text if args.json else _summary(report))
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["ok"] else 1


def _summary(report: dict[str, Any]) -> str:
    runs = report.get("runs", {})
    lines = [
        f"runs: {json.dumps({k: runs.get(k) for k in ('submitted', 'accepted', 'lost', 'violations', 'outcomes')})}"
    ]
    lines += [f"minute {m['minute']}: {m}" for m in report.get("latency_ms_per_minute", [])]
    for name, p in report.get("processes", {}).items():
        rss = f"rss {p['rss_mb']} MB slope {p['rss_kb_slope_per_min']} kB/min"
        lines.append(f"{name}: {rss}; fds {p['fds']} slope {p['fds_slope_per_min']}/min")
    lines.append(f"recycles: {report.get('recycles')}  ok: {report.get('ok')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
