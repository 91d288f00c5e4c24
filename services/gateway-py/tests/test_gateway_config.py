"""Settings: flags over environment, and the refusals that keep a gateway from starting wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from neutrino_gateway.config import ConfigError, load

POD = ["--orchestrator", "tcp://127.0.0.1:5555"]


def test_flags() -> None:
    config = load(
        [*POD, "--orchestrator", "tcp://10.0.0.2:5555", "--auth-token", "a", "--auth-token", "b", "--port", "9"], env={}
    )
    assert config.orchestrators == ("tcp://127.0.0.1:5555", "tcp://10.0.0.2:5555")
    assert config.auth_tokens == {"a", "b"} and config.port == 9 and not config.no_auth


def test_environment_fills_in_and_flags_win(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t1\n\n t2 \n")
    env = {
        "NEUTRINO_GATEWAY_ORCHESTRATOR": "tcp://a:1, tcp://b:2",
        "NEUTRINO_GATEWAY_AUTH_TOKEN_FILE": str(tokens),
        "NEUTRINO_GATEWAY_PORT": "8080",
        "NEUTRINO_GATEWAY_DB": str(tmp_path / "x.db"),
    }
    config = load([], env=env)
    assert config.orchestrators == ("tcp://a:1", "tcp://b:2") and config.auth_tokens == {"t1", "t2"}
    assert config.port == 8080 and config.db_path == tmp_path / "x.db"
    assert load(["--port", "81"], env=env).port == 81


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--orchestrator"),
        (["--orchestrator", "ipc:///tmp/x"], "tcp://HOST:PORT"),
        (POD, "--no-auth"),
        ([*POD, "--no-auth", "--default-wait", "500"], "--max-wait"),
        ([*POD, "--no-auth", "--ping-interval", "5"], "--pod-timeout"),
        ([*POD, "--auth-token-file", "/nonexistent/tokens"], "--auth-token-file"),
    ],
)
def test_refusals_name_the_fix(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(argv, env={})


def test_environment_values_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="port must be a number"):
        load([*POD, "--no-auth"], env={"NEUTRINO_GATEWAY_PORT": "many"})


def test_no_auth_must_be_explicit() -> None:
    assert load([*POD, "--no-auth"], env={}).no_auth
    assert load(POD, env={"NEUTRINO_GATEWAY_NO_AUTH": "true"}).no_auth


# -- model replicas -------------------------------------------------------------------------------


def test_models_from_flags_and_environment() -> None:
    argv = [*POD, "--no-auth", "--model", "digits=http://a:8080, http://b:8080/", "--model", "other=c:9000"]
    config = load(argv, env={})
    assert config.models == {"digits": ("http://a:8080", "http://b:8080"), "other": ("http://c:9000",)}
    env = {"NEUTRINO_GATEWAY_MODEL": "digits=http://a:8080,http://b:8080; other=http://c:8080;"}
    assert load([*POD, "--no-auth"], env=env).models == {
        "digits": ("http://a:8080", "http://b:8080"),
        "other": ("http://c:8080",),
    }
    assert load([*POD, "--no-auth", "--model", "x=http://x:1"], env=env).models == {"x": ("http://x:1",)}  # flags win


def test_where_a_model_is_found_in_order() -> None:
    env = {
        "NEUTRINO_MODEL_URL_TEMPLATE": "http://{service}:8080",
        "NEUTRINO_MODEL_MY_MODEL_URL": "http://mine:1,http://mine:2",
    }
    config = load([*POD, "--no-auth", "--model", "digits=http://d:1"], env=env)
    assert config.model_replicas("digits") == ("http://d:1",)  # --model
    assert config.model_replicas("my.model") == ("http://mine:1", "http://mine:2")  # the SDK's per-model variable
    assert config.model_replicas("Big_Model") == ("http://neutrino-model-big-model:8080",)  # the SDK's template
    config = load([*POD, "--no-auth", "--model-url-template", "http://{name}.models:80"], env=env)
    assert config.model_replicas("Big_Model") == ("http://Big_Model.models:80",)  # the gateway's template wins
    assert load([*POD, "--no-auth"], env={}).model_replicas("digits") is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--model", "digits"], {}, "NAME=URL"),
        (["--model", "bad name=http://a:1"], {}, "NAME=URL"),
        (["--model", "a=http://x:1", "--model", "a=http://y:1"], {}, "given twice"),
        (["--model", "a="], {}, "names no URL"),
        (["--model", "a=ftp://x:1"], {}, "not a base URL"),
        (["--model", "a=http://x:1/path"], {}, "not a base URL"),
        (["--model-url-template", "http://{host}:8080"], {}, "only {name} and {service}"),
        ([], {"NEUTRINO_MODEL_URL_TEMPLATE": "http://{service}/v1"}, "not a base URL"),
        ([], {"NEUTRINO_MODEL_DIGITS_URL": "http://a:1?x=1"}, "NEUTRINO_MODEL_DIGITS_URL"),
    ],
)
def test_model_settings_that_cannot_work_are_refused(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load([*POD, "--no-auth", *argv], env=env)


def test_the_model_attempt_timeout_from_flag_or_environment() -> None:
    assert load([*POD, "--no-auth"], env={}).model_attempt_timeout_s == 35.0
    assert (
        load([*POD, "--no-auth"], env={"NEUTRINO_GATEWAY_MODEL_ATTEMPT_TIMEOUT": "2.5"}).model_attempt_timeout_s == 2.5
    )
    flag = [*POD, "--no-auth", "--model-attempt-timeout", "1"]
    assert load(flag, env={"NEUTRINO_GATEWAY_MODEL_ATTEMPT_TIMEOUT": "2.5"}).model_attempt_timeout_s == 1.0
    for bad, message in (("0", "at least 0.01"), ("nan", "a finite"), ("inf", "a finite"), ("soon", "a number")):
        with pytest.raises(ConfigError, match=f"model-attempt-timeout must be {message}"):
            load([*POD, "--no-auth"], env={"NEUTRINO_GATEWAY_MODEL_ATTEMPT_TIMEOUT": bad})
