"""Who may come in: TLS (and mutual TLS) for both doors, and bearer tokens.

Certificates, keys and the client CA are given as a path, ``file:PATH`` or ``env:NAME``
(the PEM itself in an environment variable), like ``-X`` values. Files are read again
when they change (checked every `_WATCH_S`), so a rotated certificate is served to new
connections without a restart: uvicorn's `ssl.SSLContext` is loaded in place, gRPC's
credentials are fetched again at the next handshake.

Tokens (``--auth-token-file``, one per line) are kept only as SHA-256 digests and a
presented token is compared with every one of them with `hmac.compare_digest`, in
constant time, never with ``==``. Nothing here logs a token, a key or a file's content.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from pipeline.errors import ConfigError

__all__ = ["Secret", "Tls", "TokenCheck"]

log = logging.getLogger("pipeline.serve")
_WATCH_S = 2.0


class Secret:
    """A PEM or token file named by a path, ``file:PATH`` or ``env:NAME``.

    Args:
        spec: What the user gave.
        what: What it is, for messages (never its content).
    """

    def __init__(self, spec: str, what: str) -> None:
        self._what = what
        self._env = spec[4:] if spec.startswith("env:") else None
        self._path = None if self._env else Path(spec[5:] if spec.startswith("file:") else spec)
        self._stamp: object = None

    def read(self) -> bytes:
        """The current content.

        Raises:
            ConfigError: the variable is unset or the file unreadable.
        """
        if self._env is not None:
            value = os.environ.get(self._env)
            if value is None:
                raise ConfigError(f"{self._what}: environment variable {self._env} is not set")
            return value.encode()
        assert self._path is not None
        try:
            return self._path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self._what}: cannot read {self._path}: {exc.strerror}") from exc

    def changed(self) -> bool:
        """Whether the file changed since the last call (an env value never does)."""
        if self._path is None:
            return False
        try:
            stat = self._path.stat()
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        moved, self._stamp = stamp != self._stamp, stamp
        return moved


class Tls:
    """The doors' TLS: a server certificate and key, and optionally a client CA (mutual
    TLS: callers without a certificate it signed are refused at the handshake).

    Raises:
        ConfigError: a file cannot be read, or the certificate and key do not match.
    """

    def __init__(self, cert: str, key: str, client_ca: str | None) -> None:
        self._cert = Secret(cert, "--tls-cert")
        self._key = Secret(key, "--tls-key")
        self._ca = Secret(client_ca, "--tls-client-ca") if client_ca else None
        self._lock = threading.Lock()
        self._secrets = [s for s in (self._cert, self._key, self._ca) if s is not None]
        for secret in self._secrets:
            secret.changed()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_context()
        self._grpc_config = self._new_grpc_config()
        self._grpc_fresh = False

    @property
    def mutual(self) -> bool:
        """Whether callers must present a certificate signed by the client CA."""
        return self._ca is not None

    def _load_context(self) -> None:
        """Load the certificate, key and CA into the one `ssl.SSLContext` uvicorn uses; new
        handshakes use what was loaded last."""
        with tempfile.TemporaryDirectory() as scratch:
            cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
            cert.write_bytes(self._cert.read())
            key.touch(mode=0o600)
            key.write_bytes(self._key.read())
            try:
                self.context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"--tls-cert and --tls-key must be a PEM certificate and its private key "
                    f"({exc.reason or exc})"
                ) from None
        if self._ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            try:
                self.context.load_verify_locations(cadata=self._ca.read().decode())
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"--tls-client-ca must be PEM certificates ({exc})") from None

    def _new_grpc_config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self._key.read(), self._cert.read())],
            root_certificates=self._ca.read() if self._ca is not None else None,
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a gRPC port, fetched again after a rotation."""
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config, self._fetch_grpc_config,
            require_client_authentication=self.mutual,
        )  # fmt: skip

    def _fetch_grpc_config(self) -> Any:
        """Called by gRPC at handshakes: the new configuration once after a rotation."""
        with self._lock:
            if not self._grpc_fresh:
                return None
            self._grpc_fresh = False
            return self._grpc_config

    def reload_if_changed(self) -> bool:
        """Read the files again if any changed; return whether they were."""
        if not any([s.changed() for s in self._secrets]):
            return False
        try:
            self._load_context()
            config = self._new_grpc_config()
        except ConfigError as exc:  # a half-written rotation: keep serving the old pair
            log.warning("TLS files changed but cannot be used yet: %s", exc)
            return False
        with self._lock:
            self._grpc_config, self._grpc_fresh = config, True
        log.info("TLS certificate reloaded")
        return True


class TokenCheck:
    """Bearer tokens from a file, one per line (blank lines and ``#`` comments ignored).

    Raises:
        ConfigError: the file cannot be read or holds no token.
    """

    def __init__(self, spec: str, *, compare: Callable[[bytes, bytes], bool] | None = None) -> None:
        self._file = Secret(spec, "--auth-token-file")
        self._compare = compare or hmac.compare_digest
        self._file.changed()
        self._digests = self._load()

    def _load(self) -> list[bytes]:
        lines = self._file.read().decode("utf-8", "replace").splitlines()
        tokens = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not tokens:
            raise ConfigError("--auth-token-file holds no token (one per line)")
        return [hashlib.sha256(t.encode()).digest() for t in tokens]

    def allows(self, presented: str | None) -> bool:
        """Whether `presented` (the ``Authorization`` value) carries one of the tokens.

        Every digest is compared, whichever matches, so the time taken does not say which.
        """
        if not presented or not presented.startswith("Bearer "):
            return False
        digest = hashlib.sha256(presented[len("Bearer ") :].strip().encode()).digest()
        matched = False
        for known in self._digests:
            matched |= self._compare(digest, known)
        return matched

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed; return whether it was."""
        if not self._file.changed():
            return False
        try:
            self._digests = self._load()
        except ConfigError as exc:
            log.warning("the token file changed but cannot be used: %s", exc)
            return False
        log.info("auth tokens reloaded (%d)", len(self._digests))
        return True


class Watcher(threading.Thread):
    """Checks the TLS and token files for changes every `_WATCH_S` seconds."""

    def __init__(self, *watched: Tls | TokenCheck | None) -> None:
        super().__init__(name="tls-watch", daemon=True)
        self._watched = [w for w in watched if w is not None]
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(_WATCH_S):
            for watched in self._watched:
                watched.reload_if_changed()

    def stop(self) -> None:
        self._stopping.set()
