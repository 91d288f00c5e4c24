"""CURVE on tcp:// links (SPEC.md §2.1): the real orchestrator binary as a CURVE server with an
allowlist, real pyzmq clients and `neutrino.Client`/`AsyncClient`, and the real gateway in front of
two CURVE task pods. Keys come from `neutrino keygen`, as a user would make them.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgpack
import neutrino_protocol as p
import pytest
import zmq
import zmq.auth
from neutrino import AsyncClient, Client, HandshakeError, KeyFileError
from neutrino import keys as curve_keys

from .conftest import Orchestrator, free_port, start_orchestrator, wait_until
from .gateway_harness import start_gateway

pytestmark = pytest.mark.timeout(120)
GATEWAY_APP = "tests.apps.gateway_app:app"


@dataclass
class Keys:
    folder: Path
    allowed: Path  # the pods' --curve-clients folder: client.key and gateway.key

    def public(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"


@dataclass
class CurvePod:
    orch: Orchestrator
    tcp: str
    metrics: str

    def metric(self, pattern: str) -> float:
        with urllib.request.urlopen(f"{self.metrics}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        found = re.search(rf"^{pattern} (\S+)$", body, re.M)
        return float(found.group(1)) if found else 0.0


def keygen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neutrino", "keygen", *map(str, args)], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("pod", "client", "gateway", "stranger"):
        assert keygen(name, "--dir", folder).returncode == 0
    allowed = folder / "allowed"
    allowed.mkdir()
    for name in ("client", "gateway"):
        (allowed / f"{name}.key").write_bytes((folder / f"{name}.key").read_bytes())
    return Keys(folder, allowed)


def curve_pod(
    keys: Keys, app: str = "examples.quickstart.app:app", *, tcp: str | None = None, allowed: Path | None = None
) -> CurvePod:
    tcp = tcp or f"tcp://127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    orch = start_orchestrator(
        "--frontend",
        tcp,
        "--metrics",
        metrics,
        "--curve-secret-key",
        str(keys.secret("pod")),
        "--curve-clients",
        str(allowed or keys.allowed),
        app=app,
    )
    return CurvePod(orch, tcp, f"http://{metrics}")


@pytest.fixture(scope="module")
def pod(keys: Keys) -> Iterator[CurvePod]:
    started = curve_pod(keys)
    yield started
    started.orch.stop()


def allowed_client(pod: CurvePod, keys: Keys, **kwargs: object) -> Client:
    return Client(
        pod.tcp,
        curve_server_key=keys.public("pod"),
        curve_client_key=keys.secret("client"),
        **kwargs,  # type: ignore[arg-type]
    )


# -- keygen and key files ---------------------------------------------------------------------


def test_keygen_writes_a_private_pair_prints_the_public_key_and_never_overwrites(tmp_path: Path) -> None:
    made = keygen("laptop", "--dir", tmp_path / "k")
    assert made.returncode == 0, made.stderr
    public, secret = tmp_path / "k" / "laptop.key", tmp_path / "k" / "laptop.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public_key, none = zmq.auth.load_certificate(public)
    assert none is None and made.stdout.strip() == public_key.decode()
    assert zmq.auth.load_certificate(secret)[0] == public_key
    again = keygen("laptop", "--dir", tmp_path / "k")
    assert again.returncode == 2 and "already exist" in again.stderr and "--force" in again.stderr
    assert zmq.auth.load_certificate(public)[0] == public_key, "a refused keygen changed the key"
    forced = keygen("laptop", "--dir", tmp_path / "k", "--force")
    assert forced.returncode == 0 and forced.stdout.strip() != public_key.decode()
    assert [f.name for f in (tmp_path / "k").iterdir() if f.name.startswith(".")] == [], "temp files left behind"


def test_bad_keys_are_typed_errors_that_name_the_fix(keys: Keys, tmp_path: Path) -> None:
    def refused(server: object, client: object) -> str:
        with pytest.raises(KeyFileError) as info:
            curve_keys.client_keys(server, client, env={})  # type: ignore[arg-type]
        return str(info.value)

    assert "holds a secret key" in refused(keys.secret("pod"), keys.secret("client"))
    assert "holds only a public key" in refused(keys.public("pod"), keys.public("client"))
    assert "no such file" in refused(tmp_path / "missing.key", keys.secret("client"))
    assert "is not a ZeroMQ key file" in refused(__file__, keys.secret("client"))
    assert "not a CURVE key" in refused("x" * 39 + "~", keys.secret("client"))
    assert "not a CURVE key" in refused("%" * 40, keys.secret("client"))
    assert "curve_client_key" in refused(keys.public("pod"), None)
    assert "curve_server_key" in refused(None, keys.secret("client"))
    # The Z85 text works as well as the file, and the environment is read when no argument is given.
    z85 = zmq.auth.load_certificate(keys.public("pod"))[0].decode()
    env = {curve_keys.SERVER_KEY_ENV: z85, curve_keys.CLIENT_KEY_ENV: str(keys.secret("client"))}
    got = curve_keys.client_keys(env=env)
    assert got is not None and got.server_key.decode() == z85
    assert "secret" not in repr(got).lower().replace("key_secret", "")
    with pytest.raises(KeyFileError):  # before anything connects
        Client("tcp://127.0.0.1:1", curve_server_key=keys.public("pod"))


# -- the orchestrator as a CURVE server --------------------------------------------------------


def test_the_right_key_gets_exactly_one_answer_per_task(pod: CurvePod, keys: Keys) -> None:
    """Counted on the wire with a bare pyzmq CURVE DEALER, then through Client and AsyncClient."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = zmq.auth.load_certificate(keys.public("pod"))[0]
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(keys.secret("client"))
    sock.connect(pod.tcp)
    n = 500
    try:
        for i in range(1, n + 1):
            sock.send_multipart(p.SubmitTask(id=i, task="add", payload=msgpack.packb([[i, 1], {}])).encode())
        sock.send_multipart(p.Ping(nonce=1).encode())  # answered after everything sent before it
        replies: dict[int, list[p.TaskReply]] = {}
        while True:
            assert sock.poll(30_000), f"only {len(replies)} of {n} answers"
            msg = p.decode(sock.recv_multipart())
            if isinstance(msg, p.Pong):
                if len(replies) == n:
                    break
                sock.send_multipart(p.Ping(nonce=1).encode())
                continue
            assert isinstance(msg, p.TaskReply), msg
            replies.setdefault(msg.id, []).append(msg)
    finally:
        sock.close()
        ctx.term()
    assert sorted(replies) == list(range(1, n + 1))
    assert all(len(r) == 1 for r in replies.values()), "a task was answered twice"
    assert all(msgpack.unpackb(r[0].payload) == i + 1 for i, r in replies.items())

    with allowed_client(pod, keys, timeout_s=30) as client:
        futures = [client.submit("add", i, 1) for i in range(200)]
        assert [f.result(30) for f in futures] == [i + 1 for i in range(200)]
        assert all(f.attempts == 1 for f in futures)

    async def through_async() -> list[int]:
        async with AsyncClient(
            pod.tcp, curve_server_key=keys.public("pod"), curve_client_key=keys.secret("client"), timeout_s=30
        ) as client:
            return list(await asyncio.gather(*(client.call("add", i, 2) for i in range(100))))

    assert asyncio.run(through_async()) == [i + 2 for i in range(100)]


