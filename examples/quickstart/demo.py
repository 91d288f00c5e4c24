"""The quickstart, end to end: start the orchestrator with 2 workers for `app.py` and the HTTP
gateway in front of it, make a few calls through `neutrino.Client` (over ZeroMQ, then over HTTP)
and with a plain HTTP request, print them, and stop (or keep running with --keep-running).

    make demo        # = uv run python examples/quickstart/demo.py
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neutrino import Client, TaskError

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "neutrino-orchestrator"


def wait_ready(port: int, timeout_s: float = 30.0) -> None:
    """Poll the gateway's /readyz (a task pod answered and the task list is known)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the gateway on port {port} was not ready within {timeout_s}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frontend", default="tcp://127.0.0.1:5555")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--keep-running", action="store_true", help="leave the stack up until Ctrl-C")
    args = parser.parse_args()

    cmd = [str(BINARY), "--app", "examples.quickstart.app:app", "--workers", str(args.workers)]
    cmd += ["--frontend", args.frontend, "--python", sys.executable]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    orchestrator = subprocess.Popen(cmd, cwd=ROOT)
    state = tempfile.TemporaryDirectory(prefix="neutrino-demo-")
    gateway_cmd = [sys.executable, "-m", "neutrino_gateway", "--orchestrator", args.frontend]
    gateway_cmd += ["--port", str(args.http_port), "--db", f"{state.name}/runs.db", "--no-auth"]
    print("$", " ".join(gateway_cmd[1:]), flush=True)
    gateway = subprocess.Popen(gateway_cmd, cwd=ROOT)
    codes = []
    try:
        with Client(args.frontend) as client:
            # Submitted at once: tasks queue until the workers are ready.
            first = client.call("add", 1, 2)
            print(f"\nadd(1, 2) = {first}   (first result {1e3 * (time.perf_counter() - started):.0f} ms after start)")
            print(f"greet('Ada') = {client.call('greet', 'Ada')!r}   (async task)")
            print(f"cpu(100_000) = {client.call('cpu', 100_000)}")
            try:
                client.call("fail", "something went wrong")
            except TaskError as err:
                print(f"fail() raised {err.type}: {err.message}   (remote traceback kept: {err.traceback is not None})")
            t0 = time.perf_counter()
            futures = [client.submit("add", i, i) for i in range(10_000)]
            total = sum(f.result() for f in cf.as_completed(futures))
            elapsed = time.perf_counter() - t0
            print(f"10,000 add() via submit: sum={total}, {len(futures) / elapsed:,.0f} tasks/s")
            print(f"orchestrator load: {client.ping()}\n", flush=True)

        wait_ready(args.http_port)
        url = f"http://127.0.0.1:{args.http_port}"
        conn = http.client.HTTPConnection("127.0.0.1", args.http_port)
        conn.request("POST", "/v1/tasks/add", body=b'{"x": 20, "y": 22}', headers={"Content-Type": "application/json"})
        print(f'$ curl -d \'{{"x": 20, "y": 22}}\' {url}/v1/tasks/add\n{conn.getresponse().read().decode()}')
        conn.request("POST", "/v1/tasks/add", body=b'{"x": "twenty"}', headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        print(f'$ curl -d \'{{"x": "twenty"}}\' {url}/v1/tasks/add\n{reply.read().decode()}   (HTTP {reply.status})')
        conn.request("GET", "/v1/tasks")
        tasks = json.loads(conn.getresponse().read())["tasks"]
        print(f"GET /v1/tasks: {', '.join(task['name'] for task in tasks)}   (schemas in {url}/openapi.json)")
        with Client(url) as http_client:
            print(f"Client({url!r}).call('greet', 'Grace') = {http_client.call('greet', 'Grace')!r}\n", flush=True)

        if args.keep_running:
            print(f"Orchestrator on {args.frontend}, gateway on {url}; Ctrl-C to stop.", flush=True)
            orchestrator.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (gateway, orchestrator):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            codes.append(proc.wait(timeout=60))
        state.cleanup()
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
