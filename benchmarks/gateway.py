"""Gateway benchmark: HTTP round trip and requests/s of a no-op task through the gateway, beside a bare aiohttp floor.

Servers, all started as subprocesses and up at once (idle while another is measured):
- the floor: a bare aiohttp server (`_http_load.py floor`, its own process) answering
  `POST /v1/tasks/noop` with a constant body shaped like the gateway's sync answer: the least an
  aiohttp HTTP round trip costs on this machine;
- the gateway: `python -m neutrino_gateway --no-auth` (temp SQLite db) in front of one orchestrator
  (`examples.quickstart.app:app`, `--workers` workers, tcp://127.0.0.1 frontend);
- the pass-through floor (`floor_passthrough`, this script's `--serve-passthrough`, its own process):
  the least a Python HTTP -> ZeroMQ gateway can do per run, in front of the same orchestrator:
  an aiohttp handler that sends each request as one SubmitTask from the SDK's SubmitEncoder over
  a DEALER (a loop turn's messages sent together, as the gateway does), awaits the reply (a future
  resolved by the socket's reader) and answers a body shaped like the gateway's; no run record,
  no validation, no metrics, no trace context;
- after the main measurements, a second gateway with `--auth-token` on the same orchestrator, for
  the latency a bearer-token check adds.

Measured for each server, for a JSON body and for a msgpack body (`Content-Type` and `Accept`
both set to the encoding):
- latency: `--requests` sequential sync `POST /v1/tasks/noop` over ONE keep-alive connection
  (a raw HTTP/1.1 client in this process), after `--warmup` untimed ones; p50/p95/p99/max µs;
- throughput: a separate load-generator process (wrk if on PATH, else the Python generator in
  `_http_load.py`) holding `--connections` keep-alive connections for `--duration` seconds after
  `--load-warmup` seconds of untimed load; requests/s counts only 200 answers whose body says
  `"status": "succeeded"`; errors by kind; latency under load; CPU seconds each process used.

Run from the repository root (build the orchestrator first: `cargo build --release`):

    uv run python benchmarks/gateway.py --json          # one JSON document on stdout
    uv run python benchmarks/gateway.py --only floor    # the floor alone, readable summary
    uv run python benchmarks/gateway.py --only gateway  # the gateway and the pass-through floor

Progress goes to stderr. Every process started is stopped by pid on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp
from _http_load import KeepAliveClient, loop_name, parse_wrk, wrk_script
from _machine import cpu_seconds, other_load
from _neutrino import Orchestrator, log_problems
from _procs import Processes, log, session_cpu_s
from dispatch import machine_info, raise_interrupt, summarize_us
from lifecycle import orchestrator_info

REPO = Path(__file__).resolve().parent.parent
HTTP_LOAD = Path(__file__).with_name("_http_load.py")
ENCODINGS = ("json", "msgpack")
LISTEN_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0  # /readyz: a task pod answered and the task catalog arrived
LOAD_START_S = 1.0  # time a Python generator process gets to start and connect before its warm-up ends
AUTH_TOKEN = "bench-token-0123456789"
TASK_PATH = "/v1/tasks/noop"
FLOOR_SHAPE = "aiohttp web.Application, one process, one route, constant body, no access log"
PASSTHROUGH_SHAPE = (
    "aiohttp web.Application, one process, one route, no access log; each request one SubmitTask "
    "(SubmitEncoder, no trace) on a DEALER, a loop turn's sends together, the reply decoded and a future "
    "resolved by the socket's reader; constant-shaped body"
)

# ---------------------------------------------------------------- servers


def wait_for_line(proc: subprocess.Popen[bytes], log_path: Path, pattern: str, timeout_s: float) -> re.Match[str]:
    """Poll `log_path` until a line matches `pattern` (the server's own readiness line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if match := re.search(pattern, text):
            return match
        if proc.poll() is not None:
            raise RuntimeError(f"{log_path.stem} (pid {proc.pid}) exited with code {proc.returncode}: {text[-800:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no line matching {pattern!r} in {log_path} after {timeout_s}s: {text[-800:]}")
        time.sleep(0.01)  # a polling interval, not a readiness guess: the loop exits on the line


def wait_readyz(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S) -> float:
    """GET /readyz until it answers 200; returns the seconds it took."""
    started, deadline = time.perf_counter(), time.monotonic() + timeout_s
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    last = ""
    while True:
        conn = http.client.HTTPConnection(host, int(port), timeout=5.0)
        try:
            conn.request("GET", "/readyz")
            answer = conn.getresponse()
            last = f"HTTP {answer.status} {answer.read()[:300]!r}"
            if answer.status == 200:
                return time.perf_counter() - started
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            hint = " (an orchestrator that predates the task catalog never sends one)" if "catalog" in last else ""
            raise RuntimeError(f"/readyz not 200 after {timeout_s}s; last answer: {last}{hint}")
        time.sleep(0.02)  # polling interval; the loop exits on the 200


def start_floor(procs: Processes, workdir: Path) -> dict[str, Any]:
    return start_listener(procs, workdir, "floor", [sys.executable, str(HTTP_LOAD), "floor"], {"setup": FLOOR_SHAPE})


def start_listener(procs: Processes, workdir: Path, name: str, argv: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Start one of the floors, which logs `<name> listening on URL (LOOP)` once it serves."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as stderr:
        proc = procs.spawn(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    word = name.removeprefix("floor_")  # "floor", "passthrough"
    match = wait_for_line(proc, log_path, rf"{word} listening on (http://[\d.]+:\d+) \((\w+)\)", LISTEN_TIMEOUT_S)
    url, loop = match.group(1), match.group(2)
    log(f"{name}: listening on {url} (pid {proc.pid}, {loop})")
    return {
        "name": name,
        "proc": proc,
        "url": url,
        "log_path": log_path,
        "sessions": {name: proc.pid},
        "info": {**info, "loop": loop},
    }


def serve_passthrough(endpoint: str) -> None:
    """The pass-through floor's server (`--serve-passthrough ENDPOINT`): see the module's docstring."""
    import asyncio
    import itertools

    import msgpack
    import neutrino_protocol
    import zmq
    from _http_load import FLOOR_ID, MSGPACK
    from _http_load import run as run_loop
    from aiohttp import web
    from neutrino._frontend import NO_ARGS, SubmitEncoder, recv_ready, send_nowait

    answer = {"id": FLOOR_ID, "status": "succeeded", "result": None}
    bodies = {"json": json.dumps(answer, separators=(",", ":")).encode(), "msgpack": msgpack.packb(answer)}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
    ids = itertools.count(1)
    encoders: dict[str, SubmitEncoder] = {}
    waiting: dict[int, asyncio.Future[bool]] = {}
    outbox: list[list[bytes]] = []

    def drain() -> None:
        for frames in recv_ready(sock):
            msg = neutrino_protocol.decode(frames)
            future = waiting.pop(getattr(msg, "id", -1), None)
            if future is not None and not future.done():
                future.set_result(type(msg) is neutrino_protocol.TaskReply and msg.status == "ok")

    def flush() -> None:
        sends, outbox[:] = list(outbox), []
        for frames in sends:
            send_nowait(sock, frames)
        drain()  # a send can consume the FD's edge

    async def run_task(request: web.Request) -> web.Response:
        await request.read()
        name = request.match_info["name"]
        encoder = encoders.get(name) or encoders.setdefault(name, SubmitEncoder(name))
        wire_id = next(ids)
        future = asyncio.get_running_loop().create_future()
        waiting[wire_id] = future
        outbox.append(encoder.frames_traced(wire_id, NO_ARGS, None))
        if len(outbox) == 1:
            asyncio.get_running_loop().call_soon(flush)
        if not await future:
            return web.Response(status=500, body=b'{"error":"the task failed"}', content_type="application/json")
        if request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", ""):
            return web.Response(body=bodies["msgpack"], content_type=MSGPACK)
        return web.Response(body=bodies["json"], content_type="application/json")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, drain)
        app = web.Application()
        app.router.add_post("/v1/tasks/{name}", run_task)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        print(f"passthrough listening on http://{bound[0]}:{bound[1]} ({loop_name()})", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        loop.remove_reader(fd)
        await runner.cleanup()

    try:
        run_loop(serve())
    finally:
        sock.close(linger=0)
        ctx.term()


def start_passthrough(procs: Processes, workdir: Path, endpoint: str) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-passthrough", endpoint]
    return start_listener(
        procs, workdir, "floor_passthrough", argv, {"setup": PASSTHROUGH_SHAPE, "orchestrator": endpoint}
    )


def start_gateway(
    procs: Processes, workdir: Path, endpoint: str, name: str, token: str | None = None
) -> dict[str, Any]:
    log_path = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "neutrino_gateway", "--orchestrator", endpoint, "--port", "0"]
    argv += ["--db", str(workdir / f"{name}.db")]
    argv += ["--auth-token", token] if token else ["--no-auth"]
    with log_path.open("ab") as stderr:
        started = time.perf_counter()
        proc = procs.spawn(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    url = wait_for_line(proc, log_path, r"gateway listening on (http://[\d.]+:\d+)", LISTEN_TIMEOUT_S).group(1)
    listening_ms = (time.perf_counter() - started) * 1000
    ready_ms = listening_ms + wait_readyz(url, proc) * 1000
    log(f"{name}: listening on {url} after {listening_ms:.0f} ms, /readyz 200 after {ready_ms:.0f} ms")
    return {
        "name": name,
        "proc": proc,
        "url": url,
        "log_path": log_path,
        "sessions": {"gateway": proc.pid},
        "info": {
            "command": " ".join(argv),
            "listening_ms": round(listening_ms, 1),
            "ready_ms": round(ready_ms, 1),
        },
    }


def gateway_log_problems(log_path: Path) -> list[str]:
    return [line for line in log_problems(log_path) if "auth is off" not in line]


# ---------------------------------------------------------------- measurements


def latency(url: str, encoding: str, requests: int, warmup: int, token: str | None = None) -> dict[str, Any]:
    """Sequential requests over one keep-alive connection: p50/p95/p99/mean/min/max µs of the ok ones,
    and the answers that were not ok (warm-up included) by kind."""
    samples, errors, examples = timed_calls(url, encoding, requests, warmup, token)
    result = summarize_us(samples)
    if errors:
        result["errors"] = errors
        result["error_examples"] = examples
        log(f"{url} {encoding}: answers that were not a 200 succeeded: {errors}; e.g. {examples[0]}")
    return result


def timed_calls(
    url: str, encoding: str, requests: int, warmup: int, token: str | None = None
) -> tuple[list[int], dict[str, int], list[str]]:
    """`warmup` then `requests` requests on one connection: the samples of the timed ones, errors of all."""
    client = KeepAliveClient(url + TASK_PATH, encoding, token)
    try:
        _, errors, examples = client.timed_calls(warmup)
        samples, more_errors, more_examples = client.timed_calls(requests)
    finally:
        client.close()
    for kind, n in more_errors.items():
        errors[kind] = errors.get(kind, 0) + n
    examples = (examples + more_examples)[:3]
    if not samples:
        raise RuntimeError(f"no request of {requests} succeeded: {errors}; e.g. {examples}")
    return samples, errors, examples


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(procs: Processes, url: str, script: Path, seconds: int, opts: argparse.Namespace) -> dict[str, Any]:
    argv = ["wrk", "-t", str(opts.wrk_threads), "-c", str(opts.connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(script), url]
    proc = procs.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with code {proc.returncode}: {out.decode(errors='replace')[-500:]}")
    return parse_wrk(out.decode(errors="replace"))


def load_wrk(
    procs: Processes, url: str, encoding: str, opts: argparse.Namespace, workdir: Path, window: CpuWindow
) -> dict[str, Any]:
    script = workdir / f"wrk-{encoding}.lua"
    script.write_text(wrk_script(encoding, None))
    if opts.load_warmup > 0:
        run_wrk(procs, url, script, opts.load_warmup, opts)
    window.start()
    result = run_wrk(procs, url, script, opts.duration, opts)
    window.stop()
    errors = {kind: n for kind, n in result["errors"].items() if n and kind != "status"}  # status: http_NNN below
    if result["not_succeeded"]:
        errors["not_succeeded"] = result["not_succeeded"]
    for status, n in result["by_status"].items():
        errors[f"http_{status}"] = n
    return {
        "measured_s": round(result["duration_us"] / 1e6, 3),
        "ok": result["ok"],
        "answers": result["requests"],
        "errors": errors,
        "latency": {"n": result["requests"], **result["latency_us"]},
    }


def load_python(
    procs: Processes, url: str, encoding: str, opts: argparse.Namespace, window: CpuWindow
) -> dict[str, Any]:
    start_at = time.time() + LOAD_START_S + opts.load_warmup
    each, extra = divmod(opts.connections, opts.load_procs)
    shares = [each + (i < extra) for i in range(opts.load_procs)]
    generators = []
    for share in shares:
        argv = [sys.executable, str(HTTP_LOAD), "load", url, "--encoding", encoding, "--connections", str(share)]
        argv += ["--start-at", repr(start_at), "--duration", str(opts.duration)]
        generators.append(procs.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
    results = []
    try:
        time.sleep(max(0.0, start_at - time.time()))  # the generators' own clock: counting starts then
        window.start()
        time.sleep(max(0.0, start_at + opts.duration - time.time()))
        window.stop()
        for proc in generators:
            out, _ = proc.communicate(timeout=LOAD_START_S + opts.load_warmup + opts.duration + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"load generator pid {proc.pid} exited with code {proc.returncode}")
            results.append(json.loads(out))
    finally:
        for proc in generators:
            procs.stop(proc)
    errors: dict[str, int] = {}
    for result in results:
        for kind, n in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        for status, n in result["bad_status"].items():
            errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + n
        if result["not_succeeded"]:
            errors["not_succeeded"] = errors.get("not_succeeded", 0) + result["not_succeeded"]
    samples = [ns for result in results for ns in result.pop("latencies_ns")]
    ok = sum(result["ok"] for result in results)
    return {
        "measured_s": round(max(result["measured_s"] for result in results), 3),
        "ok": ok,
        "answers": ok + sum(result["not_succeeded"] + sum(result["bad_status"].values()) for result in results),
        "errors": errors,
        "latency": summarize_us(samples) if samples else None,
        "generator_cpu_s_self_reported": round(sum(result["generator_cpu_s"] for result in results), 3),
        "warmup_missed": any(result["warmup_missed"] for result in results),
    }


class CpuWindow:
    """CPU seconds of a server's processes over the measured seconds only (warm-up left out), so
    that divided by the runs counted meanwhile it is the CPU each run cost."""

    def __init__(self, sessions: dict[str, int]) -> None:
        self.sessions = sessions
        self.started: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.started = {name: session_cpu_s(sid) for name, sid in self.sessions.items()}

    def stop(self) -> None:
        self.used = {name: session_cpu_s(sid) - self.started[name] for name, sid in self.sessions.items()}

    def per_run_us(self, runs: int) -> dict[str, float | None]:
        return {name: round(cpu / runs * 1e6, 1) if runs else None for name, cpu in self.used.items()}


def throughput(
    procs: Processes, server: dict[str, Any], encoding: str, opts: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One warm-up + measured load run; requests/s of succeeded answers, and who used the CPU."""
    url = server["url"] + TASK_PATH
    window = CpuWindow(server["sessions"])
    cpu_before = {name: session_cpu_s(sid) for name, sid in server["sessions"].items()}
    machine_before = cpu_seconds()[0]
    generator_before, wall = children_cpu_s(), time.perf_counter()
    if opts.generator == "wrk":
        result = load_wrk(procs, url, encoding, opts, workdir, window)
    else:
        result = load_python(procs, url, encoding, opts, window)
    wall = time.perf_counter() - wall
    cpu = {name: round(session_cpu_s(sid) - cpu_before[name], 2) for name, sid in server["sessions"].items()}
    cpu["generator"] = round(children_cpu_s() - generator_before, 2)
    # Everything that ran on the machine meanwhile, the kernel's loopback work included: well above the
    # processes' sum means something else was running too.
    cpu["machine_busy"] = round(cpu_seconds()[0] - machine_before, 2)
    cpu["machine_capacity"] = round(wall * (os.cpu_count() or 1), 2)
    rate = result["ok"] / result["measured_s"] if result["measured_s"] else 0.0
    return {
        "requests_per_s": round(rate),
        "connections": opts.connections,
        **result,
        "cpu_s_during_warmup_and_run": cpu,
        # Clock ticks of 10 ms: over a few seconds of load, good to about a percent.
        "cpu_us_per_run": window.per_run_us(result["ok"]),
        "wall_s_warmup_and_run": round(wall, 2),
    }


def measure(
    procs: Processes, servers: list[dict[str, Any]], opts: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    """Latency then throughput, per encoding, servers taking turns (ABBA: floor first for JSON, last for msgpack)."""
    results: dict[str, dict[str, Any]] = {server["name"]: {enc: {} for enc in ENCODINGS} for server in servers}
    errors: dict[str, str] = {}

    def attempt(server: dict[str, Any], encoding: str, key: str, fn: Any) -> None:
        if server["name"] in errors:
            return
        try:
            value = fn()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            errors[server["name"]] = f"{key} {encoding}: {type(exc).__name__}: {exc}"
            log(f"{server['name']}: {errors[server['name']]}")
            return
        results[server["name"]][encoding][key] = value
        log(f"{server['name']:8} {encoding:7} {key:10} {brief(value)}")

    for turn, encoding in enumerate(ENCODINGS):
        for server in servers if turn % 2 == 0 else servers[::-1]:
            attempt(
                server,
                encoding,
                "latency",
                lambda server=server, encoding=encoding: latency(server["url"], encoding, opts.requests, opts.warmup),
            )
    for turn, encoding in enumerate(ENCODINGS):
        for server in servers if turn % 2 == 0 else servers[::-1]:
            attempt(
                server,
                encoding,
                "throughput",
                lambda server=server, encoding=encoding: throughput(procs, server, encoding, opts, workdir),
            )
    for name, error in errors.items():
        results[name]["error"] = error
    return results


def auth_cost(
    procs: Processes, orch: Orchestrator, gateway: dict[str, Any], workdir: Path, opts: argparse.Namespace
) -> dict[str, Any]:
    """JSON latency through a second gateway that checks a bearer token, in turns (ABBA) with the same
    latency through the open gateway, so the difference is the token check and not the moment."""
    auth = start_gateway(procs, workdir, orch.endpoint, "gateway-auth", AUTH_TOKEN)
    try:
        client = KeepAliveClient(auth["url"] + TASK_PATH, "json")
        try:
            status, _ = client.call()
        finally:
            client.close()
        half = max(1, opts.requests // 2)
        samples: dict[str, list[int]] = {"auth_on": [], "auth_off": []}
        errors: dict[str, int] = {}
        for name, url, token in [
            ("auth_on", auth["url"], AUTH_TOKEN),
            ("auth_off", gateway["url"], None),
            ("auth_off", gateway["url"], None),
            ("auth_on", auth["url"], AUTH_TOKEN),
        ]:
            ok, bad, _ = timed_calls(url, "json", half, opts.warmup, token)
            samples[name] += ok
            for kind, n in bad.items():
                errors[f"{name} {kind}"] = errors.get(f"{name} {kind}", 0) + n
        on, off = summarize_us(samples["auth_on"]), summarize_us(samples["auth_off"])
        delta = round(on["p50"] - off["p50"], 1)
        log(f"gateway json latency with --auth-token: {brief(on)}; without, in turns: p50 {off['p50']} µs")
        return {
            "latency": on,
            "latency_auth_off_same_turns": off,
            "p50_delta_us": delta,
            "errors": errors,
            "without_token_status": status,
            **auth["info"],
        }
    finally:
        stopped = procs.stop(auth["proc"])
        if stopped["orphans"]:
            log(f"gateway-auth stop: {stopped}")


def brief(value: dict[str, Any]) -> str:
    if "requests_per_s" in value:
        lat = value["latency"] or {}
        return (
            f"{value['requests_per_s']} req/s, errors {value['errors'] or 0}, "
            f"under load p50 {lat.get('p50')} µs p99 {lat.get('p99')} µs, "
            f"cpu s {value['cpu_s_during_warmup_and_run']}, cpu µs/run {value['cpu_us_per_run']}"
        )
    return f"p50 {value['p50']} µs p95 {value['p95']} µs p99 {value['p99']} µs max {value['max']} µs"


# ---------------------------------------------------------------- the run


def gateway_missing(binary: Path) -> str | None:
    if not binary.is_file():
        return f"{binary} not found: build it with `cargo build --release`"
    try:
        import neutrino_gateway  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        return f"cannot import neutrino_gateway ({exc}): run `uv sync`"
    return None


def run(opts: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {name: {"error": "skipped (--only)"} for name in ("floor", "floor_passthrough", "gateway")}
    servers = []
    orch = None
    gateway: dict[str, Any] | None = None
    if opts.only in (None, "floor"):
        try:
            floor = start_floor(procs, workdir)
            servers.append(floor)
            report["floor"] = dict(floor["info"])
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            report["floor"] = {"error": f"could not start: {type(exc).__name__}: {exc}"}
    if opts.only in (None, "gateway"):
        if problem := gateway_missing(opts.orchestrator):
            log(f"gateway: {problem}")
            report["gateway"] = {"error": problem}
        else:
            orch = Orchestrator(
                procs,
                opts.orchestrator,
                REPO,
                opts.workers,
                None,
                workdir / "orchestrator.log",
                extra_args=opts.orchestrator_arg,
            )
            log(f"orchestrator: started {' '.join(orch.argv)}")
            try:
                passthrough = start_passthrough(procs, workdir, orch.endpoint)
                passthrough["sessions"]["orchestrator_and_workers"] = orch.proc.pid
                servers.append(passthrough)
                report["floor_passthrough"] = dict(passthrough["info"])
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                report["floor_passthrough"] = {"error": f"could not start: {type(exc).__name__}: {exc}"}
            try:
                started = start_gateway(procs, workdir, orch.endpoint, "gateway")
                started["sessions"]["orchestrator_and_workers"] = orch.proc.pid
                servers.append(started)
                report["gateway"] = {**started["info"], "orchestrator": " ".join(orch.argv)}
                gateway = started
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                report["gateway"] = {"error": f"could not start: {type(exc).__name__}: {exc}"}
    for name, result in measure(procs, servers, opts, workdir).items():
        report[name].update(result)
    if gateway is not None and orch is not None and opts.auth_variant and "error" not in report["gateway"]:
        try:
            report["gateway"]["auth_on"] = auth_cost(procs, orch, gateway, workdir, opts)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            report["gateway"]["auth_on"] = {"error": f"{type(exc).__name__}: {exc}"}
    for server in servers:
        report[server["name"]]["stop"] = procs.stop(server["proc"])
    if orch is not None:
        report["gateway"]["orchestrator_stop"] = orch.stop()
        report["gateway"]["orchestrator_log_problems"] = log_problems(orch.log_path)
        if gateway is not None:
            report["gateway"]["log_problems"] = gateway_log_problems(gateway["log_path"])
    return report


# ---------------------------------------------------------------- report


def generator_info(opts: argparse.Namespace) -> dict[str, Any]:
    if opts.generator == "wrk":
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        version = (out.stdout + out.stderr).split("\n", 1)[0].strip()
        return {"name": "wrk", "version": version, "threads": opts.wrk_threads, "path": shutil.which("wrk")}
    return {
        "name": "python",
        "what": "_http_load.py load: asyncio Protocols, raw HTTP/1.1, connections split over processes",
        "processes": opts.load_procs,
        "loop": loop_name(),
    }


def compare(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ratios (gateway / floor) and the issue's targets; None where a number is missing."""

    def get(half: str, encoding: str, key: str, field: str) -> float | None:
        value = report.get(half, {}).get(encoding, {}).get(key) or {}
        return value.get(field)

    ratios: dict[str, Any] = {}
    for enc in ENCODINGS:
        for key, field in (("latency", "p50"), ("throughput", "requests_per_s")):
            ours = get("gateway", enc, key, field)
            for floor_name, suffix in (("floor", "floor"), ("floor_passthrough", "passthrough")):
                floor = get(floor_name, enc, key, field)
                ratios[f"{enc}_{key}_{field}_vs_{suffix}"] = round(ours / floor, 2) if ours and floor else None
        # The server's own process only: the orchestrator and its workers do the same work behind both.
        ours_cpu, floor_cpu = (
            (report.get(name, {}).get(enc, {}).get("throughput") or {}).get("cpu_us_per_run", {}).get(name)
            for name in ("gateway", "floor_passthrough")
        )
        ratios[f"{enc}_cpu_us_per_run_vs_passthrough"] = (
            round(ours_cpu / floor_cpu, 2) if ours_cpu and floor_cpu else None
        )
    p50s = [get("gateway", enc, "latency", "p50") for enc in ENCODINGS]
    rates = [get("gateway", enc, "throughput", "requests_per_s") for enc in ENCODINGS]
    targets = {
        "p50_under_1ms": None if None in p50s else all(us < 1000 for us in p50s),  # type: ignore[operator]
        "over_5000_runs_per_s": None if None in rates else all(r > 5000 for r in rates),  # type: ignore[operator]
        # issue 15's target for a leaner gateway
        "at_least_10000_runs_per_s": None if None in rates else all(r >= 10000 for r in rates),  # type: ignore[operator]
        "by_encoding": {
            enc: {
                "p50_under_1ms": None if p50 is None else p50 < 1000,
                "over_5000_runs_per_s": None if rate is None else rate > 5000,
                "at_least_10000_runs_per_s": None if rate is None else rate >= 10000,
            }
            for enc, p50, rate in zip(ENCODINGS, p50s, rates, strict=True)
        },
    }
    return ratios, targets


def print_summary(report: dict[str, Any], out: Any) -> None:
    print(f"generator: {report['generator']}", file=out)
    for name in ("floor", "floor_passthrough", "gateway"):
        half = report.get(name, {})
        if "error" in half:
            print(f"{name:17} ERROR {half['error']}", file=out)
        for enc in ENCODINGS:
            lat, thr = half.get(enc, {}).get("latency"), half.get(enc, {}).get("throughput")
            line = f"{name:17} {enc:7}"
            if lat:
                line += f" p50 {lat['p50']:7.1f} µs  p99 {lat['p99']:7.1f} µs  max {lat['max']:8.1f} µs"
            if thr:
                load = thr["latency"] or {}
                line += (
                    f"  {thr['requests_per_s']:6d} req/s (p50 {load.get('p50')} µs p99 {load.get('p99')} µs"
                    f" under load, errors {thr['errors'] or 0}, cpu µs/run {thr['cpu_us_per_run']})"
                )
            if lat or thr:
                print(line, file=out)
    auth = report.get("gateway", {}).get("auth_on")
    if auth:
        lat = auth.get("latency")
        text = f"{brief(lat)}, p50 {auth['p50_delta_us']:+} µs against auth off" if lat else auth.get("error")
        print(f"gateway  json    auth on: {text}", file=out)
    print(f"machine during run: {report['machine']['during_run']}", file=out)
    print(f"ratios:  {report['ratios']}", file=out)
    print(f"targets: {report['targets']}", file=out)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--requests", type=int, default=2000, help="timed sequential requests per latency run")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests before each latency run")
    parser.add_argument("--duration", type=int, default=5, help="seconds of measured load per throughput run")
    parser.add_argument("--load-warmup", type=int, default=1, help="seconds of untimed load before each one")
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if on PATH, else python"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--load-procs", type=int, default=1, help="Python generator processes (connections split)")
    parser.add_argument("--workers", type=int, default=2, help="orchestrator workers")
    parser.add_argument(
        "--orchestrator", type=Path, default=REPO / "target" / "release" / "neutrino-orchestrator", help="binary"
    )
    parser.add_argument(
        "--orchestrator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra orchestrator argument, repeatable (e.g. --orchestrator-arg=--idle-spin-us --orchestrator-arg=0)",
    )
    parser.add_argument(
        "--no-auth-variant", dest="auth_variant", action="store_false", help="skip the --auth-token latency run"
    )
    parser.add_argument("--only", choices=["floor", "gateway"], help="run one half only")
    opts = parser.parse_args(argv)
    if opts.generator == "auto":
        opts.generator = "wrk" if shutil.which("wrk") else "python"
    return opts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve-passthrough"] and len(args) == 2:  # the pass-through floor's own process
        serve_passthrough(args[1])
        return 0
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    started, cpu_before = time.perf_counter(), cpu_seconds()
    workdir = Path(tempfile.mkdtemp(prefix="neutrino-bench-"))
    report: dict[str, Any] = {"benchmark": "gateway", "machine": {**machine_info(), "aiohttp": aiohttp.__version__}}
    report["config"] = {
        **{k: v for k, v in vars(opts).items() if k not in ("json", "orchestrator")},
        "task": "noop (examples.quickstart.app)",
        "latency_client": "raw HTTP/1.1 over one keep-alive TCP connection (TCP_NODELAY), in the benchmark process",
    }
    report["orchestrator"] = orchestrator_info(opts.orchestrator)
    report["generator"] = generator_info(opts)
    log(f"load generator: {report['generator']}")
    try:
        with Processes() as procs:
            report.update(run(opts, procs, workdir))
            report["process_findings"] = procs.findings
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ratios"], report["targets"] = compare(report)
    elapsed = time.perf_counter() - started
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["machine"]["during_run"] = other_load(cpu_before, elapsed)
    report["elapsed_s"] = round(elapsed, 1)
    if opts.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        print_summary(report, sys.stderr)
    else:
        print_summary(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
