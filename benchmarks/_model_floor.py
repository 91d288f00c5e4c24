"""Reference servers for models.py, on uvloop like the model server; each logs "listening on http://H:P".

    python _model_floor.py bare PORT       # POST /v1/models/{name}/predict -> {"outputs": inputs}: aiohttp's floor
    python _model_floor.py batcher PORT    # the digits model behind a hand-written batcher (32 / 2 ms)

The hand-written batcher is what one writes in an afternoon: an asyncio.Queue, a loop that takes
the first request and then whatever else arrives within 2 ms (up to 32), one predict call per
batch in a thread, results handed back by future. No validation, no metrics, no deadlines.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aiohttp import web

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    if mode == "bare":

        async def predict(request: web.Request) -> web.Response:
            doc = json.loads(await request.read())
            return web.json_response({"outputs": doc["inputs"]})

    else:
        from examples.models.app import Digits

        model = Digits()
        model.load()
        queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()

        async def batch_loop() -> None:
            loop = asyncio.get_running_loop()
            while True:
                batch = [await queue.get()]
                until = time.monotonic() + 0.002
                while len(batch) < 32:
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), until - time.monotonic()))
                    except TimeoutError:
                        break
                outs = await loop.run_in_executor(None, model.predict, [x for x, _ in batch])
                for (_, fut), out in zip(batch, outs, strict=True):
                    fut.set_result(out)

        async def start(app: web.Application) -> None:
            app["loop_task"] = asyncio.get_running_loop().create_task(batch_loop())

        app.on_startup.append(start)

        async def predict(request: web.Request) -> web.Response:
            doc = json.loads(await request.read())
            fut = asyncio.get_running_loop().create_future()
            await queue.put((doc["inputs"], fut))
            return web.json_response({"outputs": await fut})

    app.router.add_post("/v1/models/{name}/predict", predict)
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    import uvloop

    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
