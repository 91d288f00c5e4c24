"""End to end: tasks on real workers (real orchestrator binary) calling the `digits` model on two real
model-server replicas, through `app.models.digits.predict(...)` and NEUTRINO_MODEL_DIGITS_URL."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from neutrino import Client, TaskError
from neutrino_model_server.testing import ServerProcess, model_replicas

from .conftest import ROOT, Orchestrator

APP = "examples.models.app:app"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerProcess]]:
    with model_replicas(APP, "digits", 2, cwd=ROOT) as servers:
        yield servers


def direct(url: str, images: list[list[float]]) -> list[int]:
    """The model's answer straight from a replica, through the V2 infer endpoint."""
    body = {"inputs": [{"name": "pixels", "shape": [len(images), 64], "datatype": "FP32", "data": images}]}
    req = urllib.request.Request(url + "/v2/models/digits/infer", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        data: list[int] = json.loads(resp.read())["outputs"][0]["data"]
    return data


def test_tasks_get_the_same_answer_as_direct_inference(
    replicas: list[ServerProcess], start: Callable[..., Orchestrator]
) -> None:
    from sklearn.datasets import load_digits

    images: list[list[Any]] = load_digits().data[:48].tolist()
    urls = ",".join(r.url for r in replicas)
    orch = start(workers=2, app=APP, env={"NEUTRINO_MODEL_DIGITS_URL": urls})
    expected = direct(replicas[0].url, images)
    with Client(orch.address) as client:
        futures = [client.submit("classify_digit", image) for image in images]  # sync tasks, 2 workers
        assert [f.result(60) for f in futures] == expected
        assert client.call("classify_digits", images) == expected  # async task: 48 calls at once
        with pytest.raises(TaskError) as info:
            client.call("classify_digit", [1.0, 2.0])
        assert info.value.type == "ModelInputError" and "64 pixel values" in info.value.message
    # The async task's 48 concurrent calls met in the replicas' batchers.
    batches = inputs = 0.0
    for r in replicas:
        text = urllib.request.urlopen(r.url + "/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("neutrino_model_batch_size_count"):
                batches += float(line.split()[-1])
            elif line.startswith("neutrino_model_batch_size_sum"):
                inputs += float(line.split()[-1])
    assert inputs > batches, f"{inputs} inputs in {batches} batches: nothing was batched"


def test_killing_a_replica_under_load_loses_no_task(start: Callable[..., Orchestrator]) -> None:
    from sklearn.datasets import load_digits

    with model_replicas(APP, "digits", 2, cwd=ROOT) as servers:
        images: list[list[Any]] = load_digits().data[:200].tolist()
        expected = direct(servers[1].url, images)
        urls = ",".join(s.url for s in servers)
        orch = start(workers=2, app=APP, env={"NEUTRINO_MODEL_DIGITS_URL": urls})
        with Client(orch.address) as client:
            futures = [client.submit("classify_digit", image) for image in images]
            futures[20].result(60)  # load is flowing through both replicas
            servers[0].proc.kill()  # SIGKILL, mid-stream: the model client retries the other replica
            assert [f.result(60) for f in futures] == expected
