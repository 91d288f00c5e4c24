"""Model serving benchmark: the example `digits` model with batching on and off beside a hand-written
aiohttp batcher, the model server's per-request overhead on a no-op model beside a bare aiohttp
server (the floor), and the batched `digits` server in the Open Inference Protocol's three encodings
(REST JSON, REST binary tensors, gRPC) from tritonclient, REST JSON being their floor. Everything
runs side by side on this machine, in one run.

    uv run python benchmarks/models.py --json > models.json

Load comes from `_http_load`'s raw-HTTP keep-alive connections (one generator process per
measurement, separate from the servers), each sending its next request when the previous answer is
in; the batched server and the hand batcher are also measured from aiohttp's client (`--client-
connections` calls in flight), the load a Python caller makes: its arrivals trickle in, and it
takes CPU from the servers. Measurements alternate between the systems round by round, so machine
noise hits each alike, and each ratio is also given round by round (`per_round`: the two
measurements of a round ran one after the other), for its spread. A Neutrino server's rows carry
`batch_mean`, the mean inputs per predict call during that measurement (from its /metrics).

Every row also carries `server_cpu_us` and `client_cpu_us`: the CPU time (user + system, all
threads, predict's included) the server process and the generator spent per answered request in
the counted window, read from /proc at its ends. Throughput on a shared machine swings with what
else runs; CPU per request much less, and it is what a CPU-bound server's throughput follows:
`ratios.batched_vs_hand_batcher_server_cpu_per_request` is its median batched / hand batcher
ratio over the rounds (below 1: the Neutrino server spends less per request).
"""

from __future__ import annotations

import argparse
import asyncio
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

from _procs import free_tcp_port, log, process_cpu_s  # noqa: E402


async def _generate(
    client: str, url: str, body: bytes, connections: int, warmup_s: float, duration_s: float, pid: int
) -> dict[str, Any]:
    from _http_load import generate_client, generate_requests, post_bytes

    start_at = time.time() + warmup_s
    cpu = asyncio.get_running_loop().create_task(_cpu_in_window(pid, start_at, duration_s))
    if client == "aiohttp":
        out = await generate_client(url, body, "application/json", b'"outputs"', connections, start_at, duration_s)
    else:
        request = post_bytes(url, body, "application/json")
        out = await generate_requests(url, request, b'"outputs"', connections, start_at, duration_s)
    server_cpu_s, client_cpu_s = await cpu
    lat = sorted(out["latencies_ns"])
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0) if lat else (lambda q: None)
    per_request = (lambda cpu_s: round(cpu_s / out["ok"] * 1e6, 1)) if out["ok"] else (lambda cpu_s: None)
    return {
        "ok": out["ok"],
        "rps": round(out["ok"] / out["measured_s"], 1),
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "server_cpu_us": per_request(server_cpu_s),
        "client_cpu_us": per_request(client_cpu_s),
        "bad_status": out["bad_status"],
        "errors": out["errors"],
    }


async def _cpu_in_window(pid: int, start_at: float, duration_s: float) -> tuple[float, float]:
    """CPU seconds the server `pid` (all its threads: predict's too) and this generator spent in
    the counted window, sampled at its ends from a task beside the load."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    server, client = process_cpu_s(pid), time.process_time()
    await asyncio.sleep(duration_s)
    return process_cpu_s(pid) - server, time.process_time() - client


def measure(
    url: str, body: bytes, connections: int, warmup_s: float, duration_s: float, pid: int, client: str = "raw"
) -> dict[str, Any]:
    """One measurement of the server `pid`, from a generator process of its own; `batch_mean` added
    for a Neutrino server."""
    batches = _batch_counts(url)
    cmd = [sys.executable, __file__, "_load", client, url, body.decode(), str(connections), str(warmup_s)]
    out = subprocess.run(
        [*cmd, str(duration_s), str(pid)],
        capture_output=True,
        text=True,
        timeout=duration_s + warmup_s + 60,
        check=True,
    )
    row: dict[str, Any] = json.loads(out.stdout)
    if batches is not None and (after := _batch_counts(url)) is not None:
        calls = after[1] - batches[1]
        row["batch_mean"] = round((after[0] - batches[0]) / calls, 1) if calls else None
    return row


def _batch_counts(predict_url: str) -> tuple[float, float] | None:
    """(inputs, predict calls) so far, from a Neutrino model server's /metrics; None for the floors."""
    try:
        text = urllib.request.urlopen(predict_url.split("/v1/")[0] + "/metrics", timeout=5).read().decode()
    except (urllib.error.URLError, OSError):
        return None
    seen = {}
    for line in text.splitlines():
        if line.startswith(("neutrino_model_batch_size_sum", "neutrino_model_batch_size_count")):
            seen[line.split("{")[0]] = float(line.split()[-1])
    if len(seen) != 2:
        return None
    return seen["neutrino_model_batch_size_sum"], seen["neutrino_model_batch_size_count"]


