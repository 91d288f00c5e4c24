"""The metrics vocabulary (docs/metrics.md) through a real Prometheus: `promtool` checks and unit-tests
the rules in deploy/prometheus/, and Debian's `prometheus` scrapes a real orchestrator (with its
workers), a gateway and a model server started here; PromQL over its HTTP API then finds the series
and the values the known traffic must have left (N runs: the counters say N).

Readiness is each process's own signal, Prometheus's `/-/ready`, then the `timestamp()` of a scrape
that began after the traffic ended; never a fixed sleep.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from neutrino_model_server.testing import ServerProcess, start_model_server

from .conftest import ROOT, Orchestrator, free_port, http_ok, start_orchestrator, wait_until
from .gateway_harness import Gateway, start_gateway

pytestmark = pytest.mark.timeout(180)

RULES = ROOT / "deploy" / "prometheus"
MODEL_APP_DIR = ROOT / "services" / "model-server-py" / "tests"
SCRAPE_INTERVAL = "500ms"
ADDS, FAILS, PREDICTS = 7, 3, 4


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is missing: install Debian's `prometheus` package (apt-get install prometheus)")
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=RULES, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 13 rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", "rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_fails_a_rule_that_names_a_wrong_series(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with one renamed series do."""
    (tmp_path / "rules.yml").write_text(
        (RULES / "rules.yml").read_text().replace("neutrino_orchestrator_queue_depth >", "neutrino_queue_length >")
    )
    (tmp_path / "rules.test.yml").write_text((RULES / "rules.test.yml").read_text())
    done = subprocess.run(
        [tool("promtool"), "test", "rules", "rules.test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "NeutrinoQueueDepthGrowing" in done.stdout + done.stderr


@dataclass
class Prometheus:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query's result vector (`/api/v1/query`)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        """The one sample `promql` selects (fails, showing what came back, when there is not exactly one)."""
        result = self.query(promql)
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def scraped_since(self, job: str, since: float) -> bool:
        """Whether a scrape of `job` began after `since` (Unix seconds)."""
        result = self.query(f'timestamp(up{{job="{job}"}})')
        return bool(result) and all(float(r["value"][1]) > since for r in result)  # type: ignore[index]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Orchestrator, Gateway, ServerProcess, str, int]]:
    """A task pod (quickstart app: `add`, `fail`), the `echo` model server and a gateway in front of both."""
    pod = f"tcp://127.0.0.1:{free_port()}"
    metrics_port = free_port()
    orch = start_orchestrator("--frontend", pod, "--metrics", f"127.0.0.1:{metrics_port}", workers=2)
    model = start_model_server("model_server_app:app", "echo", app_dir=MODEL_APP_DIR, cwd=ROOT)
    gateway: Gateway | None = None
    try:
        model_url = model.wait_ready()
        gateway = start_gateway([pod], tmp_path / "runs.db", "--model", f"echo={model_url}")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), what="orchestrator /readyz")
        yield orch, gateway, model, pod, metrics_port
    finally:
        if gateway is not None:
            gateway.stop()
        model.stop()
        orch.stop()


