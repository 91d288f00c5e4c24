"""The systems under measurement, behind one shape: `call(task, *args)` and `burst(count)`.

Each `*_system` context manager starts the servers, waits for their readiness signal (never a
fixed sleep), yields a `System`, and on exit stops every process it started, recording how the
stop went in `System.info`. `alternate` measures several systems round by round, taking turns.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _floor import FloorClient, RawDealer
from _neutrino import Orchestrator, burst, log_problems, map_burst, wait_ready
from _procs import Processes, free_tcp_port, log, session_cpu_s

FLOOR_READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0  # a lost reply fails the measurement instead of hanging it
FLOOR_SHAPE = "client DEALER -> zmq.proxy ROUTER/DEALER (C, own process) -> worker ROUTER x N; HWM 0 (unbounded)"


@dataclass
class System:
    name: str
    call: Callable[..., Any]
    burst: Callable[[int], dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # Other ways to push a burst through the same servers, by name (client-side throughput).
    bursts: dict[str, Callable[[int], dict[str, Any]]] = field(default_factory=dict)
    # CPU seconds the system's own processes have used so far (None: not known).
    server_cpu_s: Callable[[], float] | None = None


@contextlib.contextmanager
def floor_system(procs: Processes, workdir: Path, workers: int) -> Iterator[System]:
    log("floor: starting zmq.proxy and workers")
    frontend = f"tcp://127.0.0.1:{free_tcp_port()}"
    backend = f"ipc://{workdir}/floor-backend.sock"
    script = [sys.executable, str(Path(__file__).with_name("_floor.py"))]
    servers = [procs.spawn([*script, "proxy", frontend, backend])]
    servers += [procs.spawn([*script, "worker", backend]) for _ in range(workers)]
    client = FloorClient(frontend)
    system = System("floor", client.call, client.burst, {"setup": FLOOR_SHAPE, "workers": workers})
    try:
        client.wait_for_workers(workers, FLOOR_READY_TIMEOUT_S)
        yield system
    finally:
        client.close()
        stops = [procs.stop(proc) for proc in servers]
        system.info["orphans"] = [pid for stop in stops for pid in stop["orphans"]]


@contextlib.contextmanager
def neutrino_system(
    procs: Processes, orch_args: dict[str, Any], name: str = "neutrino", client_kwargs: dict[str, Any] | None = None
) -> Iterator[System]:
    """`client_kwargs` go to `neutrino.Client` (e.g. CURVE keys, with the matching orch_args extra_args)."""
    from neutrino import Client

    orch = Orchestrator(procs, **orch_args)
    log(f"{name}: started {' '.join(orch.argv)}")
    client = Client(orch.endpoint, timeout_s=CALL_TIMEOUT_S, **(client_kwargs or {}))
    system = System(name, client.call, lambda count: burst(client, count), {"command": " ".join(orch.argv)})
    system.server_cpu_s = lambda: session_cpu_s(orch.proc.pid)  # the orchestrator, its zygote and workers
    raw = None if client_kwargs else RawDealer(orch.endpoint, CALL_TIMEOUT_S)  # plain text only
    if raw is not None:
        system.bursts = {
            "raw_dealer": raw.burst,
            "submit": system.burst,
            "map": lambda count: map_burst(client, count),
        }
    try:
        ready_s = wait_ready(client, orch, orch_args["workers"])
        system.info["ready_ms"] = round(ready_s * 1000, 1)
        log(f"{name}: {orch_args['workers']} workers ready after {ready_s * 1000:.0f} ms")
        yield system
        system.info["pong_after"] = client.ping()
    finally:
        client.close()
        if raw is not None:
            raw.close()
        system.info["stop"] = orch.stop()
        log_text = orch.log_path.read_text(errors="replace") if orch.log_path.exists() else ""
        system.info["ready_line_logged"] = "Orchestrator ready with" in log_text
        system.info["log_problems"] = log_problems(orch.log_path)


def alternate(systems: list[System], rounds: int, once: Callable[[System, int], Any]) -> dict[str, list[Any]]:
    """`once(system, round_no)` for each system, `rounds` times, alternating systems (ABBA...) so that
    load from elsewhere on the machine falls on both alike. A system that raises is dropped, its error kept."""
    results: dict[str, list[Any]] = {system.name: [] for system in systems}
    for round_no in range(rounds):
        for system in systems if round_no % 2 == 0 else systems[::-1]:
            if system.error:
                continue
            gc.collect()
            try:
                results[system.name].append(once(system, round_no))
            except Exception as exc:
                log(f"{system.name} failed:")
                traceback.print_exc(file=sys.stderr)
                system.error = f"{type(exc).__name__}: {exc}"
    return results
