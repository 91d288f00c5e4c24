"""neutrino.models: @app.model registration, option checks at decoration time, replica URLs from configuration."""

from __future__ import annotations

from typing import Any

import pytest
from neutrino import App, Model
from neutrino.models import URL_TEMPLATE_ENV, model_url_env, service_name


class Echo:
    def load(self) -> None:
        self.loaded = True

    def predict(self, x: Any) -> Any:
        return x


def test_decorator_registers_and_returns_the_class() -> None:
    app = App("m")

    @app.model(name="digits", max_batch_size=32, batch_wait_ms=2, min_replicas=2, max_replicas=4)
    class Digits(Echo):
        pass

    model = app.models.digits
    assert isinstance(model, Model) and app.models["digits"] is model and list(app.models) == ["digits"]
    assert model.cls is Digits and model.batched and model.max_batch_size == 32 and model.batch_wait_ms == 2.0
    assert (model.min_replicas, model.max_replicas, model.max_concurrency) == (2, 4, 1)
    instance = Digits()  # still a plain class in unit tests
    instance.load()
    assert instance.predict(3) == 3
    assert app.add_model(Echo).name == "echo"  # default name: the class name in lower case
    assert app.models.echo.max_replicas == 1 and not app.models.echo.batched


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_batch": 4}, TypeError, r"undefined: max_batch \(did you mean 'max_batch_size'"),
        ({"max_batch_size": 0}, ValueError, "max_batch_size must be 1 or more"),
        ({"max_batch_size": 2.5}, TypeError, "max_batch_size must be an int"),
        ({"batch_wait_ms": -1}, ValueError, "batch_wait_ms must be between 0"),
        ({"batch_wait_ms": "5"}, TypeError, "batch_wait_ms must be a number"),
        ({"min_replicas": 3, "max_replicas": 2}, ValueError, "max_replicas .2. is below min_replicas .3."),
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be 1 or more"),
        ({"name": "a/b"}, ValueError, "URL path segment"),
    ],
)
def test_bad_options_fail_on_the_decorator_line(options: dict[str, Any], error: type[Exception], match: str) -> None:
    app = App("m")
    with pytest.raises(error, match=match):
        app.model(**options)


def test_the_class_must_have_load_and_predict() -> None:
    app = App("m")

    class NoLoad:
        def predict(self, x: Any) -> Any:
            return x

    class TwoArgs:
        def load(self) -> None: ...

        def predict(self, x: Any, y: Any) -> Any:
            return x

    with pytest.raises(TypeError, match=r"has no load\(\) method"):
        app.model()(NoLoad)
    with pytest.raises(TypeError, match="exactly one input"):
        app.model()(TwoArgs)
    with pytest.raises(TypeError, match="needs a class"):
        app.model()(lambda x: x)  # type: ignore[arg-type, type-var]
    with pytest.raises(TypeError, match=r"use @app\.model"):
        app.task(Echo)
    app.add_model(Echo)
    with pytest.raises(ValueError, match="already has a model named 'echo'"):
        app.add_model(Echo)


def test_replica_urls_from_configure_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("m")
    app.add_model(Echo, name="my-model")
    model = app.models["my-model"]
    assert model_url_env("my-model") == "NEUTRINO_MODEL_MY_MODEL_URL"
    monkeypatch.delenv("NEUTRINO_MODEL_MY_MODEL_URL", raising=False)
    with pytest.raises(LookupError, match="set NEUTRINO_MODEL_MY_MODEL_URL"):
        model.replica_urls()
    monkeypatch.setenv("NEUTRINO_MODEL_MY_MODEL_URL", "http://a:1, b:2/")
    assert model.replica_urls() == ("http://a:1", "http://b:2")
    app.configure_models({"my-model": ["http://c:3"]})
    assert model.replica_urls() == ("http://c:3",)
    with pytest.raises(KeyError, match="no model named 'other'"):
        app.configure_models({"other": "http://x:1"})
    with pytest.raises(AttributeError, match="no model named 'missing'"):
        app.models.missing  # noqa: B018


def test_url_template_is_the_fallback_and_service_names_are_dns_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert service_name("digits") == "neutrino-model-digits"
    assert service_name("My_Model.v2") == "neutrino-model-my-model-v2"
    assert len(service_name("x" * 100)) == 63
    app = App("m")
    app.add_model(Echo, name="My_Model")
    model = app.models["My_Model"]
    monkeypatch.delenv("NEUTRINO_MODEL_MY_MODEL_URL", raising=False)
    monkeypatch.setenv(URL_TEMPLATE_ENV, "http://{service}:8080")
    assert model.replica_urls() == ("http://neutrino-model-my-model:8080",)
    monkeypatch.setenv("NEUTRINO_MODEL_MY_MODEL_URL", "http://a:1")  # per model wins
    assert model.replica_urls() == ("http://a:1",)
