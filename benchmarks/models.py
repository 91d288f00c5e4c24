"""Model serving benchmark: the example `digits` model with batching on and off beside a hand-written
aiohttp batcher, and the model server's per-request overhead on a no-op model beside a bare aiohttp
server (the floor). Everything runs side by side on this machine, in one run.

    uv run python benchmarks/models.py --json > models.json

Load comes from `_http_load`'s raw-HTTP keep-alive connections (one generator process per
measurement, separate from the servers), each sending its next request when the previous answer is
in. Measurements alternate between the systems round by round, so machine noise hits each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import free_tcp_port, log  # noqa: E402


async def _generate(url: str, body: bytes, connections: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    from _http_load import generate_requests, post_bytes

    request = post_bytes(url, body, "application/json")
    out = await generate_requests(url, request, b'"outputs"', connections, time.time() + warmup_s, duration_s)
    lat = sorted(out["latencies_ns"])
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0) if lat else (lambda q: None)
    return {
        "ok": out["ok"],
        "rps": round(out["ok"] / out["measured_s"], 1),
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "bad_status": out["bad_status"],
        "errors": out["errors"],
    }


def measure(url: str, body: bytes, connections: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """One measurement, from a generator process of its own."""
    out = subprocess.run(
        [sys.executable, __file__, "_load", url, body.decode(), str(connections), str(warmup_s), str(duration_s)],
        capture_output=True,
        text=True,
        timeout=duration_s + warmup_s + 60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wait_answering(url: str, body: bytes, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}")
        try:
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            if urllib.request.urlopen(req, timeout=2).status == 200:
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        from _http_load import run

        url, body, conns, warm, dur = sys.argv[2:7]
        print(json.dumps(run(_generate(url, body.encode(), int(conns), float(warm), float(dur)))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=3.0, help="seconds counted per measurement")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from sklearn.datasets import load_digits

    image = load_digits().data[7].tolist()
    digits_body = json.dumps({"inputs": image}).encode()
    noop_body = b'{"inputs":1}'
    py = sys.executable
    ms = [py, "-m", "neutrino_model_server", "--app"]
    systems = {
        "digits_batched": ([*ms, "examples.models.app:app", "--model", "digits"], "digits", digits_body),
        "digits_unbatched": (
            [*ms, "examples.models.app:app", "--model", "digits", "--max-batch-size", "1"],
            "digits",
            digits_body,
        ),
        "digits_hand_batcher": ([py, str(HERE / "_model_floor.py"), "batcher"], "digits", digits_body),
        "noop_neutrino": ([*ms, "benchmarks.apps.noop_model:app", "--model", "noop"], "noop", noop_body),
        "noop_floor": ([py, str(HERE / "_model_floor.py"), "bare"], "noop", noop_body),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for key, (cmd, model, _body) in systems.items():
            port = free_tcp_port()
            full = [*cmd, str(port)] if "_model_floor" in cmd[1] else [*cmd, "--port", str(port)]
            procs[key] = subprocess.Popen(full, cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True)
            urls[key] = f"http://127.0.0.1:{port}/v1/models/{model}/predict"
        for key, (_, _, body) in systems.items():
            wait_answering(urls[key], body, procs[key])
            log(f"{key} ready")
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in systems}
        latency: dict[str, list[dict[str, Any]]] = {"noop_neutrino": [], "noop_floor": []}
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for key in order:
                results[key].append(measure(urls[key], systems[key][2], args.connections, args.warmup, args.duration))
                log(f"round {r + 1} {key}: {results[key][-1]['rps']} req/s p50 {results[key][-1]['p50_us']} us")
            for key in ("noop_neutrino", "noop_floor") if r % 2 == 0 else ("noop_floor", "noop_neutrino"):
                latency[key].append(measure(urls[key], noop_body, 1, args.warmup, args.duration))
                log(f"round {r + 1} {key} 1 connection: p50 {latency[key][-1]['p50_us']} us")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(row[key] for row in rows), 1)

    summary = {
        k: {"rps": med(v, "rps"), "p50_us": med(v, "p50_us"), "p99_us": med(v, "p99_us"), "rounds": v}
        for k, v in results.items()
    }
    one = {k: {"p50_us": med(v, "p50_us"), "p99_us": med(v, "p99_us"), "rounds": v} for k, v in latency.items()}
    b, u, h = (summary[k]["rps"] for k in ("digits_batched", "digits_unbatched", "digits_hand_batcher"))
    overhead = one["noop_neutrino"]["p50_us"] / one["noop_floor"]["p50_us"]
    doc = {
        "connections": args.connections,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "throughput": summary,
        "noop_one_connection": one,
        "ratios": {
            "batched_vs_unbatched": round(b / u, 2),
            "batched_vs_hand_batcher": round(b / h, 2),
            "noop_p50_vs_floor": round(overhead, 2),
        },
        "targets": {
            "batched_at_least_4x_unbatched": b >= 4 * u,
            "batched_at_least_0.8x_hand_batcher": b >= 0.8 * h,
            "noop_p50_within_1.2x_floor": overhead <= 1.2,
        },
    }
    if args.json:
        for section in (doc["throughput"], doc["noop_one_connection"]):
            for entry in section.values():
                for row in entry["rounds"]:
                    row.pop("errors", None) if not row.get("errors") else None
        print(json.dumps(doc, indent=2))
    else:
        print(json.dumps({k: v for k, v in doc.items() if k in ("ratios", "targets")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
