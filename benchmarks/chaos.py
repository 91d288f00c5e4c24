"""Chaos: kill -9 workers, a task pod, a model replica and the gateway under load; every accepted run
must still end in exactly one terminal state.

    uv run python benchmarks/chaos.py --seed 7 --rounds 5 --json > chaos.json

The stack of `_stack.py` (two task pods with recycling on, two replicas of the `echo` model, a
gateway on a SQLite file) takes a steady stream of `infer` runs through HTTP, each with an
Idempotency-Key, a mix of `?wait=0` and `?wait=5`, of `retries=0` and `retries=2`, and of task
lengths; one in ten is cancelled (POST /v1/runs/{id}/cancel) a moment after it is accepted. Meanwhile, each round
kills with SIGKILL, at moments drawn from `random.Random(seed)`: a few workers, one task pod's
orchestrator (alone in even rounds, when its zygote must notice the closed control link and take
the workers down; with its zygote in odd rounds, when only the workers' PR_SET_PDEATHSIG can:
either way none may be left after 10 s), one model replica and the gateway; each killed service
is started again after a drawn pause, on the same port (the gateway on the same SQLite file), as
Kubernetes or a supervisor would. Outages overlap as they fall. The whole schedule comes from the
seed, which is printed first: the same seed replays the same schedule (what each kill hits among
the live processes at that moment may differ).

A client that loses its connection asks again with the same Idempotency-Key, as a careful client
does. At the end every accepted run (the gateway answered with its id) is polled until it is
terminal, within a bound, and `_runs.audit` checks: terminal, the same state when read again, the
right result, never run more than once when it had no retries. The report counts outcomes by kind
(`succeeded`, `failed:worker_died`, `failed:pod_lost`, `failed:gateway_restarted`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _machine import cpu_seconds, other_load
from _procs import Processes, log
from _runs import Ledger, Submission, audit, cancel, settle, submit
from _stack import BINARY, Stack

SETTLE_BOUND_S = 120.0  # after the load, how long accepted runs may take to become terminal
WORKER_KILLS_PER_ROUND = 3
CANCEL_SHARE = 0.1  # runs cancelled (POST .../cancel) shortly after they are accepted
DOWN_S = {"pod": (0.1, 2.0), "model": (0.1, 2.0), "gateway": (0.1, 1.0)}  # pause before a restart


@dataclass
class Event:
    at_s: float  # since the start of the load
    action: str  # kill_worker | kill_pod | kill_model | kill_gateway
    target: int  # pod or replica index; for kill_worker, the pod
    # kill_worker: which of that pod's live workers, as a fraction of the list; kill_pod: 1 (every
    # other round) SIGKILLs the zygote with the orchestrator, so only PDEATHSIG takes the workers down
    pick: float = 0.0
    down_s: float = 0.0  # how long the service stays down before it is restarted
    done: dict[str, Any] = field(default_factory=dict)  # what happened (filled in when it runs)


def schedule(rng: random.Random, rounds: int, round_s: float, pods: int, replicas: int) -> list[Event]:
    """Every kill of every round, from the seeded RNG alone."""
    events = []
    for r in range(rounds):
        base = r * round_s

        def moment(base: float = base) -> float:
            return round(base + rng.uniform(0.05, 0.9) * round_s, 3)

        for _ in range(WORKER_KILLS_PER_ROUND):
            events.append(Event(moment(), "kill_worker", rng.randrange(pods), pick=round(rng.random(), 3)))
        target, down_s = rng.randrange(pods), round(rng.uniform(*DOWN_S["pod"]), 3)
        events.append(Event(moment(), "kill_pod", target, pick=float(r % 2), down_s=down_s))
        events.append(
            Event(moment(), "kill_model", rng.randrange(replicas), down_s=round(rng.uniform(*DOWN_S["model"]), 3))
        )
        events.append(Event(moment(), "kill_gateway", 0, down_s=round(rng.uniform(*DOWN_S["gateway"]), 3)))
    return sorted(events, key=lambda e: e.at_s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: a random one, printed)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of kills (default 5)")
    p.add_argument("--round-s", type=float, default=8.0, help="seconds per round (default 8)")
    p.add_argument("--rate", type=float, default=20.0, help="runs submitted per second (default 20)")
    p.add_argument("--max-sleep-s", type=float, default=0.2, help="longest task (default 0.2 s)")
    p.add_argument("--workers", type=int, default=2, help="workers per task pod (default 2)")
    p.add_argument("--max-tasks-per-worker", type=int, default=25, help="recycling (default 25)")
    p.add_argument("--orchestrator", type=Path, default=BINARY, help="orchestrator binary")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite file)")
    p.add_argument("--dump", type=Path, default=None, help="write every submission, one JSON line each, here")
    p.add_argument("--json", action="store_true", help="print only the JSON document on stdout")
    return p.parse_args(argv)


async def run_events(stack: Stack, events: list[Event], started: float) -> None:
    """Each event at its moment, in a thread of its own, so outages overlap as they fall (a pod may
    be down while the gateway restarts); one service is never killed again before it is back up."""
    locks: dict[str, asyncio.Lock] = {}

    async def one(event: Event) -> None:
        delay = started + event.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lock = locks.setdefault(_service(event), asyncio.Lock())
        if event.action == "kill_worker" and lock.locked():
            event.done["skipped"] = "its pod is down"
            return
        async with lock:
            event.done["started_s"] = round(time.monotonic() - started, 3)
            try:
                event.done.update(await asyncio.to_thread(act, stack, event))
            except Exception as exc:  # a service that does not come back is the finding; keep the report
                event.done["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"chaos: {event.action} failed: {exc}")
        log(f"chaos: {event.action} {event.target} -> {event.done}")

    await asyncio.gather(*(one(event) for event in events))


def _service(event: Event) -> str:
    """The stack's name for the service an event hits (a worker kill: its pod)."""
    if event.action == "kill_gateway":
        return "gateway"
    return f"{'model' if event.action == 'kill_model' else 'pod'}-{event.target}"


