"""An app whose import builds a large heap of small objects the garbage collector tracks.

It stands in for an app that imports a big library or loads a model's vocabulary: millions of
small lists, each its own allocation with a GC header, spread over the whole heap. Forked
workers share those pages copy-on-write only as long as nothing writes to them, and a garbage
collection in a worker writes to every object it scans; the zygote's gc.freeze() is what keeps
the collector away from them. (One big bytes or array object would share trivially.)

The heap grows until the resident set of this process has grown by `NEUTRINO_BENCH_IMPORT_MB`
(default 400), measured, not estimated, so the size holds across Python versions.
"""

from __future__ import annotations

import gc
import os
import time

from neutrino import App

IMPORT_MB_ENV = "NEUTRINO_BENCH_IMPORT_MB"
DEFAULT_IMPORT_MB = 400
CHUNK_OBJECTS = 100_000  # lists built between two looks at the resident set size
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

app = App("big")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _build(target_bytes: int) -> tuple[list[list[list[int]]], int]:
    """Chunks of small lists until the process has grown by `target_bytes`; returns them and the growth."""
    start = _rss_bytes()
    chunks: list[list[list[int]]] = []
    count = 0
    while _rss_bytes() - start < target_bytes:
        # Small ints are shared singletons: the memory is the lists themselves, each one tracked by the GC.
        chunks.append([[i & 0xFF, (i >> 8) & 0xFF] for i in range(count, count + CHUNK_OBJECTS)])
        count += CHUNK_OBJECTS
    return chunks, _rss_bytes() - start


_started = time.perf_counter()
HEAP, _grown = _build(int(os.environ.get(IMPORT_MB_ENV, DEFAULT_IMPORT_MB)) * 2**20)
IMPORT_INFO = {
    "import_mb": round(_grown / 2**20, 1),
    "objects": sum(len(chunk) for chunk in HEAP) + len(HEAP),
    "build_s": round(time.perf_counter() - _started, 2),
    "gc_tracked": gc.is_tracked(HEAP[0][0]),
}


@app.task()
def collect() -> int:
    """Run a full garbage collection in this worker; returns its pid."""
    gc.collect()
    return os.getpid()


@app.task()
def noop() -> None:
    """Does nothing."""


@app.task()
def info() -> dict[str, object]:
    """What the import built: measured growth of the resident set, object count, build time."""
    return {**IMPORT_INFO, "pid": os.getpid()}