def test_a_plain_text_client_is_refused_with_a_clear_error(pod: CurvePod, keys: Keys) -> None:
    # On the wire: no answer at all, ever (the handshake never completes).
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(pod.tcp)
    sock.send_multipart(p.Ping(nonce=7).encode())
    assert sock.poll(1000) == 0, "a plain-text client got an answer from a CURVE pod"
    sock.close()
    ctx.term()
    # Through the SDK: a HandshakeError that says what to pass, long before the 60 s timeout.
    with Client(pod.tcp, timeout_s=60) as client:
        with pytest.raises(HandshakeError) as info:
            client.call("add", 1, 2)
        # "mechanism" when libzmq saw the pod's greeting; "closed" when the pod hung up first each time.
        assert info.value.reason in ("mechanism", "closed") and "curve_server_key" in str(info.value)
        with pytest.raises(HandshakeError):  # and every later task, at once
            client.submit("add", 1, 2)
    # The pod still serves the allowed client.
    with allowed_client(pod, keys, timeout_s=30) as client:
        assert client.call("add", 1, 2) == 3


def test_a_key_not_in_the_allowlist_is_refused_and_counted(pod: CurvePod, keys: Keys) -> None:
    before = pod.metric("neutrino_curve_refused_total")
    stranger = z85_public(keys.public("stranger"))
    with Client(pod.tcp, curve_server_key=keys.public("pod"), curve_client_key=keys.secret("stranger")) as client:
        for i in range(5):
            # Refused either way: the task's future fails, or, once the refusal has arrived,
            # submit itself raises.
            with pytest.raises(HandshakeError) as info:
                client.submit("add", i, 1).result(60)
            assert info.value.reason == "refused" and stranger in str(info.value)
    wait_until(lambda: pod.metric("neutrino_curve_refused_total") > before, 10, "refusal counted")
    assert stranger in pod.orch.log

    async def refused_async() -> HandshakeError:
        async with AsyncClient(
            pod.tcp, curve_server_key=keys.public("pod"), curve_client_key=keys.secret("stranger")
        ) as client:
            with pytest.raises(HandshakeError) as info:
                await client.call("add", 1, 2)
            return info.value

    assert asyncio.run(refused_async()).reason == "refused"
    with allowed_client(pod, keys, timeout_s=30) as client:
        assert client.call("add", 2, 2) == 4