def act(stack: Stack, event: Event) -> dict[str, Any]:
    """One kill (and restart), blocking: runs in a thread beside the load."""
    if event.action == "kill_worker":
        name = f"pod-{event.target}"
        workers = sorted(stack.workers_of(name)) if stack.services[name].alive() else []
        if not workers:
            return {"skipped": "no live worker"}
        pid = workers[min(len(workers) - 1, int(event.pick * len(workers)))]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return {"skipped": f"worker {pid} exited first"}
        return {"pid": pid}
    name = _service(event)
    what = stack.kill(name, with_zygote=event.pick >= 0.5)
    time.sleep(event.down_s)  # the drawn outage, then the supervisor's restart
    t = time.monotonic()
    stack.restart(name)
    what["restart_ready_s"] = round(time.monotonic() - t, 3)
    return what


async def one(
    session: aiohttp.ClientSession,
    url: str,
    sub: Submission,
    *,
    wait_s: float,
    sleep_s: float,
    cancel_after_s: float | None,
) -> None:
    """Submit one run; some are cancelled a moment after they are accepted."""
    await submit(session, url, sub, wait_s=wait_s, sleep_s=sleep_s)
    if cancel_after_s is not None and sub.run_id is not None:
        await asyncio.sleep(cancel_after_s)
        await cancel(session, url, sub)


