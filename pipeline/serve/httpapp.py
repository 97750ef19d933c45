"""The HTTP door: an ASGI application served by uvicorn (uvloop, httptools).

Routes:

==========================================================  =================================
``POST /predict``                                           the seed's shape: one row in,
                                                            ``prediction`` + ``confidence``
``POST /v1/models/<m>[/versions/<v>]:predict``              TF Serving / KServe v1 batch:
                                                            ``instances`` -> ``predictions``,
                                                            columnar ``inputs`` -> ``outputs``
``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``      Open Inference Protocol v2
``GET /v2/models/<m>[/versions/<v>][/ready]``               model metadata and readiness
``POST /v2/repository/index``                               Triton's index of the store
``GET /v1/models/<m>[/versions/<v>]``                       KServe v1 model status
``POST /v2/models/<m>[/versions/<v>]/infer``                JSON tensors and the binary
                                                            tensor extension
``GET /healthz``, ``/readyz``                               liveness and readiness probes
==========================================================  =================================

Every caller's mistake is a 4xx with ``{"error": "..."}`` naming the field, what was
expected and what arrived (see `pipeline.serve.calls` for the statuses). A body larger
than ``max_body_bytes`` is refused (413) before it is read; one that does not arrive
within ``body_timeout_s`` is refused (408). A caller's deadline comes in the
``X-Request-Timeout-Ms`` header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.engine.codec import EventDecoder, output_rows
from pipeline.engine.models import LoadedModel
from pipeline.engine.signature import Feed, feed_rows
from pipeline.engine.spec import ModelSpec
from pipeline.metrics import Sensor
from pipeline.metrics.endpoint import CONTENT_TYPE
from pipeline.metrics.health import Readiness
from pipeline.metrics.prometheus import PrometheusSensor
from pipeline.serve import oip
from pipeline.serve.calls import (
    KEY,
    ModelCalls,
    Refusal,
    bad_input,
    internal,
    one_block,
    rejected,
    routing_key,
    seed_answers,
    seed_model,
)
from pipeline.serve.security import TokenCheck

__all__ = ["HttpApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]
_HEALTH = frozenset(("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"))


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def _json(status: int, doc: object, headers: list[tuple[bytes, bytes]] | None = None) -> _Answer:
    return _Answer(status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                   [*_JSON, *(headers or [])])  # fmt: skip


class HttpApp:
    """The ASGI application of the HTTP door.

    Args:
        calls: The doors' way into the engine.
        readiness: Says whether the process is live and ready, and why not.
        sensor: Receives one ``request`` event per request.
        max_body_bytes: Bodies larger than this get 413.
        body_timeout_s: A body not received within this long gets 408.
        tokens: When given, every request needs ``Authorization: Bearer <token>`` (401).
        open_health: With tokens, the health and metrics endpoints need none.
        metrics: Served on ``GET /metrics``.
    """

    def __init__(
        self,
        calls: ModelCalls,
        readiness: Readiness,
        *,
        sensor: Sensor,
        max_body_bytes: int,
        body_timeout_s: float = 30.0,
        tokens: TokenCheck | None = None,
        open_health: bool = False,
        metrics: PrometheusSensor | None = None,
    ) -> None:
        self._metrics = metrics
        self._calls = calls
        self._tokens = tokens
        self._open = _HEALTH if open_health else frozenset()
        self._readiness = readiness
        self._sensor = sensor
        self._max_body = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._decoder = EventDecoder(
            catalog=calls.engine.models, default_model=None, rollouts=calls.engine.rollouts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        try:
            self._check_token(scope)
            answer = await self._route(scope, receive)
        except Refusal as refusal:
            headers = {429: [(b"retry-after", b"1")],
                       401: [(b"www-authenticate", b"Bearer")]}.get(refusal.http, [])  # fmt: skip
            answer = _json(refusal.http, {"error": refusal.message}, headers)
        except Exception as exc:  # what no rule caught: a JSON 500, logged and counted
            answer = _json(500, {"error": internal("http", exc).message})
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.body})
        self._sensor.request("http", str(answer.status), time.monotonic() - started)

    def _check_token(self, scope: Scope) -> None:
        """401 without a valid bearer token (unless tokens are off, or this is an open path)."""
        if self._tokens is None or scope["path"] in self._open:
            return
        if not self._tokens.allows(_header(scope, b"authorization")):
            raise Refusal(
                401, "UNAUTHENTICATED",
                "a valid bearer token is required (Authorization: Bearer <token>)",
            )  # fmt: skip

    async def _route(self, scope: Scope, receive: Receive) -> _Answer:
        method, path = scope["method"], scope["path"]
        if path == "/predict":
            _method(method, "POST", path)
            body = await self._body(scope, receive)
            return await self._predict(body, _deadline(scope), routing_key(_header(scope, KEY)))
        if path.startswith("/v1/models/") and ":" not in path:  # KServe v1 model status
            _method(method, "GET", path)
            name, version = _model_path(path[len("/v1/models/") :], path)
            spec = self._calls.resolve(name, version)
            self._calls.engine.models.get(spec.name, spec.version)
            return _json(200, {"name": spec.name, "ready": True})
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            _method(method, "POST", path)
            name, version = _model_path(path[len("/v1/models/") : -len(":predict")], path)
            body = await self._body(scope, receive)
            return await self._instances(name, version, body, _deadline(scope))
        if path.startswith("/v2"):
            return await self._v2(method, path, scope, receive)
        if path == "/metrics" and self._metrics is not None:
            _method(method, "GET", path)
            return _Answer(200, self._metrics.exposition(),
                           [(b"content-type", CONTENT_TYPE.encode())])  # fmt: skip
        if path in ("/healthz", "/readyz"):
            _method(method, "GET", path)
            ok, reason = self._readiness.live() if path == "/healthz" else self._readiness.ready()
            return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable",
                                              "reason": reason})  # fmt: skip
        raise Refusal(404, "NOT_FOUND", f"no route {method} {path}")

    # -- the seed's API ------------------------------------------------------------------------

    async def _predict(self, body: bytes, deadline: float | None, key: bytes) -> _Answer:
        request = _object(body)
        if "data" in request and "features" in request:
            raise bad_input("send the row as data or as features, not both")
        event: dict[str, Any] = {
            "id": request.get("id", "predict"),
            **{k: request[k] for k in ("features", "model", "version") if k in request},
        }
        if "data" in request:
            event["features"] = request["data"]
        if "model" not in event:
            event["model"] = self._calls.model_name(None)
        seed_model(self._calls, event["model"], event.get("version"))
        spec, rows = self._decode([event], "", key)
        predicted = await self._calls.run(spec, rows, deadline=deadline)
        (answer,) = seed_answers(predicted.model, predicted.outputs)
        (outputs,) = output_rows(predicted.outputs, 1)
        doc: dict[str, Any] = {
            "prediction": answer.prediction,
            "confidence": answer.confidence,
            "model": spec.name,
            "version": spec.version,
            "outputs": outputs,
        }
        if answer.label is not None:
            doc["label"] = answer.label
        if "id" in request:
            doc["id"] = request["id"]
        return _json(200, doc)

    async def _instances(
        self, name: str, version: str | None, body: bytes, deadline: float | None
    ) -> _Answer:
        """TF Serving's predict API: rows (``instances``) or columns (``inputs``)."""
        request = _object(body)
        spec = self._calls.resolve(name, version)
        columnar = "inputs" in request
        if columnar and "instances" in request:
            raise bad_input("send rows as instances or columns as inputs, not both")
        instances = _rows_of_columns(request["inputs"]) if columnar else request.get("instances")
        if not isinstance(instances, list) or not instances:
            got = "an empty array" if instances == [] else _kind(instances)
            raise bad_input(f"instances must be an array of at least one row, got {got}")
        if len(spec.inputs) == 1 and not spec.vector:  # a row is the one input's value
            only = spec.inputs[0].name
            instances = [r if isinstance(r, dict) else {only: r} for r in instances]
        events = [
            {"id": str(i), "features": row, "model": spec.name, "version": spec.version}
            for i, row in enumerate(instances)
        ]
        spec, rows = self._decode(events, "inputs" if columnar else "instances")
        predicted = await self._calls.run(spec, rows, deadline=deadline)
        per_row = output_rows(predicted.outputs, feed_rows(rows))
        single = len(predicted.outputs) == 1
        answer: dict[str, Any] = {"model": spec.name, "version": spec.version}
        if columnar:
            columns = {k: [r[k] for r in per_row] for k in predicted.outputs}
            answer["outputs"] = next(iter(columns.values())) if single else columns
        else:
            answer["predictions"] = [next(iter(r.values())) if single else r for r in per_row]
        return _json(200, answer)

    def _decode(
        self, events: list[dict[str, Any]], where: str, key: bytes | None = None
    ) -> tuple[ModelSpec, Feed]:
        """Check events the way the Kafka codec does; the rows of the one model they name
        (`key` splits a canary's share, when the events name no version)."""
        decoded = self._decoder.decode_events(events, fallback_ts=0, key=key)
        if decoded.rejects:
            reject = decoded.rejects[0]
            raise rejected(reject, f"{where}[{reject.index}]: " if where else "")
        return one_block(decoded.blocks.values())

    # -- Open Inference Protocol v2 --------------------------------------------------------------

    async def _v2(self, method: str, path: str, scope: Scope, receive: Receive) -> _Answer:
        if path in ("/v2", "/v2/"):
            _method(method, "GET", path)
            return _json(200, oip.server_metadata())
        if path in ("/v2/health/live", "/v2/health/ready"):
            _method(method, "GET", path)
            ok, _ = self._readiness.live() if path.endswith("live") else self._readiness.ready()
            return _Answer(200 if ok else 400, b"", [])
        if path == "/v2/repository/index":
            _method(method, "POST", path)
            return _json(200, self._repository_index())
        if not path.startswith("/v2/models/"):
            raise Refusal(404, "NOT_FOUND", f"no route {method} {path}")
        rest = path[len("/v2/models/") :]
        action = ""
        for suffix in ("/ready", "/infer"):
            if rest.endswith(suffix):
                rest, action = rest[: -len(suffix)], suffix[1:]
        name, version = _model_path(rest, path)
        if action == "infer":
            _method(method, "POST", path)
            body = await self._body(scope, receive)
            header_length = _header(scope, b"inference-header-content-length")
            return await self._infer(name, version, body, header_length, _deadline(scope))
        _method(method, "GET", path)
        if action == "ready":
            try:
                spec = self._calls.resolve(name, version)
                self._calls.engine.models.get(spec.name, spec.version)
            except Refusal as refusal:  # the protocol answers "not ready" with a 4xx
                return _Answer(refusal.http if refusal.http < 500 else 400, b"", [])
            return _Answer(200, b"", [])
        spec = self._calls.resolve(name, version)
        model = self._calls.engine.models.get(spec.name, spec.version)
        versions = self._calls.engine.models.store.versions(spec.name)
        return _json(200, oip.model_metadata(model, versions))

    def _repository_index(self) -> list[dict[str, str]]:
        """Triton's repository index: every version in the store, READY once loaded."""
        models = self._calls.engine.models
        loaded = set(models.loaded())
        return [
            {"name": name, "version": version,
             "state": "READY" if (name, version) in loaded else "UNAVAILABLE"}
            for name in models.store.names()
            for version in models.store.versions(name)
        ]  # fmt: skip

    async def _infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        header_length: str | None,
        deadline: float | None,
    ) -> _Answer:
        spec = self._calls.resolve(name, version)
        model: LoadedModel = self._calls.engine.models.get(spec.name, spec.version)
        request = oip.parse_http_request(body, header_length)
        rows = oip.input_feed(request.inputs, model)
        predicted = await self._calls.run(spec, rows, deadline=deadline)
        json_part, blobs = oip.http_response(request, predicted.model, predicted.outputs)
        if not blobs:
            return _Answer(200, json_part, list(_JSON))
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(json_part)).encode()),
        ]
        return _Answer(200, json_part + b"".join(blobs), headers)

    # -- the body -------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """Read the request body: 413 past ``max_body_bytes`` (by Content-Length before
        reading), 408 when it does not arrive within ``body_timeout_s``."""
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body):
            raise Refusal(
                413 if declared.isdigit() else 400,
                "RESOURCE_EXHAUSTED",
                f"the body may be at most {self._max_body} bytes (max_body_bytes), "
                f"Content-Length says {declared}",
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Refusal(400, "CANCELLED", "the client went away")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self._max_body:
                        raise Refusal(413, "RESOURCE_EXHAUSTED",
                                      f"the body may be at most {self._max_body} bytes "
                                      "(max_body_bytes)")  # fmt: skip
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise Refusal(
                408, "DEADLINE_EXCEEDED",
                f"the body did not arrive within {self._body_timeout_s:g} s (body_timeout_s)",
            ) from None  # fmt: skip


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _method(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise Refusal(405, "UNIMPLEMENTED", f"{path} takes {allowed}, got {method}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _deadline(scope: Scope) -> float | None:
    """The caller's deadline from ``X-Request-Timeout-Ms``, as a monotonic time."""
    raw = _header(scope, b"x-request-timeout-ms")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise bad_input(
            f"X-Request-Timeout-Ms must be a number of milliseconds, got {raw!r}"
        ) from None
    if not ms > 0:
        raise bad_input(f"X-Request-Timeout-Ms must be above 0, got {raw!r}")
    return time.monotonic() + ms / 1000


