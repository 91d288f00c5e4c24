"""The root Tiltfile, evaluated by a real Starlark interpreter against recording stand-ins for Tilt's
builtins (tests/tilt_stubs.py): its local resources are exactly what `neutrino dev` starts, and
`tilt up -- --k8s` builds every service image and applies the dev overlay instead."""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import starlark
import yaml

from .conftest import ROOT
from .tilt_stubs import Blob, DockerBuild, HTTPGetAction, TiltRun, evaluate, evaluate_source

pytestmark = pytest.mark.timeout(120)

TILTFILE = ROOT / "Tiltfile"
PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_APP = "examples.models.app:app"
DEV_OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "dev"

# image -> its Dockerfile (one per service, build context = the repository root)
IMAGES = {
    "neutrino/task-pod": "services/orchestrator-rs/Dockerfile",
    "neutrino/gateway": "services/gateway-py/Dockerfile",
    "neutrino/model-server": "services/model-server-py/Dockerfile",
}
# service image -> the models example's image on top of it (examples/models/Dockerfile)
APP_IMAGES = {
    "neutrino/task-pod": "neutrino/example-models-task-pod",
    "neutrino/model-server": "neutrino/example-models-model-server",
}


def dev_plan(app: str) -> dict[str, Any]:
    """What `neutrino dev APP` starts, asked of it directly rather than through the Tiltfile."""
    cmd = [str(PYTHON), "-m", "neutrino", "dev", app, "--print-services", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    plan: dict[str, Any] = json.loads(out)
    return plan


def assert_nothing_for_k8s(run: TiltRun) -> None:
    assert run.docker_builds == {}
    assert run.k8s_yaml == []
    assert run.k8s_resources == []


# ---- local mode (plain `tilt up`) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "app"),
    [({}, DEFAULT_APP), ({"app": "examples.quickstart.app:app"}, "examples.quickstart.app:app")],
    ids=["default-app", "app-flag"],
)
def test_local_resources_are_exactly_the_services_neutrino_dev_starts(args: dict[str, Any], app: str) -> None:
    plan = dev_plan(app)
    run = evaluate(TILTFILE, args)

    assert run.local_commands == [[str(PYTHON), "-m", "neutrino", "dev", app, "--print-services", "--json"]]
    assert list(run.local_resources) == [svc["name"] for svc in plan["services"]]
    root = Path(plan["root"])
    for svc in plan["services"]:
        res = run.local_resources[svc["name"]]
        assert res.cmd == "", "a service is a serve_cmd only, so a deps change restarts it"
        assert res.serve_cmd == svc["cmd"]
        assert res.serve_env == svc["env"]
        assert res.serve_dir == str(root)
        assert res.deps == [str(root / d) for d in svc["deps"]]
        assert res.resource_deps == svc["resource_deps"]
        assert res.labels == [svc["kind"]]
        assert [link.url for link in res.links] == svc["links"]
        assert res.readiness_probe is not None
        assert isinstance(res.readiness_probe.action, HTTPGetAction)
        assert res.readiness_probe.action.url == svc["readiness_url"]
        assert set(res.resource_deps) <= set(run.local_resources) - {res.name}
    assert_nothing_for_k8s(run)
    assert run.enabled_resources == []


def test_default_app_runs_gateway_task_pod_and_model_servers() -> None:
    run = evaluate(TILTFILE)
    kinds = {res.labels[0] for res in run.local_resources.values()}
    assert kinds == {"gateway", "task-pod", "model"}


def test_the_apps_module_is_watched_so_a_new_model_adds_resources() -> None:
    run = evaluate(TILTFILE)
    assert str(ROOT / "examples" / "models" / "app.py") in run.watched


