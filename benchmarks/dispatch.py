"""Dispatch benchmark: Neutrino side by side with a pure-ZeroMQ floor, in one run, on this machine.

Both systems run a client (this process) against servers started as subprocesses, over the same
transports: tcp://127.0.0.1 from client to broker, ipc:// from broker to 2 worker processes. The
floor (see _floor.py) is a pyzmq DEALER client, a C `zmq.proxy` (ROUTER/DEALER) and pyzmq worker
processes exchanging the same SubmitTask / TaskReply frames Neutrino uses; Neutrino is the real
orchestrator (target/release/neutrino-orchestrator) with its forked workers and `neutrino.Client`.

Both systems are up at once (idle while the other is measured) and every measurement alternates
between them in `--rounds` rounds (A B B A ...), so load from elsewhere on the machine falls on
both alike. Measured for each system:
- noop round trip: p50/p95/p99 µs of `--calls` sequential calls (split over the rounds) after
  `--warmup` warm-up calls;
- throughput: one burst of `--throughput-tasks` noop tasks per round, sent without waiting;
  tasks/s from first send to last reply (median round), every reply checked to arrive exactly once;
- echo round trip: a 100 KiB bytes argument echoed back, p50/p99 µs over `--echo-calls` calls;
- Neutrino only, client throughput against the same orchestrator, alternating in the same way:
  a raw pyzmq DEALER pushing pre-packed SubmitTask frames and counting replies (no bookkeeping:
  the floor of any Python client), `Client.submit` (a Future per task) and `Client.map` (no
  Future, a window in flight), each a burst of `--throughput-tasks` noop tasks per round;
- Neutrino only, after the above with everything stopped: ms from orchestrator Popen to the first
  `noop` result of a client that submits at once (queued until workers are ready), 3 cold starts.
- tracing (unless --no-tracing; _traces.py): plain Neutrino, tracing off and tracing on (every task
  sampled, spans exported over OTLP/HTTP to a sink in this process), noop p50 and throughput
  measured in the same alternating rounds, each as a % of plain's;
- CURVE (unless --no-curve): a third system, `neutrino_curve`, the same orchestrator with
  --curve-secret-key/--curve-clients and a `neutrino.Client` holding the keys (pairs made by
  `neutrino.keys.create` in the run's temp dir), measured in the same alternating rounds. The
  `curve` section sets its noop p50/p99, echo p50 and throughput beside plain Neutrino's.

Run from the repository root (build the orchestrator first: `cargo build --release`):

    uv run python benchmarks/dispatch.py --json            # one JSON document on stdout
    uv run python benchmarks/dispatch.py --only floor      # one half, readable summary

Progress goes to stderr. Every process started is stopped by pid on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _traces
import msgpack
import zmq
from _machine import cpu_seconds, other_load
from _neutrino import first_result_ms, fork_to_ready_ms
from _procs import Processes, log
from _systems import System, alternate, floor_system, neutrino_system

REPO = Path(__file__).resolve().parent.parent
ECHO_BYTES = 100 * 1024
ECHO_WARMUP = 50
FIRST_RESULT_RUNS = 3
TRANSPORT = {"client": "tcp://127.0.0.1", "backend": "ipc://"}

# ---------------------------------------------------------------- measurements


def summarize_us(samples_ns: list[int]) -> dict[str, Any]:
    """Nearest-rank percentiles of round-trip samples, in microseconds."""
    ordered = sorted(samples_ns)

    def pct(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] / 1000, 1)

    return {
        "n": len(ordered),
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "mean": round(statistics.fmean(ordered) / 1000, 1),
        "min": round(ordered[0] / 1000, 1),
        "max": round(ordered[-1] / 1000, 1),
    }


def timed_calls(call: Callable[..., Any], task: str, args: tuple[Any, ...], count: int) -> list[int]:
    """Round-trip times (ns) of `count` sequential calls; each result must equal the argument (or None)."""
    expected = args[0] if args else None
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        result = call(task, *args)
        samples.append(clock() - started)
        if result != expected:
            raise AssertionError(f"{task} returned {type(result).__name__} {str(result)[:60]}, expected the argument")
    return samples


def latency(systems: list[System], task: str, args: tuple[Any, ...], count: int, warmup: int, rounds: int) -> dict:
    alternate(systems, 1, lambda system, _: timed_calls(system.call, task, args, warmup))
    sizes = [count // rounds + (round_no < count % rounds) for round_no in range(rounds)]
    chunks = alternate(systems, rounds, lambda system, round_no: timed_calls(system.call, task, args, sizes[round_no]))
    out = {}
    for name, runs in chunks.items():
        if runs:
            out[name] = summarize_us([ns for chunk in runs for ns in chunk])
            out[name]["p50_by_round"] = [summarize_us(chunk)["p50"] for chunk in runs]
    return out


def measured_burst(system: System, count: int) -> dict[str, Any]:
    """One burst, plus the CPU time the client process spent on it (all its threads): when that
    is close to the elapsed time, the client, not the dispatcher, is the bottleneck. For a system
    that knows its processes, also the CPU they spent (`server_cpu_s`): client plus server CPU per
    task is a cost that load from elsewhere on the machine disturbs much less than a rate."""
    server = system.server_cpu_s() if system.server_cpu_s else None
    cpu = time.process_time()
    result = system.burst(count)
    result["client_cpu_s"] = round(time.process_time() - cpu, 3)
    if server is not None and system.server_cpu_s:
        result["server_cpu_at_start_s"] = server
        result["server_cpu_s"] = round(system.server_cpu_s() - server, 3)
    return result


def cpu_us_per_task(runs: list[dict[str, Any]], count: int) -> float | None:
    """Median over rounds of client plus server CPU µs per task. A round's server CPU runs from its
    start to the start of the same system's next round, so work a burst leaves behind (a worker
    exporting its spans after the replies) counts where it belongs; the last round, which has no
    next one, is left out (counted alone, burst only, when it is the only round)."""
    if not runs or "server_cpu_s" not in runs[0]:
        return None
    starts = [run["server_cpu_at_start_s"] for run in runs]
    server = [b - a for a, b in itertools.pairwise(starts)] or [runs[-1]["server_cpu_s"]]
    per_task = [(run["client_cpu_s"] + cpu) / count * 1e6 for run, cpu in zip(runs, server, strict=False)]
    return round(statistics.median(per_task), 2)


def throughput(systems: list[System], count: int, warmup: int, rounds: int) -> dict:
    """`rounds` bursts of `count` tasks per system; tasks/s is the median round."""
    if warmup:
        alternate(systems, 1, lambda system, _: system.burst(warmup))
    bursts = alternate(systems, rounds, lambda system, _: measured_burst(system, count))
    out = {}
    for name, runs in bursts.items():
        if not runs:
            continue
        for run in runs:
            run["elapsed_s"] = round(run["elapsed_s"], 4)
        rates = [round(count / run["elapsed_s"]) for run in runs]
        out[name] = {
            "tasks": count,
            "tasks_per_s": round(statistics.median(rates)),
            "rounds_tasks_per_s": rates,
            "all_replied_once": all(run["all_replied_once"] for run in runs),
            "per_round": runs,
        }
        cpu_us = cpu_us_per_task(runs, count)
        if cpu_us is not None:
            out[name]["cpu_us_per_task"] = cpu_us
    return out


def measure(systems: list[System], opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every measurement for every system, each one alternating between the systems."""
    results: dict[str, dict[str, Any]] = {system.name: {} for system in systems}

    def collect(key: str, per_system: dict[str, Any]) -> None:
        for name, value in per_system.items():
            results[name][key] = value
        log(f"{key}: " + "; ".join(f"{name} {brief(value)}" for name, value in per_system.items()))

    log(f"noop round trips: {opts.calls} calls in {opts.rounds} alternating rounds")
    collect("noop_us", latency(systems, "noop", (), opts.calls, opts.warmup, opts.rounds))
    log(f"throughput: {opts.rounds} alternating bursts of {opts.throughput_tasks} tasks")
    collect("throughput", throughput(systems, opts.throughput_tasks, opts.warmup, opts.rounds))
    log(f"echo of {ECHO_BYTES} bytes: {opts.echo_calls} calls")
    payload = (os.urandom(ECHO_BYTES),)
    collect("echo_100k_us", latency(systems, "echo", payload, opts.echo_calls, ECHO_WARMUP, opts.rounds))
    for system in systems:
        if system.bursts and not system.error:
            ways = [System(name, system.call, fn) for name, fn in system.bursts.items()]
            log(f"{system.name} client throughput: {opts.rounds} alternating bursts of {opts.throughput_tasks} tasks")
            per_way = throughput(ways, opts.throughput_tasks, opts.warmup, opts.rounds)
            log("client throughput: " + "; ".join(f"{name} {brief(value)}" for name, value in per_way.items()))
            results[system.name]["client_throughput"] = client_section(per_way)
    return results