def _model_path(rest: str, path: str) -> tuple[str, str | None]:
    """``<m>`` or ``<m>/versions/<v>`` from a route."""
    name, sep, version = rest.partition("/versions/")
    if not name or "/" in name or (sep and (not version or "/" in version)):
        raise Refusal(404, "NOT_FOUND", f"no route for {path}")
    return name, version or None


def _object(body: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"the body must be one JSON object, got: {exc}") from None
    if not isinstance(request, dict):
        raise bad_input(f"the body must be a JSON object, got {_kind(request)}")
    return request


def _rows_of_columns(inputs: object) -> list[Any]:
    """TF Serving's columnar ``inputs``: an object of input name -> one value per row
    becomes rows of input name -> value; an array is already one value per row (of a
    model's only input)."""
    if isinstance(inputs, list):
        return inputs
    if not isinstance(inputs, dict) or not inputs:
        raise bad_input(
            f"inputs must be an object of input name -> values (one per row) or an array "
            f"of rows, got {_kind(inputs)}"
        )
    lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in inputs.items()}
    if -1 in lengths.values() or len(set(lengths.values())) != 1:
        raise bad_input(
            f"inputs must map each input name to an array with one value per row, of one "
            f"length, got lengths {lengths}"
        )
    return [dict(zip(inputs, values, strict=True)) for values in zip(*inputs.values(), strict=True)]


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )
