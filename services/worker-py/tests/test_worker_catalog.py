"""neutrino_worker.catalog: when the zygote builds the task catalog, and what it sends."""

from __future__ import annotations

import logging

import msgpack
import pytest
from neutrino import App
from neutrino_worker import catalog as catalog_module
from neutrino_worker.catalog import LATEST_S, QUIET_S, CatalogTimer, build_catalog


def test_timer_waits_for_a_quiet_link_after_the_first_fork() -> None:
    timer = CatalogTimer(now=100.0)
    assert timer.wait_ms(100.0) == round(LATEST_S * 1000)
    assert not timer.due(100.0, quiet=False)
    assert not timer.due(100.1, quiet=True), "quiet before any Fork: the initial Forks are still coming"
    timer.forked()
    assert timer.wait_ms(100.1) == round(QUIET_S * 1000)
    assert not timer.due(100.1, quiet=False), "messages still arriving"
    assert timer.due(100.12, quiet=True)
    timer.done()
    assert timer.wait_ms(100.2) is None and not timer.due(100.2, quiet=True)


def test_timer_builds_by_the_deadline_without_forks() -> None:
    timer = CatalogTimer(now=0.0)
    assert timer.wait_ms(LATEST_S - 0.25) == 250
    assert timer.due(LATEST_S, quiet=False)
    assert timer.wait_ms(LATEST_S + 1) == 0


def test_build_packs_the_apps_catalog() -> None:
    app = App("t")

    @app.task()
    def add(x: int, y: int) -> int:
        return x + y

    msg = build_catalog(app)
    assert msg.tasks == ["add"] and msg.build_ms >= 0
    assert msg.payload is not None
    assert msgpack.unpackb(msg.payload, raw=False) == app.catalog()


def test_a_failing_build_sends_an_empty_catalog(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(App):
        def catalog(self) -> dict[str, dict[str, object]]:
            raise RuntimeError("no schemas today")

    with caplog.at_level(logging.ERROR, logger="neutrino.zygote"):
        msg = build_catalog(Broken("b"))
    assert (msg.tasks, msg.payload) == ([], b"\x80")
    assert "RuntimeError: no schemas today" in caplog.text


def test_a_catalog_over_the_payload_limit_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("t")
    app.add_task(lambda: None, name="noop")
    monkeypatch.setattr(catalog_module, "CONTROL_MAX_PAYLOAD_BYTES", 10)
    msg = build_catalog(app)
    assert (msg.tasks, msg.payload) == ([], b"\x80")
