"""CURVE key pairs for encrypted, authenticated tcp:// links (SPEC.md §2.1): writing them, reading them.

    neutrino keygen pod --dir keys       # keys/pod.key (public) and keys/pod.key_secret (mode 0600)
    neutrino keygen laptop --dir keys    # a client's pair; copy laptop.key into the pods' allowlist

The files are ZeroMQ certificates exactly as `zmq.auth.create_certificates` writes them (ZPL text,
Z85 keys), so the orchestrator, pyzmq and czmq tools all read them. A client needs the server's
public key (a `NAME.key` file, or its 40-character Z85 text) and its own `NAME.key_secret`; they come
from keyword arguments or, when those are absent, from the environment:

    NEUTRINO_CURVE_SERVER_KEY   the task pod's public key: NAME.key path or Z85 text
    NEUTRINO_CURVE_CLIENT_KEY   this client's own NAME.key_secret path

Only tcp:// links use them; ipc:// stays plain (it never leaves the machine).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import KeyFileError

__all__ = [
    "CLIENT_KEY_ENV",
    "SERVER_KEY_ENV",
    "CurveKeys",
    "apply",
    "client_keys",
    "create",
    "load_keypair",
    "load_public_key",
    "main",
]

SERVER_KEY_ENV = "NEUTRINO_CURVE_SERVER_KEY"
CLIENT_KEY_ENV = "NEUTRINO_CURVE_CLIENT_KEY"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_CHARS = 40  # a 32-byte key in Z85


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """What a CURVE client socket needs, as Z85 bytes: the server's public key and its own pair."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def __repr__(self) -> str:  # never print a secret key into a log
        return f"CurveKeys(server_key={self.server_key.decode()!r}, public_key={self.public_key.decode()!r})"


