"""HTTP load for gateway.py and models.py: the floor server, a one-connection latency client, and load generators.

Run as a script, in its own process:

    python _http_load.py floor                       # bare aiohttp server; logs "floor listening on http://H:P (loop)"
    python _http_load.py load URL --encoding json --connections 64 --start-at T --duration 5

Both run on uvloop when it is installed, as the gateway does. `floor` answers
`POST /v1/tasks/{name}` with a constant body shaped like the gateway's sync answer
(`{"id", "status": "succeeded", "result": null}`), as JSON or, for a msgpack request, msgpack:
the least an aiohttp server on this machine costs per request.

`load` is the Python load generator: keep-alive connections on asyncio Protocols (no HTTP client
library: raw HTTP/1.1 with Content-Length, so the generator spends as little CPU as it can), each
sending its next request as soon as the previous answer is in. It warms up until wall-clock
`--start-at`, then counts for `--duration` seconds and prints one JSON document on stdout with the
counters and every latency sample (ns). Several such processes may share one measurement window:
they agree on `--start-at`.

`generate_client` is the same load from aiohttp's client, as a Python caller sends it.

`wrk_script` writes the Lua script for the other generator, wrk, with the same request and the
same success test, and `parse_wrk` reads its result line.

An answer counts as ok when its status is 200 and its body holds `"status":"succeeded"` as the
gateway encodes it (compact JSON, or the msgpack string pair); anything else is counted by status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import msgpack

MSGPACK = "application/msgpack"
BODIES = {"json": b"{}", "msgpack": b"\x80"}  # the no-op task's empty arguments
CONTENT_TYPES = {"json": "application/json", "msgpack": MSGPACK}
SUCCEEDED = {"json": b'"status":"succeeded"', "msgpack": b"\xa6status\xa9succeeded"}
FLOOR_ID = "0123456789abcdef0123456789abcdef"  # the length of a gateway run id (uuid4 hex)
MAX_HEAD = 16384


def run(coro: Any) -> Any:
    """Run `coro` on uvloop when it is installed (the gateway does the same), else on asyncio's loop."""
    with asyncio.Runner(loop_factory=_uvloop()) as runner:
        return runner.run(coro)


def loop_name() -> str:
    return "uvloop" if _uvloop() else "asyncio"


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def request_bytes(url: str, encoding: str, token: str | None = None) -> bytes:
    """One complete keep-alive POST of the no-op task's arguments, ready to send as is."""
    return post_bytes(url, BODIES[encoding], CONTENT_TYPES[encoding], token)


def post_bytes(url: str, body: bytes, content_type: str, token: str | None = None) -> bytes:
    """One complete keep-alive POST of `body`, ready to send as is (the same bytes every time)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: {content_type}",
        f"Accept: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_head(buf: bytes | bytearray) -> tuple[int, int, int] | None:
    """(status, head length, body length) of the answer at the start of `buf`; None until the head is in."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ValueError("HTTP head too long")
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError(f"answer without Content-Length (chunked?): {head[:200]!r}")
    stop = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : stop if stop > 0 else len(head)])
    return status, end + 4, length


# ---------------------------------------------------------------- one connection, one request at a time


class KeepAliveClient:
    """Sequential requests over one keep-alive TCP connection, raw HTTP/1.1 (µs matter here)."""

    def __init__(self, url: str, encoding: str, token: str | None = None, timeout_s: float = 10.0):
        parts = urlsplit(url)
        self.encoding = encoding
        self.request = request_bytes(url, encoding, token)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def call(self) -> tuple[int, bytes]:
        """Send the request, return (status, body)."""
        self.sock.sendall(self.request)
        buf = self.buf
        while True:
            head = parse_head(buf)
            if head is not None and len(buf) >= head[1] + head[2]:
                status, start, length = head
                body = bytes(buf[start : start + length])
                del buf[: start + length]
                return status, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk

    def decode(self, body: bytes) -> Any:
        return msgpack.unpackb(body, raw=False) if self.encoding == "msgpack" else json.loads(body)

    def timed_calls(self, count: int) -> tuple[list[int], dict[str, int], list[str]]:
        """`count` sequential requests: round-trip times (ns) of the ok ones (a 200 with status
        succeeded), the others counted by kind ("HTTP 202 running"), and the first few of their bodies."""
        samples: list[int] = []
        errors: dict[str, int] = {}
        examples: list[str] = []
        clock = time.perf_counter_ns
        for _ in range(count):
            started = clock()
            status, body = self.call()
            elapsed = clock() - started
            try:
                answer = self.decode(body)
            except Exception:  # an HTML error page, a truncated body: counted below
                answer = None
            what = answer.get("status") if isinstance(answer, dict) else None
            if status == 200 and what == "succeeded":
                samples.append(elapsed)
                continue
            kind = f"HTTP {status} {what or 'undecodable'}"
            errors[kind] = errors.get(kind, 0) + 1
            if len(examples) < 3:
                examples.append(f"{kind}: {body[:300]!r}")
        return samples, errors, examples

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- the Python load generator


