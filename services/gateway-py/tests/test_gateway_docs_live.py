"""The /docs page, browser access to it, and bodies sent with curl's default type: a real gateway in
front of a real task pod running the example models app, and a real replica of its `digits` model.

Every curl line the page shows is run as written, by a shell, against the live gateway."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from gateway_support import DIGITS_APP, ROOT, free_port
from neutrino_model_server.testing import ServerProcess

from tests.conftest import Orchestrator, start_orchestrator
from tests.gateway_harness import TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(120)
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def gateway(digits: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    pod: Orchestrator = start_orchestrator(
        "--frontend", tcp, workers=1, app=DIGITS_APP, env={"NEUTRINO_MODEL_DIGITS_URL": digits.url}
    )
    gw = start_gateway([tcp], tmp_path_factory.mktemp("docs") / "runs.db", "--model", f"digits={digits.url}")
    yield gw
    gw.stop()
    pod.stop()


class Page(HTMLParser):
    """The tags, links and code blocks of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.code: list[str] = []  # the text of each <pre><code> block
        self._in_pre = self._in_code = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("href", "src", "action", "srcset", "data") and value is not None:
                self.urls.append(value)
            if name == "id" and value:
                self.ids.add(value)
        if tag == "pre":
            self._in_pre = True
        if tag == "code" and self._in_pre:
            self._in_code = True
            self.code.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "code":
            self._in_code = False
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.code[-1] += data

    def curl_lines(self) -> list[str]:
        return [line for block in self.code for line in block.splitlines() if line.startswith("curl ")]


