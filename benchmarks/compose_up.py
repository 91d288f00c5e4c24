"""The Compose stack (deploy/compose.yaml): image sizes, how long the images take to build (or to find
unchanged in Docker's cache), and the time from `docker-compose up -d` to ready, per run:
- gateway_ready_s: the gateway's /readyz answers 200 (a task pod answered, the task list is known);
- all_healthy_s: every container's own healthcheck passed (both task pods, the model loaded, the gateway).

    uv run python benchmarks/compose_up.py --json            # builds or reuses the images, 3 cold starts
    uv run python benchmarks/compose_up.py --runs 5 --no-build

Each run is its own Compose project (`neutrino-bench-...`), taken down with its volumes afterwards.
Container processes are not this process's children: the machine's "other processes" CPU time
includes the stack's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from _machine import cpu_seconds, other_load
from _procs import free_tcp_port, log

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
SERVICES = ("gateway", "task-pod-1", "task-pod-2", "neutrino-model-digits")


def sh(*cmd: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out.stdout


def build_images() -> tuple[list[str], float]:
    started = time.perf_counter()
    images = sh("bash", "scripts/images.sh", timeout=3600).split()
    return images, round(time.perf_counter() - started, 1)


def image_mb(image: str) -> float:
    return round(int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image)) / 1e6, 1)


def gateway_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def all_healthy(compose: list[str], env: dict[str, str]) -> bool:
    ids = sh(*compose, "ps", "-q", env=env).split()
    states = sh("docker", "inspect", "-f", "{{.State.Health.Status}}", *ids).split() if ids else []
    return len(states) == len(SERVICES) and all(s == "healthy" for s in states)


def cold_start(tag: str, timeout_s: float = 300) -> dict[str, float]:
    """One `up -d` of a new project to ready, then `down -v`."""
    port = free_tcp_port()
    env = {**os.environ, "NEUTRINO_PORT": str(port), "NEUTRINO_TAG": tag}
    compose = ["docker-compose", "-p", f"neutrino-bench-{uuid.uuid4().hex[:8]}", "-f", str(COMPOSE_FILE)]
    result: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        sh(*compose, "up", "-d", env=env)
        result["up_returned_s"] = round(time.perf_counter() - t0, 3)
        while "all_healthy_s" not in result:
            if "gateway_ready_s" not in result and gateway_ready(port):
                result["gateway_ready_s"] = round(time.perf_counter() - t0, 3)
            elif "gateway_ready_s" in result and all_healthy(compose, env):
                result["all_healthy_s"] = round(time.perf_counter() - t0, 3)
            elif time.perf_counter() - t0 > timeout_s:
                raise SystemExit(f"the stack was not ready within {timeout_s} s:\n{sh(*compose, 'logs', env=env)}")
            else:
                time.sleep(0.05)
    finally:
        sh(*compose, "down", "-v", "--timeout", "10", env=env)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-build", action="store_true", help="use the images as they are (tag dev)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args()
    tag = os.environ.get("TAG", "dev")
    if args.no_build:
        images = [f"neutrino/{name}:{tag}" for name in ("task-pod", "gateway", "model-server")]
        images += [f"neutrino/example-models-{role}:{tag}" for role in ("task-pod", "model-server")]
        build_s = None
    else:
        log("building the images (scripts/images.sh; unchanged layers come from the cache)")
        images, build_s = build_images()
    before, started = cpu_seconds(), time.perf_counter()
    runs = []
    for i in range(args.runs):
        log(f"run {i + 1}/{args.runs}: docker-compose up -d, to ready")
        runs.append(cold_start(tag))
    report = {
        "image_mb": {image: image_mb(image) for image in images},
        "build_s": build_s,
        "runs": runs,
        "gateway_ready_s_p50": round(statistics.median(r["gateway_ready_s"] for r in runs), 3),
        "all_healthy_s_p50": round(statistics.median(r["all_healthy_s"] for r in runs), 3),
        "machine": other_load(before, time.perf_counter() - started),
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
