"""The quickstart, end to end: start the orchestrator with 2 workers for `app.py`, make a few
calls through `neutrino.Client`, print them, and stop (or keep running with --keep-running).

    make demo        # = uv run python examples/quickstart/demo.py
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import signal
import subprocess
import sys
import time
from pathlib import Path

from neutrino import Client, TaskError

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "neutrino-orchestrator"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frontend", default="tcp://127.0.0.1:5555")
    parser.add_argument("--keep-running", action="store_true", help="leave the orchestrator up until Ctrl-C")
    args = parser.parse_args()

    cmd = [
        str(BINARY),
        "--app",
        "examples.quickstart.app:app",
        "--workers",
        str(args.workers),
        "--frontend",
        args.frontend,
        "--python",
        sys.executable,
    ]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    orchestrator = subprocess.Popen(cmd, cwd=ROOT)
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
        if args.keep_running:
            print(f"Orchestrator running on {args.frontend}; Ctrl-C to stop.", flush=True)
            orchestrator.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if orchestrator.poll() is None:
            orchestrator.send_signal(signal.SIGTERM)
        code = orchestrator.wait(timeout=60)
    return 0 if code == 0 else code


if __name__ == "__main__":
    sys.exit(main())