@pytest.mark.parametrize("args", [{}, {"k8s": True}], ids=["local", "k8s"])
def test_files_written_by_running_services_are_not_edits(args: dict[str, Any]) -> None:
    """Tilt does not read .gitignore: bytecode or the gateway's database under a watched path would
    restart services, and the models rendered at every load would re-run the Tiltfile forever."""
    run = evaluate(TILTFILE, args)
    written = [
        "examples/models/__pycache__/app.cpython-313.pyc",
        "libs/sdk-py/neutrino/__pycache__/app.cpython-313.pyc",
        ".neutrino/dev/gateway.db",
        ".neutrino/tilt/models/kustomization.yaml",
    ]
    for path in written:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in run.watch_ignores), f"{path} would trigger Tilt"


def test_resource_names_after_the_double_dash_select_what_starts() -> None:
    run = evaluate(TILTFILE, {"to-run": ["gateway"]})
    assert run.enabled_resources == ["gateway"]


def test_without_make_setup_the_tiltfile_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(starlark.StarlarkError, match="make setup"):
        evaluate_source(TILTFILE.read_text(), tmp_path)


def test_an_unknown_tiltfile_argument_fails_like_tilt_does() -> None:
    with pytest.raises(starlark.StarlarkError, match="unknown setting 'k8'"):
        evaluate(TILTFILE, {"k8": True})


# ---- k8s mode (`tilt up -- --k8s`) ------------------------------------------------------------------


def applied_objects(run: TiltRun) -> list[dict[str, Any]]:
    return [doc for blob in run.k8s_yaml if isinstance(blob, Blob) for doc in yaml.safe_load_all(blob.text) if doc]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def workloads(run: TiltRun) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in applied_objects(run) if o["kind"] in ("Deployment", "StatefulSet")}


def manifest_images(run: TiltRun) -> set[str]:
    """Image names (without tags) the applied workloads run: Tilt deploys a build only where named."""
    return {c["image"].rsplit(":", 1)[0] for o in workloads(run).values() for c in containers(o)}


@dataclass
class Copy:
    source: str  # in the build context
    dest: str  # absolute in the image


def dockerfile_copies(dockerfile: Path) -> list[Copy]:
    """What a Dockerfile's COPY/ADD instructions take from the build context (not --from a stage)."""
    copies, workdir = [], "/"
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        words = [w for w in line.split() if not w.startswith("--chown") and not w.startswith("--chmod")]
        if len(words) >= 2 and words[0].upper() == "WORKDIR":
            workdir = posixpath.join(workdir, words[1])
        if len(words) < 3 or words[0].upper() not in ("COPY", "ADD") or any(w.startswith("--from") for w in words):
            continue
        dest = posixpath.join(workdir, words[-1])
        for source in words[1:-1]:
            source = source.rstrip("/")
            copies.append(
                Copy(source, posixpath.join(dest, posixpath.basename(source)) if dest.endswith("/") else dest)
            )
    return copies


def site_packages(dockerfile: Path) -> str:
    """Where the image's venv (uv's UV_PROJECT_ENVIRONMENT, on its PYTHON_IMAGE's Python) keeps packages."""
    text = dockerfile.read_text()
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", text)
    python = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)", text)
    assert venv and python, f"{dockerfile}: no UV_PROJECT_ENVIRONMENT or PYTHON_IMAGE default"
    return f"{venv[1]}/lib/python{python[1]}/site-packages"


def covers(paths: list[str], path: str) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def base_of(run: TiltRun, build: DockerBuild) -> DockerBuild | None:
    """The image Tilt builds that `build` is FROM (through its BASE build argument), if any."""
    base = build.build_args.get("BASE", "").rsplit(":", 1)[0]
    return run.docker_builds.get(base)


@pytest.fixture(scope="module")
def k8s_run() -> TiltRun:
    return evaluate(TILTFILE, {"k8s": True})


def test_k8s_mode_builds_every_service_image_with_its_dockerfile(k8s_run: TiltRun) -> None:
    dockerfiles = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/Dockerfile"))
    assert sorted(IMAGES.values()) == dockerfiles, "every service Dockerfile is an image the Tiltfile builds"
    built = {ref: str(Path(b.dockerfile).relative_to(ROOT)) for ref, b in k8s_run.docker_builds.items()}
    assert {ref: built.get(ref) for ref in IMAGES} == IMAGES
    for build in k8s_run.docker_builds.values():
        assert build.context == str(ROOT), "Dockerfiles are built from the repository root"