def client_section(per_way: dict[str, Any]) -> dict[str, Any]:
    """The client-throughput runs, with submit and map as fractions of the raw DEALER floor, both
    the ratio of the median rounds and the median of the per-round ratios (each round's bursts ran
    back to back, so its ratio sees the same machine load)."""
    section: dict[str, Any] = {
        "setup": "one orchestrator; raw_dealer: a bare DEALER sending pre-packed frames, counting replies; "
        "submit: Client.submit + wait on every future; map: Client.starmap('noop', ...) with its default window",
        **per_way,
    }
    for name, way in per_way.items():
        # CPU this process spent per task (all its threads): the client's own cost, which machine
        # load disturbs less than the rates.
        cpu_us = [run["client_cpu_s"] / way["tasks"] * 1e6 for run in way["per_round"]]
        section[name]["client_cpu_us_per_task"] = round(statistics.median(cpu_us), 2)
    raw = per_way.get("raw_dealer")
    for name in ("submit", "map"):
        ours = per_way.get(name)
        if raw and ours and len(raw["rounds_tasks_per_s"]) == len(ours["rounds_tasks_per_s"]):
            per_round = [a / b for a, b in zip(ours["rounds_tasks_per_s"], raw["rounds_tasks_per_s"], strict=True)]
            section[f"{name}_vs_raw_dealer"] = round(ours["tasks_per_s"] / raw["tasks_per_s"], 3)
            section[f"{name}_vs_raw_dealer_by_round"] = [round(r, 3) for r in per_round]
            section[f"{name}_vs_raw_dealer_median_of_rounds"] = round(statistics.median(per_round), 3)
    return section


