"""@app.model's resource options (cpu, memory, gpu) and `neutrino deploy render` (neutrino.deploy),
without kubectl: the manifests as data, the files written, the command's errors. The rendered
manifests are validated against Kubernetes' schemas in tests/test_k8s_manifests.py."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from neutrino import App
from neutrino import deploy as neutrino_deploy
from neutrino.deploy import DEFAULT_CPU, DEFAULT_MEMORY, main, model_manifests, render

pytestmark = pytest.mark.timeout(30)


class Echo:
    def load(self) -> None: ...

    def predict(self, x: Any) -> Any:
        return x


# -- the options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "stored"),
    [
        ({}, (None, None, 0)),
        ({"cpu": 0.5, "memory": "512Mi"}, ("500m", "512Mi", 0)),
        ({"cpu": 2, "memory": "2G", "gpu": 1}, ("2", "2G", 1)),
        ({"cpu": 1.25, "memory": "1.5Gi"}, ("1250m", "1.5Gi", 0)),
        ({"cpu": "250m", "memory": "1048576"}, ("250m", "1048576", 0)),
        ({"cpu": "0.1"}, ("0.1", None, 0)),
    ],
)
def test_resource_options_are_kept_as_kubernetes_quantities(options: dict[str, Any], stored: tuple[Any, ...]) -> None:
    app = App("m")
    app.model(name="m", **options)(Echo)
    model = app.models.m
    assert (model.cpu, model.memory, model.gpu) == stored
    assert {k: model.options()[k] for k in ("cpu", "memory", "gpu")} == dict(
        zip(("cpu", "memory", "gpu"), stored, strict=True)
    )


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"cpus": 1}, TypeError, r"undefined: cpus \(did you mean 'cpu'"),
        ({"memroy": "1Gi"}, TypeError, r"undefined: memroy \(did you mean 'memory'"),
        ({"gpus": 1}, TypeError, r"undefined: gpus \(did you mean 'gpu'"),
        ({"cpu": 0}, ValueError, "positive number of cores"),
        ({"cpu": 0.0001}, ValueError, "steps of 0.001"),
        ({"cpu": float("inf")}, ValueError, "positive number of cores"),
        ({"cpu": True}, TypeError, "cpu must be cores"),
        ({"cpu": "500mc"}, ValueError, r"write cores \('2', '0.5'\) or millicores \('500m'\)"),
        ({"cpu": "0m"}, ValueError, "not a Kubernetes CPU quantity"),
        ({"memory": 512}, TypeError, "memory must be a string with a unit"),
        ({"memory": "512MB"}, ValueError, "did you mean '512Mi'"),
        ({"memory": "512m"}, ValueError, r"'m' is thousandths of a byte.*did you mean '512Mi'"),
        ({"memory": "2gi"}, ValueError, "did you mean '2Gi'"),
        ({"memory": "512 Mi"}, ValueError, "did you mean '512Mi'"),
        ({"memory": "512"}, ValueError, "under one MiB"),
        ({"memory": "lots"}, ValueError, "not a Kubernetes quantity"),
        ({"gpu": -1}, ValueError, "gpu must be 0 or more"),
        ({"gpu": 0.5}, TypeError, "gpu must be an int"),
        ({"gpu": True}, TypeError, "gpu must be an int"),
    ],
)
def test_bad_resource_options_fail_on_the_decorator_line(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    app = App("m")
    with pytest.raises(error, match=match):
        app.model(**options)
    with pytest.raises(error, match=match):
        app.add_model(Echo, **options)
    assert not app.models


# -- manifests as data -------------------------------------------------------------------------


def manifests(**options: Any) -> dict[str, dict[str, Any]]:
    app = App("m")
    model = app.add_model(Echo, name="digits", **options)
    return {doc["kind"]: doc for doc in model_manifests(model, "pkg.app:app", "me/app:1")}


def test_a_model_gets_a_deployment_service_and_hpa_from_its_options() -> None:
    docs = manifests(min_replicas=2, max_replicas=5, cpu=0.5, memory="768Mi")
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert {d["metadata"]["name"] for d in docs.values()} == {"neutrino-model-digits"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["neutrino", "serve", "model", "digits"]
    assert container["image"] == "me/app:1"
    assert container["env"] == [
        {"name": "NEUTRINO_APP", "value": "pkg.app:app"},
        {"name": "NEUTRINO_MODEL_SERVER_GRPC_PORT", "value": "8081"},  # gRPC beside HTTP
    ]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "768Mi"},
        "limits": {"cpu": "500m", "memory": "768Mi"},
    }
    assert "tolerations" not in pod and "replicas" not in docs["Deployment"]["spec"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"]["name"] == "neutrino-model-digits"


def test_unstated_resources_get_defaults_and_gpus_a_device_limit() -> None:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": DEFAULT_CPU, "memory": DEFAULT_MEMORY}
    docs = manifests(gpu=2)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_min_replicas_zero_is_a_deployment_at_zero_without_hpa() -> None:
    docs = manifests(min_replicas=0, max_replicas=3)
    assert set(docs) == {"Deployment", "Service"}
    assert docs["Deployment"]["spec"]["replicas"] == 0


# -- files -------------------------------------------------------------------------------------


def read_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_render_writes_a_file_per_model_and_a_kustomization(tmp_path: Path) -> None:
    app = App("m")
    app.add_model(Echo, name="a")
    app.add_model(Echo, name="B_two")
    base = tmp_path / "k8s" / "overlays" / "dev"
    base.mkdir(parents=True)
    out = tmp_path / "deploy" / "app"
    written = render(app, "pkg:app", out, base=base)
    assert [p.name for p in written] == ["neutrino-model-a.yaml", "neutrino-model-b-two.yaml", "kustomization.yaml"]
    kustomization = read_docs(out / "kustomization.yaml")[0]
    assert kustomization["resources"] == [
        "../../k8s/overlays/dev",
        "neutrino-model-a.yaml",
        "neutrino-model-b-two.yaml",
    ]
    assert [d["kind"] for d in read_docs(out / "neutrino-model-a.yaml")] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    ]
    # JSON after a comment line: YAML for kubectl, no YAML library for the SDK.
    body = (out / "neutrino-model-a.yaml").read_text().split("\n", 1)[1].split("\n---\n")[0]
    assert json.loads(body)["kind"] == "Deployment"
    # A model that is gone loses its generated file; other files in the directory stay.
    (out / "neutrino-model-mine.yaml").write_text("# not generated\n")
    smaller = App("m")
    smaller.add_model(Echo, name="a")
    render(smaller, "pkg:app", out)
    assert sorted(p.name for p in out.iterdir()) == [
        "kustomization.yaml",
        "neutrino-model-a.yaml",
        "neutrino-model-mine.yaml",
    ]
    assert read_docs(out / "kustomization.yaml")[0]["resources"] == ["neutrino-model-a.yaml"]


def test_two_models_with_one_kubernetes_name_are_refused(tmp_path: Path) -> None:
    app = App("m")
    app.add_model(Echo, name="my_model")
    app.add_model(Echo, name="my-model")
    with pytest.raises(ValueError, match="both become the Kubernetes name 'neutrino-model-my-model'"):
        render(app, "pkg:app", tmp_path)


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app puts --app-dir first
    for name in ("deploy_ok_app", "deploy_broken_app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    code = """
        from neutrino import App

        app = App("ok")
        not_an_app = 3


        @app.model(name="echo", min_replicas=1, max_replicas=3, cpu="250m", memory="256Mi")
        class Echo:
            def load(self): ...

            def predict(self, x):
                return x
    """
    (tmp_path / "deploy_ok_app.py").write_text(textwrap.dedent(code))
    (tmp_path / "deploy_broken_app.py").write_text("raise RuntimeError('boom')\n")
    return tmp_path


def test_main_renders_an_app_from_app_dir(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = app_dir / "out"
    main(["render", "deploy_ok_app:app", "-o", str(out), "--app-dir", str(app_dir)])
    printed = capsys.readouterr().out
    assert f"wrote {out / 'neutrino-model-echo.yaml'}" in printed and f"kubectl apply -k {out}" in printed
    docs = {d["kind"]: d for d in read_docs(out / "neutrino-model-echo.yaml")}
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 3
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert container["image"] == neutrino_deploy.DEFAULT_IMAGE


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["deploy_ok_app"], 2, "the app is module:attr"),
        (["deploy_ok_app:nothing"], 2, "is nothing, not a neutrino.App"),
        (["deploy_ok_app:not_an_app"], 2, "is int, not a neutrino.App"),
        (["deploy_broken_app:app"], 3, "failed to import"),
        (["deploy_ok_app:app", "--base", "no/such/dir"], 2, "not a kustomization directory"),
    ],
)
def test_main_errors_name_the_fix(
    app_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["render", *args, "-o", str(app_dir / "out"), "--app-dir", str(app_dir)])
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err
    assert not (app_dir / "out").exists()


def test_main_needs_a_subcommand_and_an_output(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["render", "pkg:app"], ["rendr", "pkg:app", "-o", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice: 'rendr'" in capsys.readouterr().err
