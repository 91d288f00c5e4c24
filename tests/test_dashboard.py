"""The gateway's /dashboard in a real browser (Debian's chromium, driven by Playwright), and the JSON it
polls (`GET /v1/status`, `GET /v1/runs`), against a real gateway, orchestrator, workers and model
server: the page asks for the token, its numbers move once runs are submitted, and a failed run shows
its error in the detail view. The test saves screenshots in its tmp dir, and in
$NEUTRINO_SCREENSHOT_DIR when that is set.
"""

from __future__ import annotations

import functools
import http.server
import math
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from neutrino_gateway import dashboard
from neutrino_model_server.testing import ServerProcess, model_replicas

from .conftest import ROOT, Orchestrator, free_port, start_orchestrator, wait_until
from .gateway_harness import TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(180)

APP = "tests.apps.dashboard_app:app"
CHROMIUM = "/usr/bin/chromium"
WORKERS = 2


@dataclass
class Stack:
    gateway: Gateway
    orchestrator: Orchestrator
    replica: ServerProcess
    pod: str  # the task pod's address, as the gateway has it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with model_replicas(APP, "doubler", 1, cwd=ROOT) as (replica,):
        pod = f"tcp://127.0.0.1:{free_port()}"
        orch = start_orchestrator(
            "--frontend", pod, workers=WORKERS, app=APP, env={"NEUTRINO_MODEL_DOUBLER_URL": replica.url}
        )
        try:
            db = tmp_path_factory.mktemp("dashboard") / "runs.db"
            gateway = start_gateway([pod], db, "--model", f"doubler={replica.url}")
            try:
                yield Stack(gateway, orch, replica, pod)
            finally:
                gateway.stop()
        finally:
            orch.stop()


def status(stack: Stack) -> dict[str, Any]:
    reply = stack.gateway.request("GET", "/v1/status")
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json
    return body


def submit(stack: Stack, task: str, body: dict[str, Any], wait: float = 30) -> Any:
    return stack.gateway.request("POST", f"/v1/tasks/{task}?wait={wait:g}", body)


# -- the JSON ------------------------------------------------------------------------------------


def test_the_page_loads_without_a_token_and_the_numbers_need_one(stack: Stack) -> None:
    page = stack.gateway.request("GET", "/dashboard", auth=False)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    for asset, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        reply = stack.gateway.request("GET", f"/dashboard/{asset}", auth=False)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith(kind)
        # Nothing from a CDN: no URL the browser would load, in any of the files.
        assert not re.search(rb"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", reply.body + page.body)
    for path in ("/v1/status", "/v1/runs"):
        assert stack.gateway.request("GET", path, auth=False).status == 401
        bad = stack.gateway.request("GET", path, headers={"Authorization": "Bearer wrong"})
        assert bad.status == 401 and bad.json["error"]["type"] == "unauthorized"
    # Basic auth stays for /docs and /openapi.json only.
    basic = stack.gateway.request("GET", "/v1/status", headers={"Authorization": "Basic OnRlc3QtdG9rZW4="})
    assert basic.status == 401


def test_status_counts_pods_workers_runs_and_model_batches(stack: Stack) -> None:
    first = status(stack)
    (pod,) = first["task_pods"]
    assert pod["address"] == stack.pod and pod["state"] == "up"
    assert pod["workers"]["busy"] + pod["workers"]["idle"] == WORKERS
    assert first["totals"]["task_pods_up"] == 1
    before = first["runs"]["finished"]
    (model,) = first["models"]
    assert model["name"] == "doubler" and model["replicas"][0]["url"] == stack.replica.url
    requests_before = model["replicas"][0]["requests"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: submit(stack, "double", {"x": x}), range(16)))
    assert [a.json["result"] for a in answers] == [2 * x for x in range(16)]
    failed = submit(stack, "fail", {"message": "status boom"})
    assert failed.status == 500

    def counted() -> bool:
        now = status(stack)
        finished = now["runs"]["finished"]
        return (
            finished.get("ok", 0) >= before.get("ok", 0) + 16
            and finished.get("task_error", 0) >= before.get("task_error", 0) + 1
            and now["window_s"] is not None
        )

    wait_until(counted, timeout=30, what="the finished runs counted")
    now = status(stack)
    assert now["runs"]["per_second"]["ok"] > 0 and now["runs"]["per_second"]["task_error"] > 0
    replica = now["models"][0]["replicas"][0]
    assert replica["up"] and replica["requests"] >= requests_before + 16
    assert replica["batches"] >= 1 and replica["mean_batch_size"] >= 1
    assert sum(size["batches"] for size in replica["batch_sizes"]) == replica["batches"]
    # Every series the gateway reads is one the model server serves (a rename would leave zeros).
    with urllib.request.urlopen(stack.replica.url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for series in (
        dashboard.REPLICA_REQUESTS,
        dashboard.REPLICA_BATCH_SIZE + "_bucket",
        dashboard.REPLICA_QUEUE_DEPTH,
        dashboard.REPLICA_IN_FLIGHT,
    ):
        assert re.search(rf"^{series}{{", text, re.MULTILINE), (series, text)

    runs = stack.gateway.request("GET", "/v1/runs?limit=3").json["runs"]
    assert len(runs) == 3 and runs[0]["task"] == "fail" and runs[0]["status"] == "failed"
    assert runs[0]["error"]["message"] == "status boom" and runs[0]["error"]["kind"] == "task_error"
    assert all("result" not in run for run in runs)  # GET /v1/runs/{id} has it
    assert runs[1]["status"] == "succeeded" and runs[0]["created_at"] >= runs[1]["created_at"]


@pytest.mark.parametrize("limit", ["0", "501", "x", "1.5", "1e400"])
def test_a_bad_limit_is_a_422(stack: Stack, limit: str) -> None:
    reply = stack.gateway.request("GET", f"/v1/runs?limit={limit}")
    assert reply.status == 422 and reply.json["error"]["detail"][0]["loc"] == ["query", "limit"], reply.body


def test_replicas_that_cannot_be_read_are_shown_with_why(tmp_path: Path, stack: Stack) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    # Some other web server at a replica's address: its /metrics is a 404.
    other = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=other.serve_forever, daemon=True).start()
    not_a_model = f"http://127.0.0.1:{other.server_address[1]}"
    # With --no-auth (what `neutrino dev` runs) the numbers need no token either.
    gateway = start_gateway([stack.pod], tmp_path / "runs.db", "--model", f"gone={closed},{not_a_model}", token=None)
    try:
        assert gateway.request("GET", "/v1/runs", auth=False).status == 200
        (model,) = status_of(gateway)["models"]
        unreachable, missing = model["replicas"]
        assert unreachable == {"url": closed, "up": False, "error": unreachable["error"]}
        assert unreachable["error"].startswith("unreachable: "), unreachable
        assert missing == {"url": not_a_model, "up": False, "error": "/metrics answered HTTP 404"}
    finally:
        gateway.stop()
        other.shutdown()
        other.server_close()


