"""The dashboard: the `/dashboard` page (static files shipped in this package) and the numbers behind
`GET /v1/status`, which the page polls and `neutrino status` prints.

Where each number comes from, so that none needs a new message or a new store:
- task pods, their workers by state and their queue depth: each pod's last `Pong` (SPEC.md §4:
  `workers` ready, `idle_workers`; busy is the difference), and the runs this gateway has there;
- runs in flight: the gateway's memory (runs.py); finished runs by outcome: the gateway's own
  `neutrino_gateway_runs_finished_total{task, outcome}` counter, read in process;
- recent runs: the run store's last rows (store.py `recent`);
- model replicas: each `--model` replica's own `/metrics` (request count, batch size histogram,
  queue depth, requests in flight), scraped when the status is asked for.

Rates are differences between samples taken when the status is asked for, at most one per
MIN_SAMPLE_S, over the last RATE_WINDOW_S at most: nothing is sampled or scraped while nobody looks,
and the first look has no rates yet (`window_s` is null).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from . import metrics
from .config import Config
from .pod import Pod
from .pool import PodPool
from .run import Run
from .runs import Runs

# The page's files: the URL path, the file in static/, its type. Served without a token (they hold
# no data; the page asks for the token and sends it with each JSON request).
FILES = {
    "/dashboard": ("index.html", "text/html"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
}
PAGES = frozenset(FILES)
# Everything from this gateway, nothing inline and nothing from anywhere else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A poll every second or two gives a rate over a few polls; a sample per second at most keeps several
# viewers from costing more scrapes than one.
MIN_SAMPLE_S = 1.0
RATE_WINDOW_S = 10.0
SCRAPE_TIMEOUT_S = 1.0  # a replica that does not answer its /metrics in a second is shown as down
MAX_METRICS_BYTES = 1 << 20  # a model server's is a few kB
# The model server's series (docs/metrics.md).
REPLICA_REQUESTS = "neutrino_model_requests_total"
REPLICA_BATCH_SIZE = "neutrino_model_batch_size"
REPLICA_QUEUE_DEPTH = "neutrino_model_queue_depth"
REPLICA_IN_FLIGHT = "neutrino_model_requests_in_flight"


@dataclass(slots=True)
class ReplicaSample:
    """What one scrape of a replica's /metrics said (cumulative counts since it started)."""

    requests: float = 0.0
    batches: float = 0.0
    batch_inputs: float = 0.0  # the batch size histogram's sum: inputs predicted
    batch_buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> batches, cumulative
    queue_depth: float = 0.0
    in_flight: float = 0.0


@dataclass(slots=True)
class Sample:
    at: float  # time.monotonic()
    finished: dict[str, float]  # runs finished, by outcome
    replicas: dict[str, ReplicaSample | str]  # replica URL -> its numbers, or why it could not be read


class Dashboard:
    def __init__(self, config: Config, runs: Runs, pool: PodPool) -> None:
        self.config = config
        self.runs = runs
        self.pool = pool
        static = resources.files(__package__).joinpath("static")
        self._files = {path: (static.joinpath(name).read_bytes(), kind) for path, (name, kind) in FILES.items()}
        self._samples: collections.deque[Sample] = collections.deque()
        self._sampling: asyncio.Task[Sample] | None = None
        self._session: aiohttp.ClientSession | None = None

    def install(self, app: web.Application) -> None:
        """The page's routes, and closing the scrape session when the app stops."""
        for path in FILES:
            app.router.add_get(path, self.page)
        app.on_cleanup.append(self._close)

    async def _close(self, _app: web.Application) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampling
        if self._session is not None:
            await self._session.close()

    async def page(self, request: web.Request) -> web.StreamResponse:
        body, kind = self._files[request.path]
        response = web.Response(body=body, content_type=kind, charset="utf-8")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- GET /v1/runs ---------------------------------------------------------------------------

    def recent(self, limit: int) -> list[Run]:
        """The runs created last, newest first; one still in flight as the gateway knows it now,
        including sync runs not on disk yet (runs.py writes those with their outcome)."""
        runs = [self.runs.active.get(run.id, run) for run in self.runs.store.recent(limit)]
        unstored = [run for run in self.runs.active.values() if not run.stored]
        # The store's rows come in the order they were first written, which puts a sync run that
        # was written with its outcome after runs created during it: sorted by creation here.
        return heapq.nlargest(limit, runs + unstored, key=lambda run: run.created_at)

    # -- GET /v1/status -------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        current = await self._sample()
        base = self._samples[0]
        window_s = current.at - base.at if base is not current else None
        pods = [_pod(pod) for pod in sorted(self.pool.pods.values(), key=lambda pod: pod.address)]
        active = collections.Counter(run.status for run in self.runs.active.values())
        return {
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "window_s": window_s,
            "task_pods": pods,
            "totals": {
                "task_pods": len(pods),
                "task_pods_up": sum(pod["state"] in ("up", "draining") for pod in pods),
                "workers_busy": sum(pod["workers"]["busy"] for pod in pods),
                "workers_idle": sum(pod["workers"]["idle"] for pod in pods),
                "queue_depth": sum(pod["queue_depth"] for pod in pods),
            },
            "runs": {
                "queued": active["queued"],
                "running": active["running"],
                "finished": {outcome: int(n) for outcome, n in sorted(current.finished.items())},
                "per_second": {
                    outcome: None if window_s is None else (n - base.finished.get(outcome, 0.0)) / window_s
                    for outcome, n in sorted(current.finished.items())
                },
            },
            "models": [
                {
                    "name": name,
                    "replicas": [
                        _replica(url, current.replicas[url], base.replicas.get(url), window_s) for url in urls
                    ],
                }
                for name, urls in sorted(self.config.models.items())
            ],
        }

    async def _sample(self) -> Sample:
        """The newest sample, taken now unless one is under MIN_SAMPLE_S old; concurrent callers share one."""
        if self._samples and time.monotonic() - self._samples[-1].at < MIN_SAMPLE_S:
            return self._samples[-1]
        if self._sampling is None or self._sampling.done():
            self._sampling = asyncio.get_running_loop().create_task(self._take_sample(), name="dashboard sample")
        return await asyncio.shield(self._sampling)

    async def _take_sample(self) -> Sample:
        urls = [url for replicas in self.config.models.values() for url in replicas]
        scraped = await asyncio.gather(*(self._scrape(url) for url in urls))
        sample = Sample(time.monotonic(), _finished_by_outcome(), dict(zip(urls, scraped, strict=True)))
        self._samples.append(sample)
        while sample.at - self._samples[0].at > RATE_WINDOW_S:
            self._samples.popleft()
        return sample

    async def _scrape(self, url: str) -> ReplicaSample | str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S))
        try:
            async with self._session.get(url + "/metrics") as response:
                if response.status != 200:
                    return f"/metrics answered HTTP {response.status}"
                data = await response.content.read(MAX_METRICS_BYTES + 1)
        except TimeoutError:
            return f"/metrics did not answer within {SCRAPE_TIMEOUT_S:g} s"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc}"
        if len(data) > MAX_METRICS_BYTES:
            return f"/metrics is over {MAX_METRICS_BYTES} bytes: not a model server's"
        try:
            return _parse(data.decode("utf-8", errors="replace"))
        except ValueError as exc:
            return f"/metrics is not Prometheus text: {exc}"