def test_a_wrong_server_key_is_refused(pod: CurvePod, keys: Keys) -> None:
    client = Client(
        pod.tcp, curve_server_key=keys.public("stranger"), curve_client_key=keys.secret("client"), timeout_s=60
    )
    with client, pytest.raises(HandshakeError) as info:
        client.call("add", 1, 2)
    assert info.value.reason == "closed" and z85_public(keys.public("stranger")) in str(info.value)


def test_ipc_stays_plain_and_ignores_client_keys(pod: CurvePod, keys: Keys) -> None:
    with Client(pod.orch.address) as plain:
        assert plain.call("add", 3, 4) == 7
    # Keys given for an ipc:// address are not used (the frontend there is plain).
    with Client(pod.orch.address, curve_server_key=keys.public("pod"), curve_client_key=keys.secret("stranger")) as c:
        assert c.call("add", 3, 5) == 8


# -- the gateway through CURVE to two pods -----------------------------------------------------


def test_the_gateway_runs_through_curve_to_two_pods(keys: Keys, tmp_path: Path) -> None:
    pods = [curve_pod(keys, GATEWAY_APP), curve_pod(keys, GATEWAY_APP)]
    gateways = []
    try:
        flags = ("--curve-server-key", str(keys.public("pod")), "--curve-client-key", str(keys.secret("gateway")))
        gateway = start_gateway([pod.tcp for pod in pods], tmp_path / "runs.db", *flags)
        gateways.append(gateway)
        n = 40
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: gateway.request("POST", "/v1/tasks/add", {"x": i, "y": 1}), range(n)))
        assert [r.status for r in replies] == [200] * n, [r.body for r in replies if r.status != 200][:3]
        assert [r.json["result"] for r in replies] == [i + 1 for i in range(n)]
        assert len({r.json["id"] for r in replies}) == n
        runs = [gateway.request("GET", f"/v1/runs/{r.json['id']}").json for r in replies]
        assert all(run["status"] == "succeeded" and run["attempts"] == 1 for run in runs)
        served = [pod.metric(r'neutrino_orchestrator_tasks_total\{outcome="ok"\}') for pod in pods]
        assert all(count > 0 for count in served), f"a pod served nothing: {served}"
        assert sum(served) == n, f"pods ran {served} tasks for {n} runs: a run ran twice or was lost"

        # A gateway whose key is not in the allowlist never gets a pod, and says why.
        stranger = ("--curve-server-key", str(keys.public("pod")), "--curve-client-key", str(keys.secret("stranger")))
        refused = start_gateway([pods[0].tcp], tmp_path / "refused.db", *stranger, wait_ready=False)
        gateways.append(refused)
        refused.wait_for(r"refused this client's CURVE key", 30)
        assert refused.request("GET", "/readyz").status == 503
        reply = refused.request("POST", "/v1/tasks/add?wait=0", {"x": 1, "y": 1})
        assert reply.status == 503, reply.body
    finally:
        for gw in gateways:
            gw.stop()
        for pod in pods:
            pod.orch.stop()