def status_of(gateway: Gateway) -> dict[str, Any]:
    body: dict[str, Any] = gateway.request("GET", "/v1/status").json
    return body


# -- the page, in chromium -------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make setup does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def save(page: Any, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if directory := os.environ.get("NEUTRINO_SCREENSHOT_DIR"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(directory) / name)


def number(page: Any, selector: str) -> float:
    """A number the page shows (NaN for "-"). Read from Python: the page's CSP (script-src 'self')
    refuses the string evaluation that Playwright's wait_for_function uses."""
    text = page.text_content(selector) or ""
    try:
        return float(text)
    except ValueError:
        return math.nan


def shows(page: Any, selector: str, predicate: Callable[[str], bool], what: str) -> None:
    wait_until(lambda: predicate(page.text_content(selector) or ""), timeout=20, what=what)


def test_the_dashboard_in_a_browser(stack: Stack, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    # Script errors; not the 401 of the wrong token, which chromium logs as a failed load.
    page.on(
        "console",
        lambda message: (
            problems.append(message.text) if message.type == "error" and "401" not in message.text else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{stack.url}/dashboard")

    # No token yet: the page asks for one; a wrong one is refused, the right one lets it in.
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", "wrong")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#token-why:has-text('refused')")
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#main:not([hidden])")
    page.wait_for_selector(f"#pods tr[data-address='{stack.pod}'] .state-up")
    page.wait_for_selector("#models tr[data-model='doubler'] .state-up")
    finished = number(page, "#t-finished")

    # Two runs that hold both workers, runs that call the model, and some that fail: the numbers move.
    holding = [submit(stack, "hold", {"seconds": 4.0}, wait=0) for _ in range(WORKERS)]
    shows(page, "#t-workers", lambda text: text.startswith(f"{WORKERS} /"), "every worker busy")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda x: submit(stack, "double", {"x": x}), range(24)))
    failing = [submit(stack, "fail", {"message": f"dashboard boom {i}"}) for i in range(2)]
    assert all(reply.status == 500 for reply in failing)
    for reply in holding:
        stack.gateway.request("GET", f"/v1/runs/{reply.json['id']}?wait=30")
    total = finished + len(failing) + len(holding) + 24
    wait_until(lambda: number(page, "#t-finished") >= total, timeout=20, what="the finished runs counted")
    wait_until(lambda: number(page, "#t-rate") > 0, timeout=20, what="a rate above 0")
    page.wait_for_selector("#rates-legend li[data-outcome='ok']")
    page.wait_for_selector("#rates-legend li[data-outcome='task_error']")
    replica = "#models tr[data-model='doubler']"
    wait_until(lambda: number(page, f"{replica} .requests") >= 24, timeout=20, what="the model's requests counted")
    assert number(page, f"{replica} .mean-batch") >= 1
    page.wait_for_selector("#runs tr[data-status='succeeded']")
    save(page, tmp_path, "dashboard.png")

    # A failed run's error, in the detail view.
    row = page.locator("#runs tr[data-status='failed']").first
    row.click()
    page.wait_for_selector("#run-detail[open]")
    assert page.text_content("#detail-error-type") == "ValueError"
    assert re.fullmatch(r"dashboard boom \d", page.text_content("#detail-error-message") or "")
    assert "task_error" in (page.text_content("#detail-error-kind") or "")
    assert page.is_hidden("#detail-result")
    save(page, tmp_path, "dashboard-failed-run.png")
    page.click("#detail-close")
    page.wait_for_selector("#run-detail:not([open])", state="attached")

    # A succeeded run shows its result.
    page.locator("#runs tr[data-status='succeeded']").first.click()
    page.wait_for_selector("#detail-result:not([hidden])")
    assert page.is_hidden("#detail-error")
    assert problems == [], problems


def test_the_token_from_the_link_is_kept_out_of_the_address_bar(stack: Stack, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{stack.url}/dashboard#token={TOKEN}")
    page.wait_for_selector("#main:not([hidden])")
    assert page.url == f"{stack.url}/dashboard"
    page.reload()  # the tab keeps it
    page.wait_for_selector("#main:not([hidden])")
    page.click("#forget-token")
    page.wait_for_selector("#token-form:not([hidden])")
    page.reload()
    page.wait_for_selector("#token-form:not([hidden])")
    assert page.is_hidden("#main")