def test_k8s_mode_builds_the_example_apps_images_on_the_service_images(k8s_run: TiltRun) -> None:
    for service, app_image in APP_IMAGES.items():
        build = k8s_run.docker_builds[app_image]
        assert build.dockerfile == str(ROOT / "examples/models/Dockerfile")
        assert build.build_args == {"BASE": service}, "Tilt builds the service image first and puts it in FROM"


def test_k8s_mode_sends_each_build_what_its_dockerfile_copies(k8s_run: TiltRun) -> None:
    for build in k8s_run.docker_builds.values():
        assert build.only, f"{build.ref}: without `only` every edit in the repository rebuilds it"
        for path in build.only:
            assert (ROOT / path).exists(), f"{build.ref}: only={path!r} does not exist"
        for copy in dockerfile_copies(Path(build.dockerfile)):
            assert copy.source == "." or covers(build.only, copy.source), f"{build.ref}: {copy.source} not in only"


def test_k8s_mode_applies_the_dev_overlay_and_the_apps_models(k8s_run: TiltRun) -> None:
    assert k8s_run.local_resources == {}
    overlay, models = k8s_run.k8s_yaml
    assert isinstance(overlay, Blob) and isinstance(models, Blob)
    assert overlay.source == ("kustomize", str(DEV_OVERLAY))
    # The models come from the app, rendered by `neutrino deploy render` into its model-server image.
    [render] = k8s_run.local_commands
    assert render[1:6] == ["-m", "neutrino", "deploy", "render", DEFAULT_APP]
    model = workloads(k8s_run)["neutrino-model-digits"]
    assert {c["image"].rsplit(":", 1)[0] for c in containers(model)} == {APP_IMAGES["neutrino/model-server"]}
    assert str(ROOT / "examples" / "models" / "app.py") in k8s_run.watched


def test_k8s_mode_runs_only_the_overlays_app() -> None:
    with pytest.raises(starlark.StarlarkError, match="another app needs its own images"):
        evaluate(TILTFILE, {"k8s": True, "app": "examples.quickstart.app:app"})


def test_k8s_mode_resources_and_port_forwards_match_the_manifests(k8s_run: TiltRun) -> None:
    objects = workloads(k8s_run)
    assert manifest_images(k8s_run) <= set(k8s_run.docker_builds), "an image the cluster cannot pull"
    names = {r.new_name or r.workload for r in k8s_run.k8s_resources}
    assert names == set(objects), "every workload is a named, labelled resource"
    for res in k8s_run.k8s_resources:
        assert set(res.resource_deps) <= names - {res.workload}
        assert res.labels
        ports = {p["containerPort"] for c in containers(objects[res.workload]) for p in c.get("ports", [])}
        for forward in res.port_forwards:
            assert (forward.container_port or forward.local_port) in ports, f"{res.workload}: {forward}"
    forwards = {r.workload: {p.container_port or p.local_port for p in r.port_forwards} for r in k8s_run.k8s_resources}
    assert 8000 in forwards["neutrino-gateway"]
    assert 8080 in forwards["neutrino-model-digits"]
    local_ports = [p.local_port for r in k8s_run.k8s_resources for p in r.port_forwards]
    assert len(local_ports) == len(set(local_ports)), "two port forwards on one local port"


def test_k8s_mode_deploys_every_image_it_builds(k8s_run: TiltRun) -> None:
    bases = {base.ref for b in k8s_run.docker_builds.values() if (base := base_of(k8s_run, b))}
    assert set(k8s_run.docker_builds) == manifest_images(k8s_run) | bases


