"""The doors let in only who they should: TLS and mutual TLS on both, certificates rotated
without a restart, bearer tokens, and slow or oversized clients cut off while others are
answered."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from pipeline.serve._proto import (
    inference_pb2,
    inference_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)

from .conftest import Server, wait_until_ready
from .pki import Authority, Pair
from .test_http import ROWS

ROW = ROWS[0].tolist()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Pair, Pair]:
    ca = Authority(tmp_path, "test-ca")
    return ca, ca.issue("server", "door-1", server=True), ca.issue("client", "caller", server=False)


def _https(server: Server, ca: Authority, client: Pair | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return httpx.Client(base_url=f"https://127.0.0.1:{server.http_port}", verify=context)


def _grpc_credentials(ca: Authority, client: Pair | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.pem.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def _grpc_predict(server: Server, credentials: grpc.ChannelCredentials, **metadata: str) -> float:
    with grpc.secure_channel(server.grpc_target, credentials) if credentials else grpc.insecure_channel(server.grpc_target) as channel:  # fmt: skip
        stub = prediction_pb2_grpc.PredictorStub(channel)
        reply = stub.Predict(prediction_pb2.PredictRequest(features=ROW), timeout=10,
                             metadata=list(metadata.items()) or None)  # fmt: skip
        return float(reply.confidence)


def _served_name(server: Server, ca: Authority) -> str:
    """The CN of the certificate the HTTP door presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:  # fmt: skip
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


def test_tls_serves_https_and_grpc_and_refuses_plain_text(
    serve: Callable[..., Server], pki: tuple[Authority, Pair, Pair]
) -> None:
    ca, server_pair, _ = pki
    server = serve("--tls-cert", str(server_pair.cert), "--tls-key", f"file:{server_pair.key}")
    with _https(server, ca) as client:
        assert client.post("/predict", json={"data": ROW}).status_code == 200
    assert _grpc_predict(server, _grpc_credentials(ca)) > 0
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{server.http_port}/predict", json={"data": ROW}, timeout=5)
    with pytest.raises(grpc.RpcError) as plain:
        _grpc_predict(server, None)  # type: ignore[arg-type]
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_callers_without_a_certificate_of_its_ca(
    serve: Callable[..., Server], pki: tuple[Authority, Pair, Pair], tmp_path: Path
) -> None:
    ca, server_pair, client = pki
    other = (
        Authority(tmp_path / "other", "other-ca") if (tmp_path / "other").mkdir() is None else None
    )
    assert other is not None
    stranger = other.issue("stranger", "stranger", server=False)
    server = serve("--tls-cert", str(server_pair.cert), "--tls-key", str(server_pair.key),
                   "--tls-client-ca", str(ca.pem))  # fmt: skip
    with _https(server, ca, client) as allowed:
        assert allowed.post("/predict", json={"data": ROW}).status_code == 200
    assert _grpc_predict(server, _grpc_credentials(ca, client)) > 0
    for caller in (None, stranger):
        with pytest.raises(httpx.HTTPError), _https(server, ca, caller) as refused:
            refused.post("/predict", json={"data": ROW})
        with pytest.raises(grpc.RpcError) as denied:
            _grpc_predict(server, _grpc_credentials(ca, caller))
        assert denied.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_rotated_certificate_is_served_without_a_restart(
    serve: Callable[..., Server], pki: tuple[Authority, Pair, Pair], tmp_path: Path
) -> None:
    ca, first, _ = pki
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    shutil.copy(first.cert, live.cert)
    shutil.copy(first.key, live.key)
    server = serve("--tls-cert", str(live.cert), "--tls-key", str(live.key))
    assert _served_name(server, ca) == "door-1"
    second = ca.issue("server2", "door-2", server=True)
    shutil.copy(second.key, live.key)
    shutil.copy(second.cert, live.cert)
    deadline = time.monotonic() + 15
    while _served_name(server, ca) != "door-2":
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        time.sleep(0.5)
    assert _grpc_predict(server, _grpc_credentials(ca)) > 0, "gRPC serves the new one too"
    assert server.proc.poll() is None and "TLS certificate reloaded" in server.log


