"""CurveZMQ keys of a job: authenticated encryption between workers and servers.

A key directory holds two keypairs in ZeroMQ's certificate format:
    server.key, server.key_secret     the servers' identity
    client.key, client.key_secret     what every worker of the job presents
Servers accept only a client presenting the job's client public key (checked by a ZAP
handler); clients accept only the job's server key. The operator puts the directory
in a per-job Secret; `geeps run` makes one in a private temporary directory.

    d = generate(tempfile.mkdtemp())        # both keypairs, files mode 0600
    keys = load(d)                          # KeyPair objects, or CurveError naming the file
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import zmq
import zmq.auth

log = logging.getLogger("geeps.wire.curve")
FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret")


class CurveError(ValueError):
    """Keys missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class Keys:
    server_public: bytes
    server_secret: bytes | None     # only servers need it
    client_public: bytes
    client_secret: bytes | None     # only clients need it


def generate(directory: str) -> str:
    """Write a fresh server and client keypair into `directory` (created 0700)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name in ("server", "client"):
        pub, sec = zmq.auth.create_certificates(directory, name)
        os.chmod(sec, 0o600)
    return directory


def keys_as_files() -> dict[str, str]:
    """A fresh set of key files as {file name: text}, for a Kubernetes Secret."""
    out = {}
    for name in ("server", "client"):
        public, secret = zmq.curve_keypair()
        out[f"{name}.key"] = _cert(public, None)
        out[f"{name}.key_secret"] = _cert(public, secret)
    return out


def _cert(public: bytes, secret: bytes | None) -> str:
    # The text format zmq.auth.load_certificate reads.
    lines = ["#   ZeroMQ CURVE Certificate", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def load(directory: str) -> Keys:
    def read(name: str, need_secret: bool):
        path = os.path.join(directory, name)
        try:
            pub, sec = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise CurveError(f"CurveZMQ key file {path} is missing or unreadable: {e}") from None
        if need_secret and not sec:
            raise CurveError(f"CurveZMQ key file {path} holds no secret key")
        return pub, sec
    spub, _ = read("server.key", False)
    cpub, _ = read("client.key", False)
    ssec = csec = None
    if os.path.exists(os.path.join(directory, "server.key_secret")):
        _, ssec = read("server.key_secret", True)
    if os.path.exists(os.path.join(directory, "client.key_secret")):
        _, csec = read("client.key_secret", True)
    return Keys(spub, ssec, cpub, csec)


class _OnlyJobClient:
    """ZAP credentials check: the job's client public key and nothing else."""

    def __init__(self, allowed: bytes):
        self.allowed = allowed
        self.refused: dict[bytes, float] = {}    # key -> when last logged

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key == self.allowed          # both Z85-encoded
        if not ok:
            # A refused client reconnects every few seconds: say so once a minute per key.
            now = time.monotonic()
            if now - self.refused.get(key, -60.0) >= 60.0:
                self.refused[key] = now
                log.warning("refused a client presenting an unknown CurveZMQ key %s",
                            key[:8].decode(errors="replace") + "...")
        return ok


def secure_server(ctx: zmq.Context, sock: zmq.Socket, keys: Keys):
    """Make `sock` a CURVE server accepting only the job's client key; returns the
    authenticator thread (stop it when the socket closes)."""
    if keys.server_secret is None:
        raise CurveError("server.key_secret is needed to run a server")
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_OnlyJobClient(
        keys.client_public))
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True
    return auth


def secure_client(sock: zmq.Socket, keys: Keys) -> None:
    if keys.client_secret is None:
        raise CurveError("client.key_secret is needed to connect as a worker")
    sock.curve_secretkey = keys.client_secret
    sock.curve_publickey = keys.client_public
    sock.curve_serverkey = keys.server_public