def test_k8s_mode_live_updates_sync_the_python_code_into_the_deployed_images(k8s_run: TiltRun) -> None:
    bases = {base.ref for b in k8s_run.docker_builds.values() if (base := base_of(k8s_run, b))}
    for build in k8s_run.docker_builds.values():
        if build.ref in bases:
            assert build.live_update == [], f"{build.ref}: Tilt live-updates deployed images; sync there"
            continue
        syncs = {Path(s.local_path).relative_to(ROOT).as_posix(): s.remote_path for s in build.live_update}
        assert syncs and all(s.kind == "sync" for s in build.live_update), f"{build.ref}: no live_update"
        chain = [build, *([base] if (base := base_of(k8s_run, build)) else [])]
        for image in chain:
            copies = dockerfile_copies(Path(image.dockerfile))
            # Our packages: every one the image installs from a project it copies, into its venv.
            for project in (c.source for c in copies if (ROOT / c.source / "pyproject.toml").is_file()):
                for package in (ROOT / project).iterdir():
                    if (package / "__init__.py").is_file() and package.name != "tests":
                        source = package.relative_to(ROOT).as_posix()
                        expected = f"{site_packages(Path(image.dockerfile))}/{package.name}"
                        assert syncs.get(source) == expected, f"{build.ref}: {source} is not synced to {expected}"
            # Files the Dockerfile copies in as they are (the app): synced to where it puts them.
            for copy in copies:
                if copy.source.endswith(".py"):
                    [(local, remote)] = [(k, v) for k, v in syncs.items() if covers([k], copy.source)]
                    assert posixpath.join(remote, posixpath.relpath(copy.source, local)) == copy.dest


# ---- the stand-ins reject what Tilt rejects ---------------------------------------------------------

VALID = """
config.define_bool("k8s")
cfg = config.parse()
local_resource("svc", serve_cmd = ["true"], serve_env = {"A": "1"}, deps = ["tests"],
               readiness_probe = probe(http_get = http_get_action(8000, path = "/readyz"), period_secs = 1),
               links = [link("http://localhost:8000/docs", "docs")], labels = ["gateway"], resource_deps = [])
"""


def test_the_stand_ins_accept_tilts_documented_calls() -> None:
    run = evaluate_source(VALID, ROOT)
    assert list(run.local_resources) == ["svc"]


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ('docker_buidl("x", ".")', "Variable `docker_buidl` not found"),  # a builtin Tilt does not have
        ('local_resource("x", serve_cmd = "true", serve_evn = {})', "unexpected keyword argument 'serve_evn'"),
        ('probe(http_get = http_get_action(host = "h"))', "missing 1 required positional argument: 'port'"),
        ('local_resource("x")', "must have a cmd and/or a serve_cmd"),
        ('local_resource("x", serve_cmd = "true", labels = ["not a label"])', "invalid label"),
        ('local_resource("x", serve_cmd = "true", env = {"A": 1})', "want a string"),
        ('local_resource("x", serve_cmd = "true", readiness_probe = probe(period_secs = 1))', "exactly one of"),
        ('local_resource("x", serve_cmd = "true")\nlocal_resource("x", serve_cmd = "true")', "already exists"),
        ('config.define_boolean("k8s")', "has no attribute `define_boolean`"),
        ('k8s_resource("w", port_forward = 8000)', "unexpected keyword argument 'port_forward'"),
        ('docker_build("i", ".", dockerfile = "no/such/Dockerfile")', "no Dockerfile"),
        (
            'docker_build("i", ".", dockerfile_contents = "FROM scratch",'
            ' live_update = [run("true"), sync("tests", "/app/tests")])',
            "sync() steps must come before run()",
        ),
        ('docker_build("i", ".", dockerfile_contents = "FROM scratch", live_update = [sync("/etc", "/x")])', "outside"),
        ('k8s_yaml(kustomize("no/such/overlay"))', "not a directory"),
        ('x = f"{1}"', "f-strings"),  # Go Starlark has no f-strings
        ("def f(x: int):\n    pass", "type annotations"),  # nor type annotations
    ],
)
def test_the_stand_ins_reject_what_tilt_rejects(source: str, error: str) -> None:
    with pytest.raises(starlark.StarlarkError) as exc_info:
        evaluate_source(source, ROOT)
    assert error in str(exc_info.value)