def test_bearer_tokens_on_both_doors(serve: Callable[..., Server], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\nsecond-token\n")
    server = serve("--auth-token-file", str(tokens), "--open-health")
    url = f"{server.url}/predict"
    missing = httpx.post(url, json={"data": ROW})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json={"data": ROW}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "nope" not in wrong.text
    right = httpx.post(url, json={"data": ROW}, headers={"Authorization": "Bearer second-token"})
    assert right.status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200, "--open-health"
    assert httpx.get(f"{server.url}/v2/models/breast-cancer-mlp").status_code == 401
    with pytest.raises(grpc.RpcError) as denied:
        _grpc_predict(server, None, authorization="Bearer nope")  # type: ignore[arg-type]
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "nope" not in (denied.value.details() or "")
    assert _grpc_predict(server, None, authorization="Bearer first-token") > 0  # type: ignore[arg-type]
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert health.ServerLive(inference_pb2.ServerLiveRequest()).live, "--open-health"
        probe = health_pb2_grpc.HealthStub(channel)
        assert probe.Check(health_pb2.HealthCheckRequest()).status == 1, "SERVING, open"
        with pytest.raises(grpc.RpcError) as listing:  # reflection needs the token
            next(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert listing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "first-token" not in server.log and "second-token" not in server.log


def _slow_client(port: int, payload: bytes, out: list[bytes]) -> None:
    """Send `payload` a byte every 0.5 s; keep what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            for byte in payload:
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
        except OSError:
            pass
        try:
            out.append(sock.recv(4096))
        except OSError:
            out.append(b"")


@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n", b"408"),
     (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + b"{" * 40, b"408")],
    ids=["slow-headers", "slow-body"],
)  # fmt: skip
def test_a_slow_client_is_cut_off_while_others_are_answered(
    serve: Callable[..., Server], payload: bytes, status: bytes
) -> None:
    server = serve("--header-timeout-s", "2", "--body-timeout-s", "2")
    answers: list[bytes] = []
    slow = threading.Thread(target=_slow_client, args=(server.http_port, payload, answers))
    slow.start()
    started = time.monotonic()
    with httpx.Client(base_url=server.url) as client:
        while slow.is_alive() and time.monotonic() - started < 20:
            assert client.post("/predict", json={"data": ROW}).status_code == 200
            time.sleep(0.2)
    slow.join(30)
    assert answers and status in answers[0][:20], answers
    assert time.monotonic() - started < 15


def test_oversized_headers_are_refused(serve: Callable[..., Server]) -> None:
    server = serve("--max-header-bytes", "4096")
    reply = httpx.post(f"{server.url}/predict", json={"data": ROW}, headers={"X-Big": "a" * 8000})
    assert reply.status_code == 431
    assert httpx.post(f"{server.url}/predict", json={"data": ROW}).status_code == 200


def test_the_compose_tls_overlay_serves_https_with_a_token(
    serve: Callable[..., Server],
    pki: tuple[Authority, Pair, Pair],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docker-compose.tls.yml's settings, with its mounted directory mapped to a local one."""
    import yaml

    from .conftest import ROOT, wait_until_ready

    overlay = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    service = overlay["services"]["serve"]
    (source, mounted, _mode) = service["volumes"][0].split(":")
    assert source == "./certs"
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, server_pair, _ = pki
    shutil.copy(server_pair.cert, certs / "server.crt")
    shutil.copy(server_pair.key, certs / "server.key")
    (certs / "tokens").write_text("compose-token\n")
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value).replace(mounted, str(certs)))
    server = serve(wait_ready=False)
    wait_until_ready(server, by_log=True)
    with _https(server, ca) as client:
        assert client.post("/predict", json={"data": ROW}).status_code == 401
        answered = client.post("/predict", json={"data": ROW},
                               headers={"Authorization": "Bearer compose-token"})  # fmt: skip
        assert answered.status_code == 200, answered.text
        assert client.get("/readyz").status_code == 200  # open health
    assert _grpc_predict(server, _grpc_credentials(ca), authorization="Bearer compose-token") > 0


def _url_streamer(port: int, out: list[bytes], seconds: float) -> None:
    """Stream an endless request target (``GET /aaaa...``) for up to `seconds`; keep the
    first answer."""
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.05)
        try:
            sock.sendall(b"GET /")
            while time.monotonic() < deadline:
                sock.sendall(b"a" * 4096)
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                out.append(answer)
                return
        except OSError:
            pass
        sock.settimeout(5)
        try:
            out.append(sock.recv(4096))
        except OSError:
            out.append(b"")


def test_an_endless_url_is_refused_before_authentication_while_probes_answer(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n")
    server = serve("--max-header-bytes", "16384", "--auth-token-file", str(tokens),
                   "--open-health", wait_ready=False)  # fmt: skip
    wait_until_ready(server, by_log=True)
    answers: list[list[bytes]] = [[] for _ in range(4)]
    streamers = [
        threading.Thread(target=_url_streamer, args=(server.http_port, out, 8.0)) for out in answers
    ]
    for streamer in streamers:
        streamer.start()
    probes = []
    with httpx.Client(base_url=server.url, timeout=1.0) as client:
        while True:  # at least one probe, however soon the streamers are refused
            started = time.monotonic()
            probes.append((client.get("/v2/health/live").status_code, time.monotonic() - started))
            if not any(s.is_alive() for s in streamers):
                break
            time.sleep(0.1)
    for streamer in streamers:
        streamer.join(10)
    assert all(out and out[0].startswith(b"HTTP/1.1 414") for out in answers), answers
    assert probes and all(status == 200 and took < 1.0 for status, took in probes), probes