def measure_oip(kind: str, target: str, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """One measurement of one encoding (_oip_load.py), from a generator process of its own."""
    out = subprocess.run(
        [sys.executable, str(HERE / "_oip_load.py"), kind, target, str(concurrency), str(warmup_s), str(duration_s)],
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

        client, url, body, conns, warm, dur, pid = sys.argv[2:9]
        print(json.dumps(run(_generate(client, url, body.encode(), int(conns), float(warm), float(dur), int(pid)))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--client-connections",
        type=int,
        default=32,
        help="calls in flight from aiohttp's client, for batched vs hand batcher",
    )
    p.add_argument("--duration", type=float, default=3.0, help="seconds counted per measurement")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--oip-concurrency",
        type=int,
        default=16,
        help="calls in flight for the REST JSON / REST binary / gRPC comparison",
    )
    args = p.parse_args()

    from sklearn.datasets import load_digits

    image = load_digits().data[7].tolist()
    digits_body = json.dumps({"inputs": image}).encode()
    noop_body = b'{"inputs":1}'
    py = sys.executable
    ms = [py, "-m", "neutrino_model_server", "--app"]
    grpc_port = free_tcp_port()  # the batched digits server also serves gRPC, for the encodings' comparison
    systems = {
        "digits_batched": (
            [*ms, "examples.models.app:app", "--model", "digits", "--grpc-port", str(grpc_port)],
            "digits",
            digits_body,
        ),
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
        http_target = urls["digits_batched"].split("/")[2]
        oip_targets = {"rest_json": http_target, "rest_binary": http_target, "grpc": f"127.0.0.1:{grpc_port}"}
        encodings: dict[str, list[dict[str, Any]]] = {k: [] for k in oip_targets}
        latency: dict[str, list[dict[str, Any]]] = {"noop_neutrino": [], "noop_floor": []}
        batch_pair = ("digits_batched", "digits_hand_batcher")
        from_client: dict[str, list[dict[str, Any]]] = {k: [] for k in batch_pair}
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for key in order:
                results[key].append(
                    measure(urls[key], systems[key][2], args.connections, args.warmup, args.duration, procs[key].pid)
                )
                log(f"round {r + 1} {key}: {results[key][-1]['rps']} req/s p50 {results[key][-1]['p50_us']} us")
            for key in batch_pair if r % 2 == 0 else reversed(batch_pair):
                pid = procs[key].pid
                row = measure(
                    urls[key], digits_body, args.client_connections, args.warmup, args.duration, pid, "aiohttp"
                )
                from_client[key].append(row)
                log(f"round {r + 1} {key} from aiohttp's client: {row['rps']} req/s p50 {row['p50_us']} us")
            for key in ("noop_neutrino", "noop_floor") if r % 2 == 0 else ("noop_floor", "noop_neutrino"):
                latency[key].append(measure(urls[key], noop_body, 1, args.warmup, args.duration, procs[key].pid))
                log(f"round {r + 1} {key} 1 connection: p50 {latency[key][-1]['p50_us']} us")
            for kind in oip_targets if r % 2 == 0 else reversed(oip_targets):
                row = measure_oip(kind, oip_targets[kind], args.oip_concurrency, args.warmup, args.duration)
                encodings[kind].append(row)
                log(f"round {r + 1} digits {kind}: {row['rps']} req/s p50 {row['p50_us']} us")
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

    def med_seen(rows: list[dict[str, Any]], key: str) -> float | None:  # None: every call failed (see rounds)
        seen = [row[key] for row in rows if row[key] is not None]
        return round(statistics.median(seen), 1) if seen else None

    def loaded(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rps": med(rows, "rps"),
            "p50_us": med(rows, "p50_us"),
            "p99_us": med(rows, "p99_us"),
            "server_cpu_us": med_seen(rows, "server_cpu_us"),
            "rounds": rows,
        }

    summary = {k: loaded(v) for k, v in results.items()}
    one = {k: {"p50_us": med(v, "p50_us"), "p99_us": med(v, "p99_us"), "rounds": v} for k, v in latency.items()}
    client = {k: loaded(v) for k, v in from_client.items()}

    def per_round(rows: dict[str, list[dict[str, Any]]], key: str = "rps") -> list[float | None]:
        """batched / hand batcher, round by round (the two ran back to back)."""
        pairs = zip(rows["digits_batched"], rows["digits_hand_batcher"], strict=True)
        return [round(b[key] / h[key], 2) if b[key] is not None and h[key] else None for b, h in pairs]

    def cpu_ratio(rows: dict[str, list[dict[str, Any]]]) -> float | None:
        """Median of the rounds' batched / hand batcher server CPU per request (below 1: cheaper)."""
        seen = [r for r in per_round(rows, "server_cpu_us") if r is not None]
        return round(statistics.median(seen), 2) if seen else None

    oip = {
        k: {"rps": med(v, "rps"), "p50_us": med_seen(v, "p50_us"), "p99_us": med_seen(v, "p99_us"), "rounds": v}
        for k, v in encodings.items()
    }

    def vs_rest_json(kind: str) -> float | None:
        floor = oip["rest_json"]["rps"]
        return round(oip[kind]["rps"] / floor, 2) if floor else None

    b, u, h = (summary[k]["rps"] for k in ("digits_batched", "digits_unbatched", "digits_hand_batcher"))
    cb, ch = (client[k]["rps"] for k in batch_pair)
    overhead = one["noop_neutrino"]["p50_us"] / one["noop_floor"]["p50_us"]
    doc = {
        "connections": args.connections,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "throughput": summary,
        "noop_one_connection": one,
        "from_aiohttp_client": {"connections": args.client_connections, **client},
        "digits_encodings": {"client": "tritonclient (asyncio)", "concurrency": args.oip_concurrency, **oip},
        "ratios": {
            "batched_vs_unbatched": round(b / u, 2),
            "batched_vs_hand_batcher": round(b / h, 2),
            "batched_vs_hand_batcher_per_round": per_round(results),
            "batched_vs_hand_batcher_aiohttp_client": round(cb / ch, 2) if ch else None,
            "batched_vs_hand_batcher_aiohttp_client_per_round": per_round(from_client),
            "batched_vs_hand_batcher_server_cpu_per_request": cpu_ratio(results),
            "batched_vs_hand_batcher_server_cpu_per_request_aiohttp_client": cpu_ratio(from_client),
            "noop_p50_vs_floor": round(overhead, 2),
            "rest_binary_vs_rest_json": vs_rest_json("rest_binary"),
            "grpc_vs_rest_json": vs_rest_json("grpc"),
        },
        "targets": {
            "batched_at_least_4x_unbatched": b >= 4 * u,
            "batched_at_least_0.9x_hand_batcher": b >= 0.9 * h,
            "batched_at_least_0.9x_hand_batcher_aiohttp_client": cb >= 0.9 * ch,
            "noop_p50_within_1.2x_floor": overhead <= 1.2,
        },
    }
    if args.json:
        for section in (doc["throughput"], doc["noop_one_connection"], doc["from_aiohttp_client"]):
            for entry in section.values():
                for row in entry["rounds"] if isinstance(entry, dict) else ():
                    row.pop("errors", None) if not row.get("errors") else None
        print(json.dumps(doc, indent=2))
    else:
        print(json.dumps({k: v for k, v in doc.items() if k in ("ratios", "targets")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
