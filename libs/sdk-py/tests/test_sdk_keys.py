"""neutrino.keys (key pairs and the loaders) and neutrino._handshake (monitor events -> HandshakeError),
without processes; tests/test_curve.py runs them against the real orchestrator and gateway."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth
from neutrino import HandshakeError, KeyFileError, keys
from neutrino._handshake import CLOSED_MID_HANDSHAKE_LIMIT, HandshakeWatch


def test_create_writes_a_pair_pyzmq_reads_with_a_private_secret(tmp_path: Path) -> None:
    public, secret = keys.create("pod", tmp_path / "new")
    assert (public.name, secret.name) == ("pod.key", "pod.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public_key, none = zmq.auth.load_certificate(public)
    assert none is None
    pair = zmq.auth.load_certificate(secret)
    assert pair[0] == public_key and zmq.curve_public(pair[1]) == public_key  # type: ignore[arg-type]
    assert keys.load_keypair(secret) == pair


def test_create_never_overwrites_without_force(tmp_path: Path) -> None:
    public, _ = keys.create("pod", tmp_path)
    before = public.read_bytes()
    with pytest.raises(KeyFileError, match=r"already exist.*force"):
        keys.create("pod", tmp_path)
    assert public.read_bytes() == before
    keys.create("pod", tmp_path, force=True)
    assert public.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod.key", "pod.key_secret"]


@pytest.mark.parametrize("name", ["", "../x", ".hidden", " pod"])
def test_create_refuses_names_that_are_not_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="plain file name"):
        keys.create(name, tmp_path)


def test_the_loaders_refuse_the_wrong_kind_of_file(tmp_path: Path) -> None:
    public, secret = keys.create("pod", tmp_path)
    with pytest.raises(KeyFileError, match="holds a secret key"):
        keys.load_public_key(secret)
    with pytest.raises(KeyFileError, match="holds only a public key"):
        keys.load_keypair(public)
    with pytest.raises(KeyFileError, match="no such file"):
        keys.load_keypair(tmp_path / "missing.key_secret")
    with pytest.raises(KeyFileError, match="is a folder"):
        keys.load_public_key(tmp_path)
    broken = tmp_path / "broken.key"
    broken.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(KeyFileError, match="not a CURVE key"):
        keys.load_public_key(broken)
    mismatched = tmp_path / "mismatched.key_secret"
    other_public, _ = zmq.curve_keypair()
    _, own_secret = zmq.auth.load_certificate(secret)
    mismatched.write_text(
        f'curve\n    public-key = "{other_public.decode()}"\n    secret-key = "{own_secret.decode()}"\n'
    )  # type: ignore[union-attr]
    with pytest.raises(KeyFileError, match="does not belong"):
        keys.load_keypair(mismatched)


def test_client_keys_take_arguments_over_the_environment_and_need_both(tmp_path: Path) -> None:
    pod_public, _ = keys.create("pod", tmp_path)
    _, laptop_secret = keys.create("laptop", tmp_path)
    _, other_secret = keys.create("other", tmp_path)
    assert keys.client_keys(env={}) is None
    env = {keys.SERVER_KEY_ENV: str(pod_public), keys.CLIENT_KEY_ENV: str(laptop_secret)}
    from_env = keys.client_keys(env=env)
    assert from_env is not None and from_env.public_key == keys.load_keypair(laptop_secret)[0]
    from_args = keys.client_keys(client_key=other_secret, env=env)
    assert from_args is not None and from_args.public_key == keys.load_keypair(other_secret)[0]
    z85 = keys.load_public_key(pod_public).decode()
    assert keys.client_keys(z85, laptop_secret, env={}) == from_env
    with pytest.raises(KeyFileError, match="curve_client_key is not"):
        keys.client_keys(server_key=pod_public, env={})
    with pytest.raises(KeyFileError, match="curve_server_key is not"):
        keys.client_keys(client_key=laptop_secret, env={})
    assert "secret_key" not in repr(from_env)


def test_keygen_cli_prints_the_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys.main(["gw", "--dir", str(tmp_path)])
    out = capsys.readouterr()
    assert out.out.strip() == keys.load_public_key(tmp_path / "gw.key").decode()
    with pytest.raises(SystemExit) as exit_info:
        keys.main(["gw", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "already exist" in capsys.readouterr().err


def test_handshake_events_become_typed_errors(tmp_path: Path) -> None:
    pod_public, _ = keys.create("pod", tmp_path)
    _, secret = keys.create("laptop", tmp_path)
    curve = keys.client_keys(pod_public, secret, env={})
    assert curve is not None
    watch = HandshakeWatch("tcp://pod:5555", curve)
    refused = watch.feed(int(zmq.EVENT_HANDSHAKE_FAILED_AUTH), 400)
    assert isinstance(refused, HandshakeError) and refused.reason == "refused"
    assert curve.public_key.decode() in str(refused) and "--curve-clients" in str(refused)
    mismatch = watch.feed(int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL), int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH))
    assert mismatch is not None and mismatch.reason == "mechanism" and "plain text" in str(mismatch)
    plain = HandshakeWatch("tcp://pod:5555", None).feed(
        int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL), int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    )
    assert plain is not None and "curve_server_key" in str(plain)
    # A hang-up mid-handshake is an error only when it repeats; a success in between resets the count.
    closed = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    for _ in range(CLOSED_MID_HANDSHAKE_LIMIT - 1):
        assert watch.feed(closed, 0) is None
    assert watch.feed(int(zmq.EVENT_HANDSHAKE_SUCCEEDED), 0) is None
    for _ in range(CLOSED_MID_HANDSHAKE_LIMIT - 1):
        assert watch.feed(closed, 0) is None
    wrong_server = watch.feed(closed, 0)
    assert wrong_server is not None and wrong_server.reason == "closed"
    assert curve.server_key.decode() in str(wrong_server)