def raw_get(gw: Gateway, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    """A GET whose answer keeps repeated headers (WWW-Authenticate may come twice)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.getheaders(), reply.read()
    finally:
        conn.close()


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


def test_docs_is_one_self_contained_page_listing_every_task_and_model_route(gateway: Gateway) -> None:
    reply = gateway.request("GET", "/docs")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    page = Page(reply.body.decode())
    assert not page.tags & {"script", "link", "img", "iframe", "object", "embed", "form"}, page.tags
    assert all(url.startswith(("/", "#")) and not url.startswith("//") for url in page.urls), page.urls
    assert "/openapi.json" in page.urls
    tasks = [t["name"] for t in gateway.request("GET", "/v1/tasks").json["tasks"]]
    assert tasks and {f"task-{name}" for name in tasks} <= page.ids
    text = reply.body.decode()
    assert '"minItems": 64' in text  # the parameters' JSON Schema
    for route in (
        "/v1/models/{name}/predict",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
    ):
        assert route in text, route
    assert "model-digits" in page.ids


def test_every_curl_line_on_the_docs_page_works_when_pasted(gateway: Gateway) -> None:
    page = Page(gateway.request("GET", "/docs").body.decode())
    lines = [line for line in page.curl_lines() if "RUN_ID" not in line]
    tasks = gateway.request("GET", "/v1/tasks").json["tasks"]
    assert len(lines) == len(tasks) + 4, lines  # one per task; the model's metadata, ready, predict and infer
    for line in lines:
        assert line.startswith('curl -H "Authorization: Bearer $TOKEN" ') and f"127.0.0.1:{gateway.port}" in line
        done = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, timeout=60, env={**os.environ, "TOKEN": TOKEN}
        )
        assert done.returncode == 0, (line, done.stderr)
        answer = json.loads(done.stdout)
        assert "error" not in answer and answer.get("status", "succeeded") == "succeeded", (line, answer)
        if "/ready" in line:
            assert answer == {"name": "digits", "ready": True}
    # The run line, with a real run id in place of RUN_ID.
    run_id = gateway.request("POST", "/v1/tasks/ink?wait=0", {"pixels": [0] * 64}).json["id"]
    (poll,) = [line for line in page.curl_lines() if "RUN_ID" in line]
    done = subprocess.run(
        ["bash", "-c", poll.replace("RUN_ID", run_id)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKEN": TOKEN},
    )
    assert json.loads(done.stdout)["status"] == "succeeded", done.stdout


def test_a_browser_opens_docs_and_openapi_with_the_token_as_basic_password(gateway: Gateway) -> None:
    for path in ("/docs", "/openapi.json"):
        status, headers, _ = raw_get(gateway, path, {})
        challenges = [value for name, value in headers if name.lower() == "www-authenticate"]
        assert status == 401 and challenges[0].startswith("Basic ") and challenges[-1].startswith("Bearer "), headers
        assert raw_get(gateway, path, basic(TOKEN))[0] == 200, path
        assert raw_get(gateway, path, basic("wrong"))[0] == 401, path
        assert raw_get(gateway, path, {"Authorization": "Basic !!notbase64"})[0] == 401, path
    # Basic is for those two pages only: a browser would send it along with other sites' requests too.
    status, _, _ = raw_get(gateway, "/v1/tasks", basic(TOKEN))
    assert status == 401
    reply = gateway.request("POST", "/v1/tasks/ink", {"pixels": [0] * 64}, headers=basic(TOKEN))
    assert reply.status == 401


def test_a_json_body_sent_as_curls_form_type_is_read_and_a_real_form_is_415(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/ink", raw=json.dumps({"pixels": [16] * 64}).encode(), content_type=FORM)
    assert reply.status == 200 and reply.json["result"] == 1.0, reply.body
    for raw in (b"pixels=1&pixels=2", b"[1, 2]", b"{not json", b'"text"'):
        reply = gateway.request("POST", "/v1/tasks/ink", raw=raw, content_type=FORM)
        assert reply.status == 415 and reply.json["error"]["type"] == "unsupported_media_type", (raw, reply.body)
    done = subprocess.run(  # curl itself, as a user types it
        ["curl", "-s", "-H", f"Authorization: Bearer {TOKEN}", "-d", json.dumps({"pixels": [0] * 64}),
         f"http://127.0.0.1:{gateway.port}/v1/tasks/ink"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(done.stdout)["result"] == 0.0, done.stdout


def test_a_post_from_a_page_on_another_site_is_refused(gateway: Gateway) -> None:
    body = {"pixels": [0] * 64}
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{gateway.port + 1}"):
        reply = gateway.request("POST", "/v1/tasks/ink", body, headers={"Origin": origin})
        assert reply.status == 403 and reply.json["error"]["type"] == "cross_origin", origin
    reply = gateway.request("POST", "/v1/tasks/ink", body, headers={"Origin": f"http://127.0.0.1:{gateway.port}"})
    assert reply.status == 200, reply.body


def test_docs_without_auth_and_before_any_task_pod(tmp_path: Path) -> None:
    gw = start_gateway([f"tcp://127.0.0.1:{free_port()}"], tmp_path / "runs.db", token=None, wait_ready=False)
    try:
        reply = gw.request("GET", "/docs")
        assert reply.status == 200 and "not known" in reply.body.decode() and "$TOKEN" not in reply.body.decode()
        assert "No model is configured" in reply.body.decode() or "looked for at" in reply.body.decode()
    finally:
        gw.stop()


def test_the_gateway_readme_curl_lines_work_when_pasted(digits: ServerProcess, tmp_path: Path) -> None:
    """services/gateway-py/README.md's curl lines, run by a shell as written, the port aside: a gateway in
    front of the quickstart app's task pod and the `digits` model, as the README sets them up."""
    readme = (ROOT / "services" / "gateway-py" / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("curl ")]
    assert len(lines) >= 5, lines
    tcp = f"tcp://127.0.0.1:{free_port()}"
    pod = start_orchestrator("--frontend", tcp, workers=1)
    gw = start_gateway([tcp], tmp_path / "runs.db", "--model", f"digits={digits.url}")
    try:
        for line in lines:
            pasted = line.replace("localhost:8000", f"localhost:{gw.port}")
            assert pasted != line, f"{line!r}: README curl lines call localhost:8000"
            done = subprocess.run(
                ["bash", "-c", pasted], capture_output=True, text=True, timeout=60, env={**os.environ, "TOKEN": TOKEN}
            )
            assert done.returncode == 0, (line, done.stderr)
            answer = json.loads(done.stdout)
            assert "error" not in answer, (line, answer)
    finally:
        gw.stop()
        pod.stop()