def _finished_by_outcome() -> dict[str, float]:
    """Runs finished since the gateway started, by outcome (summed over tasks), from its own counter."""
    counts: dict[str, float] = collections.defaultdict(float)
    metrics.publish()
    for family in metrics.RUNS_FINISHED.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["outcome"]] += sample.value
    return dict(counts)


def _parse(text: str) -> ReplicaSample:
    replica = ReplicaSample()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REPLICA_REQUESTS:
                replica.requests += sample.value
            elif sample.name == REPLICA_BATCH_SIZE + "_count":
                replica.batches += sample.value
            elif sample.name == REPLICA_BATCH_SIZE + "_sum":
                replica.batch_inputs += sample.value
            elif sample.name == REPLICA_BATCH_SIZE + "_bucket" and "le" in sample.labels:
                replica.batch_buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == REPLICA_QUEUE_DEPTH:
                replica.queue_depth += sample.value
            elif sample.name == REPLICA_IN_FLIGHT:
                replica.in_flight += sample.value
    return replica


def _pod(pod: Pod) -> dict[str, Any]:
    if pod.refused is not None:
        state = "refused"
    elif not pod.up:
        state = "down"
    else:
        state = "draining" if pod.draining else "up"
    up = state in ("up", "draining")  # a pod's last numbers are stale once it stops answering
    return {
        "address": pod.address,
        "state": state,
        "workers": {
            "busy": max(pod.workers - pod.idle_workers, 0) if up else 0,
            "idle": pod.idle_workers if up else 0,
        },
        "queue_depth": pod.queue_depth if up else 0,
        "runs_in_flight": len(pod.in_flight),
        "last_pong_s_ago": round(time.monotonic() - pod.last_pong, 3) if pod.last_pong else None,
    }


def _replica(
    url: str, now: ReplicaSample | str, then: ReplicaSample | str | None, window_s: float | None
) -> dict[str, Any]:
    if isinstance(now, str):
        return {"url": url, "up": False, "error": now}
    # A replica that restarted counts from zero again: no rate across the restart.
    base = then if isinstance(then, ReplicaSample) and then.requests <= now.requests else None
    batches = now.batches - base.batches if base is not None else None
    return {
        "url": url,
        "up": True,
        "requests": int(now.requests),
        "requests_per_s": None if base is None or not window_s else (now.requests - base.requests) / window_s,
        "batches": int(now.batches),
        "batches_per_s": None if batches is None or not window_s else batches / window_s,
        "mean_batch_size": (
            (now.batch_inputs - base.batch_inputs) / batches
            if base is not None and batches
            else (now.batch_inputs / now.batches if now.batches else None)
        ),
        "batch_sizes": _batch_sizes(now.batch_buckets),
        "queue_depth": int(now.queue_depth),
        "requests_in_flight": int(now.in_flight),
    }


def _batch_sizes(cumulative: dict[float, float]) -> list[dict[str, Any]]:
    """The histogram's buckets as batches per size range (not cumulative): [{"up_to": 4, "batches": n}]."""
    sizes = []
    below = 0.0
    for bound, count in sorted(cumulative.items()):
        if count > below:
            sizes.append({"up_to": None if math.isinf(bound) else int(bound), "batches": int(count - below)})
        below = count
    return sizes