def test_the_gateway_picks_up_a_pod_that_lets_it_in_later(keys: Keys, tmp_path: Path) -> None:
    """libzmq gives a refused link up for good; the gateway makes it again, so fixing the pod's
    allowlist (and restarting the pod) is enough."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes(keys.public("client").read_bytes())
    pod = curve_pod(keys, GATEWAY_APP, allowed=allowed)
    flags = ("--curve-server-key", str(keys.public("pod")), "--curve-client-key", str(keys.secret("stranger")))
    gateway = start_gateway([pod.tcp], tmp_path / "runs.db", *flags, wait_ready=False)
    try:
        gateway.wait_for(r"refused this client's CURVE key", 30)
        pod.orch.stop()
        (allowed / "stranger.key").write_bytes(keys.public("stranger").read_bytes())
        pod = curve_pod(keys, GATEWAY_APP, tcp=pod.tcp, allowed=allowed)
        gateway.wait_ready(60)
        reply = gateway.request("POST", "/v1/tasks/add", {"x": 20, "y": 1})
        assert reply.status == 200 and reply.json["result"] == 21, reply.body
        assert pod.metric(r'neutrino_orchestrator_tasks_total\{outcome="ok"\}') == 1
    finally:
        gateway.stop()
        pod.orch.stop()


def test_the_gateway_refuses_half_a_key_configuration(keys: Keys) -> None:
    from neutrino_gateway.config import ConfigError, load

    with pytest.raises(ConfigError, match="--curve-client-key"):
        load(["--orchestrator", "tcp://127.0.0.1:5555", "--no-auth", "--curve-server-key", str(keys.public("pod"))], {})
    with pytest.raises(ConfigError, match="holds only a public key"):
        load(
            ["--orchestrator", "tcp://127.0.0.1:5555", "--no-auth"],
            {
                "NEUTRINO_CURVE_SERVER_KEY": str(keys.public("pod")),
                "NEUTRINO_CURVE_CLIENT_KEY": str(keys.public("gateway")),
            },
        )
    config = load(
        ["--orchestrator", "tcp://127.0.0.1:5555", "--no-auth"],
        {
            "NEUTRINO_GATEWAY_CURVE_SERVER_KEY": str(keys.public("pod")),
            "NEUTRINO_GATEWAY_CURVE_CLIENT_KEY": str(keys.secret("gateway")),
        },
    )
    assert config.curve is not None and config.curve.public_key == z85_public(keys.public("gateway")).encode()


def z85_public(path: Path) -> str:
    return zmq.auth.load_certificate(path)[0].decode()


def test_keys_survive_the_environment(pod: CurvePod, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEUTRINO_CURVE_* alone configure a client; arguments win over them."""
    monkeypatch.setenv("NEUTRINO_CURVE_SERVER_KEY", str(keys.public("pod")))
    monkeypatch.setenv("NEUTRINO_CURVE_CLIENT_KEY", str(keys.secret("client")))
    with Client(pod.tcp, timeout_s=30) as client:
        assert client.call("add", 5, 5) == 10
    stranger = Client(pod.tcp, curve_client_key=keys.secret("stranger"), timeout_s=60)
    with stranger, pytest.raises(HandshakeError):
        stranger.call("add", 5, 5)
    assert os.environ["NEUTRINO_CURVE_CLIENT_KEY"] == str(keys.secret("client"))


# -- deployment: Kubernetes Secrets ----------------------------------------------------------


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_k8s_curve_component_mounts_keys_from_secrets(overlay: str, tmp_path: Path) -> None:
    """An overlay as deploy/k8s/README.md describes it: the curve component plus a secretGenerator
    reading files from `neutrino keygen`. Every key path in the env is a file of a mounted Secret."""
    import shutil

    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: tests/test_k8s_manifests.py needs it too")
    for name in ("pod", "gateway"):
        assert keygen(name, "--dir", tmp_path / "keys").returncode == 0
    k8s = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(k8s / "overlays" / overlay, tmp_path)],
                "components": [os.path.relpath(k8s / "components" / "curve", tmp_path)],
                "secretGenerator": [
                    {"name": "neutrino-curve-pod", "files": ["keys/pod.key_secret"]},
                    {"name": "neutrino-curve-clients", "files": ["keys/gateway.key"]},
                    {"name": "neutrino-curve-gateway", "files": ["keys/pod.key", "keys/gateway.key_secret"]},
                ],
            }
        )
    )
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    secrets = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "Secret"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    wanted = {
        "task-pod": {"NEUTRINO_CURVE_SECRET_KEY", "NEUTRINO_CURVE_CLIENTS"},
        "gateway": {"NEUTRINO_GATEWAY_CURVE_SERVER_KEY", "NEUTRINO_GATEWAY_CURVE_CLIENT_KEY"},
    }
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            if container["name"] not in wanted:
                continue
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert wanted[container["name"]] <= set(env), env
            assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"] == 10001
            for name in wanted[container["name"]]:
                path = Path(env[name])
                mount = next(m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"]))
                assert mount.get("readOnly") is True, mount
                secret = volumes[mount["name"]]["secret"]
                assert secret["defaultMode"] == 0o440 and secret["secretName"] in secrets
                files = secrets[secret["secretName"]]
                assert (
                    path.name in files if path != Path(mount["mountPath"]) else any(f.endswith(".key") for f in files)
                )