class _Counts:
    def __init__(self) -> None:
        self.recording = False
        self.stopping = False
        self.ok = 0
        self.bad_status: dict[int, int] = {}
        self.not_succeeded = 0
        self.errors: dict[str, int] = {}
        self.samples: list[int] = []

    def error(self, what: str) -> None:
        if self.recording:
            self.errors[what] = self.errors.get(what, 0) + 1

    def report(self, connections: int, warmup_missed: bool, measured_s: float, cpu_s: float) -> dict[str, Any]:
        """What a generator prints: the counts of the measured window, with how it went."""
        return {
            "connections": connections,
            "warmup_missed": warmup_missed,
            "measured_s": measured_s,
            "ok": self.ok,
            "bad_status": {str(k): v for k, v in sorted(self.bad_status.items())},
            "not_succeeded": self.not_succeeded,
            "errors": self.errors,
            "generator_cpu_s": round(cpu_s, 3),
            "latencies_ns": self.samples,
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read the whole answer, send again, until told to stop."""

    def __init__(self, request: bytes, succeeded: bytes, counts: _Counts, closed: asyncio.Future[None]):
        self.request = request
        self.succeeded = succeeded
        self.counts = counts
        self.closed = closed
        self.buf = bytearray()
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.counts.stopping:
            self.transport.close()
            return
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            head = parse_head(buf)
        except ValueError as exc:
            self.counts.error(f"bad answer: {exc}"[:120])
            self.transport.close()  # type: ignore[union-attr]
            return
        if head is None or len(buf) < head[1] + head[2]:
            return
        status, start, length = head
        elapsed = time.perf_counter_ns() - self.sent_at
        counts = self.counts
        if counts.recording:
            if status != 200:
                counts.bad_status[status] = counts.bad_status.get(status, 0) + 1
            elif buf.find(self.succeeded, start, start + length) < 0:
                counts.not_succeeded += 1
            else:
                counts.ok += 1
                counts.samples.append(elapsed)
        del buf[: start + length]
        if buf:
            counts.error("bytes after an answer")
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counts.stopping:
            self.counts.error(f"connection lost: {exc!r}"[:120])
        if not self.closed.done():
            self.closed.set_result(None)


async def generate(
    url: str, encoding: str, connections: int, start_at: float, duration_s: float, token: str | None
) -> dict[str, Any]:
    """Warm up until wall-clock `start_at`, count for `duration_s`, stop every connection."""
    request = request_bytes(url, encoding, token)
    return await generate_requests(url, request, SUCCEEDED[encoding], connections, start_at, duration_s)


async def generate_requests(
    url: str, request: bytes, succeeded: bytes, connections: int, start_at: float, duration_s: float
) -> dict[str, Any]:
    """`generate` for any request: each connection sends `request` again as soon as an answer is in;
    a 200 whose body holds `succeeded` counts as ok."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    counts = _Counts()
    closed: list[asyncio.Future[None]] = []
    transports = []
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()

        def protocol(done: asyncio.Future[None] = done) -> _Connection:
            return _Connection(request, succeeded, counts, done)

        transport, _proto = await loop.create_connection(protocol, host, port)
        closed.append(done)
        transports.append(transport)
    warmup_missed = time.time() > start_at  # connected too late: no warm-up before counting
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu_start, started = time.process_time(), time.perf_counter()
    counts.recording = True
    await asyncio.sleep(max(0.0, duration_s - (time.perf_counter() - started)))
    counts.recording = False
    measured_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_start
    counts.stopping = True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5.0):
            await asyncio.gather(*closed)
    for transport in transports:
        transport.abort()  # whatever did not answer in time
    return counts.report(connections, warmup_missed, measured_s, cpu_s)