def create(name: str, directory: str | os.PathLike[str] = ".", *, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (mode 0600) in `directory`; returns their paths.

    Refuses to overwrite either file unless `force`: a replaced key pair locks out every peer that
    knew the old one."""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise KeyFileError(f"key name {name!r} must be a plain file name such as 'pod' or 'gateway'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    existing = [str(path) for path in (public, secret) if path.exists()]
    if existing and not force:
        raise KeyFileError(
            f"{' and '.join(existing)} already exist; pass --force (force=True) to replace them, "
            "which locks out every peer that has the old public key"
        )
    # Written in a private folder next to the target and moved into place, so the secret key is
    # never readable by others, not even for the moment between writing and chmod.
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-keygen-") as tmp:
        tmp_public, tmp_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(tmp_secret, 0o600)
        os.chmod(tmp_public, 0o644)
        os.replace(tmp_secret, secret)
        os.replace(tmp_public, public)
    return public, secret


def load_public_key(value: str | os.PathLike[str], *, what: str = "curve_server_key") -> bytes:
    """A public key from a NAME.key file or its 40-character Z85 text; Z85 bytes."""
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise KeyFileError(f"{what} is empty: give the server's NAME.key file or its 40-character Z85 public key")
    path = Path(text)
    if not path.exists() and len(text) == _Z85_KEY_CHARS:
        return _check_z85(text.encode(), what, "its value")
    public, secret = _read(path, what, "a NAME.key file or the 40-character Z85 public key")
    if secret is not None:
        raise KeyFileError(
            f"{what}: {text} holds a secret key; give the public NAME{PUBLIC_SUFFIX} file instead "
            f"(and keep the {SECRET_SUFFIX} file on the machine it belongs to)"
        )
    return public


def load_keypair(value: str | os.PathLike[str], *, what: str = "curve_client_key") -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; Z85 bytes."""
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise KeyFileError(f"{what} is empty: give this client's own NAME{SECRET_SUFFIX} file")
    public, secret = _read(Path(text), what, f"this client's own NAME{SECRET_SUFFIX} file")
    if secret is None:
        raise KeyFileError(
            f"{what}: {text} holds only a public key; give the matching NAME{SECRET_SUFFIX} file "
            "(written by `neutrino keygen NAME`)"
        )
    try:
        derived = zmq.curve_public(secret)
    except zmq.ZMQError as exc:  # pragma: no cover - only without CURVE support in libzmq
        raise KeyFileError(f"{what}: {text}: {exc}") from None
    if derived != public:
        raise KeyFileError(f"{what}: {text}: its public-key does not belong to its secret-key; regenerate the pair")
    return public, secret


def client_keys(
    server_key: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    server_what: str = "curve_server_key",
    client_what: str = "curve_client_key",
) -> CurveKeys | None:
    """The keys a client's tcp:// links use: the arguments, else the environment; None for plain text.

    The server key and the client's own pair go together: one without the other is an error,
    because CURVE needs both and silently falling back to plain text would hide a mistake."""
    env = os.environ if env is None else env
    server = server_key if server_key is not None else (env.get(SERVER_KEY_ENV) or None)
    client = client_key if client_key is not None else (env.get(CLIENT_KEY_ENV) or None)
    if server is None and client is None:
        return None
    if server is None or client is None:
        given, missing = (server_what, client_what) if client is None else (client_what, server_what)
        missing_env = CLIENT_KEY_ENV if client is None else SERVER_KEY_ENV
        raise KeyFileError(
            f"{given} is set but {missing} is not: CURVE needs both the server's public key and this "
            f"client's own key pair (NAME{SECRET_SUFFIX}); set {missing} (or {missing_env}), or neither "
            "for plain text"
        )
    if not zmq.has("curve"):  # pragma: no cover - every pyzmq wheel has it
        raise KeyFileError("this pyzmq's libzmq was built without CURVE; install a pyzmq wheel from PyPI")
    public, secret = load_keypair(client, what=client_what)
    return CurveKeys(load_public_key(server, what=server_what), public, secret)


def apply(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make `sock` a CURVE client; call before connect()."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key)


def _read(path: Path, what: str, expected: str) -> tuple[bytes, bytes | None]:
    if path.is_dir():
        raise KeyFileError(f"{what}: {path} is a folder; give {expected}")
    if not path.exists():
        raise KeyFileError(
            f"{what}: no such file {str(path)!r}; give {expected} (`neutrino keygen NAME --dir DIR` writes a pair)"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what}: {path} is not a ZeroMQ key file ({exc}); give {expected}") from None
    public = _check_z85(public, what, str(path))
    return public, None if secret is None else _check_z85(secret, what, str(path))


def _check_z85(key: bytes, what: str, where: str) -> bytes:
    try:
        ok = len(key) == _Z85_KEY_CHARS and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        ok = False
    if not ok:
        raise KeyFileError(
            f"{what}: {where} is not a CURVE key: expected 40 Z85 characters, got {key[:48]!r}; "
            "keys come from `neutrino keygen NAME`"
        )
    return key


def main(argv: Sequence[str] | None = None) -> None:
    """`neutrino keygen NAME [--dir DIR] [--force]`."""
    p = argparse.ArgumentParser(
        prog="neutrino keygen",
        description="Write a CURVE key pair: NAME.key (public, give it to peers) and NAME.key_secret "
        "(mode 0600, stays here). Prints the public key.",
        epilog="A task pod runs with --curve-secret-key pod.key_secret --curve-clients DIR (a folder of allowed "
        f"clients' .key files); a client sets {SERVER_KEY_ENV}=pod.key and {CLIENT_KEY_ENV}=NAME.key_secret.",
    )
    p.add_argument("name", help="the key pair's name, e.g. pod, gateway, laptop")
    p.add_argument("--dir", default=".", help="folder to write into (created if missing; default .)")
    p.add_argument("--force", action="store_true", help="replace an existing pair of that name")
    opts = p.parse_args(argv)
    try:
        public, secret = create(opts.name, opts.dir, force=opts.force)
    except (KeyFileError, OSError) as exc:
        print(f"neutrino keygen: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    key, _ = zmq.auth.load_certificate(public)
    print(key.decode())
    print(f"wrote {public} (public) and {secret} (secret, mode 0600)", file=sys.stderr)
