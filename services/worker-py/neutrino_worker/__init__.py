"""Neutrino worker runtime: the zygote (pre-fork template) and the worker loop that runs task functions.

# Layout

- `zygote.py`   entry point (`python -m neutrino_worker.zygote`): import the app, serve the control link, fork
- `config.py`   the command line and NEUTRINO_LOG, read once
- `loader.py`   "module:attr" -> `neutrino.App`, every failure as a reportable `ErrorInfo`
- `control.py`  length-prefixed control messages (and payload records) over the Unix socket
- `children.py` live workers by pid: reaping and stopping them
- `catalog.py`  when the zygote builds the task catalog (after the first forks) and what it sends
- `worker.py`   the forked child: shed the zygote's state, DEALER to the backend, the receive loop
- `heartbeat.py` the worker's side thread that sends `Heartbeat`s on its own socket
- `runner.py`   one assignment in, one `TaskResult` out (the per-task hot path)
"""