async def generate_client(
    url: str, body: bytes, content_type: str, succeeded: bytes, connections: int, start_at: float, duration_s: float
) -> dict[str, Any]:
    """`generate_requests` from an HTTP client library instead (aiohttp's, as a Python caller of a
    model writes it: a session, `connections` calls in flight, each answer read whole). It costs
    several times the raw generator's CPU per request, which on a small machine takes CPU from the
    server: a server's own cost per request then weighs more, and arrivals trickle in rather than
    bunch, which is what a batcher sees from real Python callers. Same JSON document."""
    import aiohttp

    counts = _Counts()
    headers = {"Content-Type": content_type, "Accept": content_type}
    stop_at = start_at + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        while (now := time.time()) < stop_at:
            counts.recording = now >= start_at
            began = time.perf_counter_ns()
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    payload = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, OSError) as exc:
                counts.error(f"{type(exc).__name__}: {exc}"[:120])
                continue
            if not counts.recording:
                continue
            if status != 200:
                counts.bad_status[status] = counts.bad_status.get(status, 0) + 1
            elif succeeded not in payload:
                counts.not_succeeded += 1
            else:
                counts.ok += 1
                counts.samples.append(time.perf_counter_ns() - began)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        warmup_missed = time.time() > start_at
        cpu_start = time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        cpu_s = time.process_time() - cpu_start
    return counts.report(connections, warmup_missed, duration_s, cpu_s)


# ---------------------------------------------------------------- wrk


def wrk_script(encoding: str, token: str | None) -> str:
    """A Lua script for wrk: the same POST, the same success test, one JSON line from done()."""
    body = "".join(f"\\{byte}" for byte in BODIES[encoding])
    succeeded = "".join(f"\\{byte}" for byte in SUCCEEDED[encoding])
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    return f"""-- generated by benchmarks/_http_load.py
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "{CONTENT_TYPES[encoding]}"
wrk.headers["Accept"] = "{CONTENT_TYPES[encoding]}"
{auth}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; not_succeeded = 0; bad = 0; statuses = {{}} end
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
  elseif string.find(body, "{succeeded}", 1, true) then ok = ok + 1
  else not_succeeded = not_succeeded + 1 end
end
function done(summary, latency, requests)
  local ok_all, ns_all, bad_all, by_status = 0, 0, 0, {{}}
  for _, t in ipairs(threads) do
    ok_all = ok_all + t:get("ok"); ns_all = ns_all + t:get("not_succeeded"); bad_all = bad_all + t:get("bad")
    for status, n in pairs(t:get("statuses")) do by_status[status] = (by_status[status] or 0) + n end
  end
  local parts = {{}}
  for status, n in pairs(by_status) do table.insert(parts, string.format('"%d":%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"duration_us":%d,"requests":%d,"ok":%d,"not_succeeded":%d,"bad_status":%d,"by_status":{{%s}},' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"p50":%d,"p95":%d,"p99":%d,"mean":%.1f,"min":%d,"max":%d}}}}\\n',
    summary.duration, summary.requests, ok_all, ns_all, bad_all, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.min, latency.max))
end
"""


def parse_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            return result
    raise RuntimeError(f"no WRKJSON line in wrk's output: {stdout[-500:]!r}")


# ---------------------------------------------------------------- the floor server


def serve_floor(host: str, port: int) -> None:
    from aiohttp import web

    bodies = {
        "json": json.dumps({"id": FLOOR_ID, "status": "succeeded", "result": None}, separators=(",", ":")).encode(),
        "msgpack": msgpack.packb({"id": FLOOR_ID, "status": "succeeded", "result": None}),
    }

    async def run_task(request: web.Request) -> web.Response:
        await request.read()
        if request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", ""):
            return web.Response(body=bodies["msgpack"], content_type=MSGPACK)
        return web.Response(body=bodies["json"], content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/tasks/{name}", run_task)
        runner = web.AppRunner(app, access_log=None)  # as the gateway: no access log
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        print(f"floor listening on http://{bound[0]}:{bound[1]} ({loop_name()})", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    run(serve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    floor = sub.add_parser("floor", help="serve the bare aiohttp floor")
    floor.add_argument("--host", default="127.0.0.1")
    floor.add_argument("--port", type=int, default=0)
    load = sub.add_parser("load", help="the Python load generator; one JSON document on stdout")
    load.add_argument("url")
    load.add_argument("--encoding", choices=sorted(BODIES), default="json")
    load.add_argument("--connections", type=int, default=64)
    load.add_argument("--start-at", type=float, required=True, help="wall-clock time (time.time()) to start counting")
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--token", default=None)
    opts = parser.parse_args(argv)
    if opts.command == "floor":
        serve_floor(opts.host, opts.port)
        return 0
    result = run(generate(opts.url, opts.encoding, opts.connections, opts.start_at, opts.duration, opts.token))
    result["loop"] = loop_name()
    json.dump(result, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