@pytest.fixture
def prometheus(tmp_path: Path, stack: tuple[Orchestrator, Gateway, ServerProcess, str, int]) -> Iterator[Prometheus]:
    _, gateway, model, _, metrics_port = stack
    port = free_port()
    targets = {
        "orchestrator": f"127.0.0.1:{metrics_port}",
        "gateway": f"127.0.0.1:{gateway.port}",
        "model": model.url.removeprefix("http://"),
    }
    scrape = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']" for job, target in targets.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
        f"rule_files:\n  - {RULES / 'rules.yml'}\nscrape_configs:\n{scrape}\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({proc.returncode}):\n{log.read_text()}")
            return http_ok(server.url + "/-/ready")

        wait_until(ready, 60, "prometheus /-/ready")
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_the_stack_and_queries_find_the_traffic(
    stack: tuple[Orchestrator, Gateway, ServerProcess, str, int], prometheus: Prometheus
) -> None:
    _, gateway, _, pod, _ = stack
    # Two rounds, a scrape between them: the counters' series exist before the second round, so
    # rate() over them (the recording rules) sees its runs.
    for adds, fails, predicts in ((1, 1, 1), (ADDS - 1, FAILS - 1, PREDICTS - 1)):
        for i in range(adds):
            reply = gateway.request("POST", "/v1/tasks/add", {"x": i, "y": 1})
            assert reply.json["status"] == "succeeded", reply.body
        for _ in range(fails):
            reply = gateway.request("POST", "/v1/tasks/fail", {"message": "on purpose"})
            assert reply.status == 500 and reply.json["error"]["detail"]["kind"] == "task_error", reply.body
        for i in range(predicts):
            reply = gateway.request("POST", "/v1/models/echo/predict", {"inputs": i})
            assert reply.status == 200, reply.body
        sent = time.time()
        for job in ("orchestrator", "gateway", "model"):
            wait_until(lambda j=job, t=sent: prometheus.scraped_since(j, t), 30, f"a scrape of {job} after the runs")
            assert prometheus.value(f'up{{job="{job}"}}') == 1

    value = prometheus.value
    # The orchestrator answered every run (the gateway is its only client) and dispatched each once.
    assert value('neutrino_orchestrator_tasks_total{outcome="ok"}') == ADDS
    assert value('neutrino_orchestrator_tasks_total{outcome="task_error"}') == FAILS
    assert value("neutrino_orchestrator_queue_wait_seconds_count") == ADDS + FAILS
    assert value("neutrino_orchestrator_task_run_seconds_count") == ADDS + FAILS
    assert value("neutrino_orchestrator_queue_depth") == 0
    assert value('neutrino_orchestrator_workers{state="idle"}') == 2
    assert value('sum(neutrino_orchestrator_worker_exits_total{reason=~"crashed|start_failed"})') == 0
    # 24 time buckets and +Inf: microseconds to a minute.
    assert value("count(neutrino_orchestrator_queue_wait_seconds_bucket)") == 25
    # The gateway: runs by task and outcome (the same `outcome` values as the orchestrator's).
    assert value('neutrino_gateway_runs_accepted_total{task="add"}') == ADDS
    assert value('neutrino_gateway_runs_finished_total{task="add", outcome="ok"}') == ADDS
    assert value('neutrino_gateway_runs_finished_total{task="fail", outcome="task_error"}') == FAILS
    assert value('neutrino_gateway_run_seconds_count{task="add"}') == ADDS
    assert value('neutrino_gateway_requests_total{route="/v1/tasks/{name}", code="200"}') == ADDS
    assert value('neutrino_gateway_requests_total{route="/v1/tasks/{name}", code="500"}') == FAILS
    assert value("neutrino_gateway_runs_active") == 0
    assert value(f'neutrino_gateway_task_pod_up{{pod="{pod}"}}') == 1
    assert value(f'sum(neutrino_gateway_task_pod_workers{{pod="{pod}"}})') == 2
    assert value('neutrino_gateway_model_requests_total{model="echo", route="predict", code="200"}') == PREDICTS
    # The model server: the same calls, one input each.
    assert value('neutrino_model_requests_total{model="echo", route="predict", code="200"}') == PREDICTS
    assert value('neutrino_model_batch_size_sum{model="echo"}') == PREDICTS
    assert value('neutrino_model_queue_depth{model="echo"}') == 0
    assert value('neutrino_model_requests_in_flight{model="echo"}') == 0
    # The rules from deploy/prometheus loaded, and one of them computes over these series.
    with urllib.request.urlopen(prometheus.url + "/api/v1/rules", timeout=10) as reply:
        groups = json.loads(reply.read())["data"]["groups"]
    assert {g["name"]: len(g["rules"]) for g in groups} == {"neutrino.recording": 8, "neutrino.alerts": 5}
    # Second round: every `fail` run failed, no `add` run did.
    failed_ratio = 'task:neutrino_gateway_runs_failed:ratio_rate5m{task="fail"}'
    wait_until(lambda: prometheus.query(failed_ratio) != [] and value(failed_ratio) == 1, 30, "the failure ratio")
    assert value('task:neutrino_gateway_runs_failed:ratio_rate5m{task="add"}') == 0