def brief(value: dict[str, Any]) -> str:
    if "tasks_per_s" in value:
        return f"{value['tasks_per_s']} tasks/s {value['rounds_tasks_per_s']}"
    return f"p50 {value['p50']} µs p99 {value['p99']} µs"


# ---------------------------------------------------------------- the run


def neutrino_missing(binary: Path) -> str | None:
    """Why the Neutrino half cannot run at all, with the fix; None when it can."""
    if not binary.is_file():
        return f"{binary} not found: build it with `cargo build --release`"
    try:
        from neutrino import Client  # noqa: F401
    except ImportError as exc:
        return f"cannot import neutrino.Client ({exc}): run `uv sync`"
    return None


def run(opts: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    """Start the systems, measure them side by side, stop them, then time Neutrino's cold start."""
    wanted = [name for name in ("floor", "neutrino") if opts.only in (None, name)]
    orch_args = {
        "binary": opts.orchestrator,
        "repo": REPO,
        "workers": opts.workers,
        "window": opts.window,
        "log_path": workdir / "orchestrator.log",
    }
    starters = {
        "floor": lambda: floor_system(procs, workdir, opts.workers),
        "neutrino": lambda: neutrino_system(procs, orch_args),
        "neutrino_curve": lambda: curve_system(procs, orch_args, workdir),
    }
    if "neutrino" in wanted and not opts.no_curve:
        wanted.append("neutrino_curve")
    report: dict[str, Any] = {name: {"error": "skipped (--only)"} for name in ("floor", "neutrino")}
    if "neutrino" in wanted and (problem := neutrino_missing(opts.orchestrator)):
        log(f"neutrino: {problem}")
        wanted = [name for name in wanted if not name.startswith("neutrino")]
        report["neutrino"] = {"error": problem}
    systems = []
    with contextlib.ExitStack() as stack:
        for name in wanted:
            try:
                systems.append(stack.enter_context(starters[name]()))
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                report[name] = {"error": f"could not start: {type(exc).__name__}: {exc}"}
        results = measure(systems, opts)
    for system in systems:
        report[system.name] = {**system.info, **results[system.name]}
        if system.error:
            report[system.name]["error"] = system.error
    if "neutrino" in wanted:
        log(f"neutrino: time to first result, {FIRST_RESULT_RUNS} cold starts")
        try:
            report["neutrino"]["first_result"] = first_result_ms(procs, orch_args, FIRST_RESULT_RUNS)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            report["neutrino"]["first_result"] = {"error": f"{type(exc).__name__}: {exc}"}
        report["neutrino"]["worker_ready_ms"] = fork_to_ready_ms(orch_args["log_path"])
        report["neutrino"]["window"] = opts.window
    if "neutrino_curve" in wanted:
        report["curve"] = curve_section(report["neutrino"], report.pop("neutrino_curve", {}))
    if "neutrino" in wanted and not opts.no_tracing:
        report["tracing"] = tracing_report(opts, procs, orch_args, workdir)
    return report


def tracing_report(
    opts: argparse.Namespace, procs: Processes, orch_args: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """Tracing off and on beside plain Neutrino (_traces.py): noop round trips and throughput."""

    def measure(systems: list[System]) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {system.name: {} for system in systems}
        noop = latency(systems, "noop", (), opts.calls, opts.warmup, opts.rounds)
        rates = throughput(systems, opts.throughput_tasks, opts.warmup, opts.rounds)
        for key, per_system in (("noop_us", noop), ("throughput", rates)):
            for name, value in per_system.items():
                results[name][key] = value
            log(f"tracing {key}: " + "; ".join(f"{name} {brief(value)}" for name, value in per_system.items()))
        return results

    try:
        return _traces.section(procs, orch_args, workdir, measure)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


def curve_system(
    procs: Processes, orch_args: dict[str, Any], workdir: Path
) -> contextlib.AbstractContextManager[System]:
    """Neutrino with CURVE on its tcp frontend: a pod pair, a client pair in the allowlist."""
    from neutrino.keys import create

    keys = workdir / "curve"
    _, pod_secret = create("pod", keys)
    create("client", keys / "allowed")
    args = {
        **orch_args,
        "log_path": workdir / "orchestrator-curve.log",
        "extra_args": ["--curve-secret-key", str(pod_secret), "--curve-clients", str(keys / "allowed")],
    }
    client = {"curve_server_key": keys / "pod.key", "curve_client_key": keys / "allowed" / "client.key_secret"}
    return neutrino_system(procs, args, "neutrino_curve", client)


def curve_section(plain: dict[str, Any], curve: dict[str, Any]) -> dict[str, Any]:
    """CURVE on beside off, both measured in the same alternating rounds of this run."""

    def figures(half: dict[str, Any]) -> dict[str, Any]:
        if "noop_us" not in half or "throughput" not in half:
            return {"error": half.get("error", "not measured")}
        return {
            "noop_p50_us": half["noop_us"]["p50"],
            "noop_p99_us": half["noop_us"]["p99"],
            "echo_100k_p50_us": half.get("echo_100k_us", {}).get("p50"),
            "tasks_per_s": half["throughput"]["tasks_per_s"],
            "all_replied_once": half["throughput"]["all_replied_once"],
        }

    off, on = figures(plain), figures(curve)
    section: dict[str, Any] = {
        "setup": "the same orchestrator and client over tcp://127.0.0.1; on: --curve-secret-key + --curve-clients "
        "(ZAP allowlist of one key), Client(curve_server_key=..., curve_client_key=...)",
        "off": off,
        "on": on,
        "on_details": curve,
    }
    if "error" not in off and "error" not in on:
        section["noop_p50_ratio_on_off"] = round(on["noop_p50_us"] / off["noop_p50_us"], 3)
        section["throughput_ratio_on_off"] = round(on["tasks_per_s"] / off["tasks_per_s"], 3)
    return section


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    with open("/proc/cpuinfo", errors="replace") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def compare(floor: dict[str, Any], neutrino: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ratios (Neutrino / floor) and pass/fail targets; None where a number is missing."""

    def value(half: dict[str, Any], section: str, field: str) -> float | None:
        return half.get(section, {}).get(field)

    def ratio(section: str, field: str) -> float | None:
        ours, theirs = value(neutrino, section, field), value(floor, section, field)
        return None if ours is None or theirs is None else round(ours / theirs, 3)

    def check(number: float | None, passes: Callable[[float], bool]) -> bool | None:
        return None if number is None else passes(number)

    clients = neutrino.get("client_throughput", {})
    ratios = {
        "p50_vs_floor": ratio("noop_us", "p50"),
        "throughput_vs_floor": ratio("throughput", "tasks_per_s"),
        "echo_100k_p50_vs_floor": ratio("echo_100k_us", "p50"),
        "map_vs_raw_dealer": clients.get("map_vs_raw_dealer"),
        "submit_vs_raw_dealer": clients.get("submit_vs_raw_dealer"),
    }
    targets = {
        "p50_within_1.1x_floor": check(ratios["p50_vs_floor"], lambda r: r <= 1.1),
        "map_at_least_0.6x_raw_dealer": check(ratios["map_vs_raw_dealer"], lambda r: r >= 0.6),
        "submit_at_least_0.45x_raw_dealer": check(ratios["submit_vs_raw_dealer"], lambda r: r >= 0.45),
        "p99_under_1ms": check(value(neutrino, "noop_us", "p99"), lambda us: us < 1000),
        "throughput_at_least_0.5x_floor": check(ratios["throughput_vs_floor"], lambda r: r >= 0.5),
        "throughput_over_25000": check(value(neutrino, "throughput", "tasks_per_s"), lambda tps: tps > 25000),
        "echo_within_1.3x_floor": check(ratios["echo_100k_p50_vs_floor"], lambda r: r <= 1.3),
        "first_result_under_400ms": check(value(neutrino, "first_result", "median_ms"), lambda ms: ms < 400),
        "worker_ready_under_10ms": check(value(neutrino, "worker_ready_ms", "p50"), lambda ms: ms < 10),
    }
    return ratios, targets


def print_summary(report: dict[str, Any]) -> None:
    for name in ("floor", "neutrino"):
        half = report.get(name)
        if not half:
            continue
        if "error" in half:
            print(f"{name:9} ERROR {half['error']}")
        if all(key in half for key in ("noop_us", "throughput", "echo_100k_us")):
            noop, echo, thr = half["noop_us"], half["echo_100k_us"], half["throughput"]
            print(
                f"{name:9} noop p50 {noop['p50']:7.1f} µs  p99 {noop['p99']:7.1f} µs  "
                f"{thr['tasks_per_s']:7d} tasks/s  echo100k p50 {echo['p50']:7.1f} µs"
            )
    if report["neutrino"] and "first_result" in report["neutrino"]:
        print(f"neutrino first result: {report['neutrino']['first_result']}")
    if clients := report["neutrino"].get("client_throughput"):
        ways = [name for name in ("raw_dealer", "submit", "map") if name in clients]
        print(f"client throughput (tasks/s): { {name: clients[name]['tasks_per_s'] for name in ways} }")
        print(f"client CPU (µs/task): { {name: clients[name]['client_cpu_us_per_task'] for name in ways} }")
    if curve := report.get("curve"):
        print(f"curve:   off {curve['off']}\n         on  {curve['on']}")
        print(
            f"         p50 on/off {curve.get('noop_p50_ratio_on_off')}  "
            f"throughput on/off {curve.get('throughput_ratio_on_off')}"
        )
    print(f"machine during run: {report['machine']['during_run']}")
    print(f"ratios:  {report['ratios']}")
    print(f"targets: {report['targets']}")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--calls", type=int, default=3000, help="timed sequential noop calls")
    parser.add_argument("--warmup", type=int, default=500, help="untimed warm-up calls (and warm-up burst size)")
    parser.add_argument("--throughput-tasks", type=int, default=20000, help="tasks in the throughput burst")
    parser.add_argument("--echo-calls", type=int, default=500, help="timed 100 KiB echo calls")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in both systems")
    parser.add_argument("--window", type=int, default=None, help="passed to the orchestrator as --window")
    parser.add_argument(
        "--orchestrator", type=Path, default=REPO / "target" / "release" / "neutrino-orchestrator", help="binary"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement")
    parser.add_argument("--only", choices=["floor", "neutrino"], help="run one half only")
    parser.add_argument("--no-curve", action="store_true", help="skip the CURVE-on copy of the Neutrino half")
    parser.add_argument("--no-tracing", action="store_true", help="skip tracing off/on beside plain (_traces.py)")
    return parser.parse_args(argv)


def raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    started, cpu_before = time.perf_counter(), cpu_seconds()
    workdir = Path(tempfile.mkdtemp(prefix="neutrino-bench-"))  # mode 0700, like a run directory
    report: dict[str, Any] = {"benchmark": "dispatch", "machine": machine_info()}
    report["config"] = {
        **{k: v for k, v in vars(opts).items() if k not in ("json", "orchestrator")},
        "echo_bytes": ECHO_BYTES,
        "transport": TRANSPORT,
        "gc": "enabled (collected before each measurement)",
    }
    try:
        with Processes() as procs:
            report.update(run(opts, procs, workdir))
            report["process_findings"] = procs.findings
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ratios"], report["targets"] = compare(report["floor"], report["neutrino"])
    elapsed = time.perf_counter() - started
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["machine"]["during_run"] = other_load(cpu_before, elapsed)
    report["elapsed_s"] = round(elapsed, 1)
    if opts.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