async def load(stack: Stack, ledger: Ledger, args: argparse.Namespace, rng: random.Random, stop: asyncio.Event) -> None:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        tag = uuid.uuid4().hex[:8]
        i = 0
        while not stop.is_set():
            due = started + i / args.rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            sub = Submission(f"chaos-{tag}-{i}", i, time.monotonic() - started, retries=rng.choice((0, 2)))
            ledger.submissions.append(sub)
            wait_s = rng.choice((0.0, 5.0))
            sleep_s = round(rng.uniform(0.0, args.max_sleep_s), 3)
            cancel_after_s = rng.uniform(0.0, 0.3) if rng.random() < CANCEL_SHARE else None
            task = asyncio.get_running_loop().create_task(
                one(session, stack.url, sub, wait_s=wait_s, sleep_s=sleep_s, cancel_after_s=cancel_after_s)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(pending, timeout=90)
        await settle(session, stack.url, ledger.accepted(), SETTLE_BOUND_S)


async def chaos(stack: Stack, args: argparse.Namespace, events: list[Event], load_rng: random.Random) -> Ledger:
    ledger = Ledger()
    stop = asyncio.Event()
    started = time.monotonic()
    loader = asyncio.get_running_loop().create_task(load(stack, ledger, args, load_rng, stop))
    await run_events(stack, events, started)
    # One more quiet stretch so the last restarts see load too, then stop submitting.
    await asyncio.sleep(max(0.0, started + args.rounds * args.round_s - time.monotonic()) + 1.0)
    stop.set()
    await loader
    return ledger


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos seed {seed}", file=sys.stderr, flush=True)
    rng = random.Random(seed)
    pods, replicas = 2, 2
    events = schedule(rng, args.rounds, args.round_s, pods, replicas)
    load_rng = random.Random(rng.random())
    workdir = Path(tempfile.mkdtemp(prefix="nt-chaos-"))
    replay = f"uv run python benchmarks/chaos.py --seed {seed} --rounds {args.rounds} --round-s {args.round_s:g}"
    report: dict[str, Any] = {
        "benchmark": "chaos",
        "seed": seed,
        "replay": replay + f" --rate {args.rate:g}",
        "config": {
            "rounds": args.rounds,
            "round_s": args.round_s,
            "rate_per_s": args.rate,
            "task_pods": pods,
            "workers_per_pod": args.workers,
            "max_tasks_per_worker": args.max_tasks_per_worker,
            "model_replicas": replicas,
        },
    }
    before = cpu_seconds()
    wall = time.monotonic()
    with Processes() as procs:
        stack = Stack(
            procs,
            workdir,
            pods=pods,
            replicas=replicas,
            workers=args.workers,
            binary=args.orchestrator,
            max_tasks_per_worker=args.max_tasks_per_worker,
            gateway_args=("--ping-interval", "0.1", "--pod-timeout", "1.5"),
        )
        try:
            log(f"starting the stack in {workdir}")
            stack.start()
            ledger = asyncio.run(chaos(stack, args, events, load_rng))
            report["runs"] = audit(ledger, stack.executions())
            if args.dump is not None:
                with args.dump.open("w") as f:
                    for sub in ledger.submissions:
                        f.write(json.dumps(vars(sub), default=str) + "\n")
            report["recycles"] = stack.recycles()
            report["gateway_metrics_last_incarnation"] = stack.gateway_metrics()
            report["gateway_runs_active_after"] = stack.runs_active()
        except Exception:  # a service that would not start or come back: the report says which, and how
            report["error"] = traceback.format_exc()[-5000:]
            log(report["error"])
        finally:
            report["events"] = [asdict(e) for e in events]
            report["restarts"] = {name: s.starts - 1 for name, s in stack.services.items()}
            report["stop"] = stack.stop()
            report["log_problems"] = stack.problems(limit=8)
            report["findings"] = stack.findings + procs.findings
    report["machine"] = other_load(before, time.monotonic() - wall)
    runs = report.get("runs", {})
    report["ok"] = bool(runs) and runs["lost"] == 0 and runs["violations"] == 0 and not report["findings"]
    print(json.dumps(report, indent=2) if args.json else _summary(report))
    if not report["ok"]:
        log(f"chaos FAILED with seed {seed}; replay: {replay}")
    if args.keep or not report["ok"]:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["ok"] else 1


def _summary(report: dict[str, Any]) -> str:
    runs = report.get("runs", {})
    lines = [f"seed {report['seed']}  ok: {report.get('ok')}"]
    lines += [
        f"{k}: {runs.get(k)}" for k in ("submitted", "accepted", "not_accepted", "outcomes", "lost", "violations")
    ]
    lines += [f"executions: {runs.get('executions')}", f"restarts: {report.get('restarts')}"]
    lines += [f"findings: {report.get('findings')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
