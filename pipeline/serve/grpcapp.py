"""The gRPC door (grpc.aio): the seed's ``Predictor`` and the Open Inference Protocol v2.

``/Predictor/Predict`` takes one row (``repeated float features``, plus the optional
``model`` and ``version`` added later) and answers ``prediction`` and ``confidence``;
``inference.GRPCInferenceService`` answers ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata and ModelInfer. The call's deadline is the caller's: rows
not run by then are not run (DEADLINE_EXCEEDED). Errors are the statuses of
`pipeline.serve.calls`, with the same messages as the HTTP door.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pipeline.engine.codec import EventDecoder
from pipeline.metrics import Sensor
from pipeline.metrics.health import Readiness
from pipeline.serve import oip
from pipeline.serve._proto import (
    inference_pb2,
    inference_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)
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
from pipeline.serve.tensors import TensorError, datatype_of, elements, from_raw, to_raw

__all__ = ["InferenceService", "PredictorService", "TokenInterceptor", "add_services"]

Request = TypeVar("Request")
Response = TypeVar("Response")

_CONTENTS = {  # datatype -> the InferTensorContents field that carries it
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _Door:
    """What both services share: the engine calls, readiness and the request sensor."""

    def __init__(self, calls: ModelCalls, readiness: Readiness, sensor: Sensor) -> None:
        self.calls = calls
        self.readiness = readiness
        self.sensor = sensor

    async def answer(
        self,
        context: grpc.aio.ServicerContext,
        handle: Callable[[], Awaitable[Response]],
    ) -> Response:
        """Run `handle`; a `Refusal` aborts the call with its status and message."""
        started = time.monotonic()
        try:
            try:
                response = await handle()
            except Refusal:
                raise
            except Exception as exc:  # what no rule caught: INTERNAL, logged and counted
                raise internal("grpc", exc) from exc
        except Refusal as refusal:
            self.sensor.request("grpc", refusal.grpc, time.monotonic() - started)
            await context.abort(grpc.StatusCode[refusal.grpc], refusal.message)
            raise  # abort() raises; this line only keeps type checkers informed
        self.sensor.request("grpc", "OK", time.monotonic() - started)
        return response


class PredictorService(prediction_pb2_grpc.PredictorServicer):
    """``/Predictor/Predict``: the seed's one-row prediction."""

    def __init__(self, door: _Door) -> None:
        self._door = door
        engine = door.calls.engine
        self._decoder = EventDecoder(
            catalog=engine.models, default_model=None, rollouts=engine.rollouts
        )

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._door.answer(context, lambda: self._predict(request, context))

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        calls = self._door.calls
        event: dict[str, Any] = {
            "id": "grpc",
            "features": list(request.features),
            "model": calls.model_name(request.model or None),
        }
        if request.version:
            event["version"] = request.version
        seed_model(calls, event["model"], event.get("version"))
        metadata = dict(context.invocation_metadata() or ())
        key = routing_key(metadata.get(KEY.decode()))
        decoded = self._decoder.decode_events([event], fallback_ts=0, key=key)
        if decoded.rejects:
            raise rejected(decoded.rejects[0])
        spec, feed = one_block(decoded.blocks.values())
        predicted = await calls.run(spec, feed, deadline=_deadline(context))
        (answer,) = seed_answers(predicted.model, predicted.outputs)
        return prediction_pb2.PredictResponse(
            prediction=answer.prediction,
            confidence=answer.confidence or 0.0,
            model=spec.name,
            version=spec.version,
            label=answer.label or "",
        )


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService``: the Open Inference Protocol v2."""

    def __init__(self, door: _Door) -> None:
        self._door = door

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return inference_pb2.ServerLiveResponse(live=self._door.readiness.live()[0])

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return inference_pb2.ServerReadyResponse(ready=self._door.readiness.ready()[0])

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        calls = self._door.calls
        try:
            spec = calls.resolve(request.name, request.version or None)
            calls.engine.models.get(spec.name, spec.version)
        except Refusal:
            return inference_pb2.ModelReadyResponse(ready=False)
        return inference_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return inference_pb2.ServerMetadataResponse(**oip.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._door.answer(context, lambda: self._metadata(request))

    async def _metadata(self, request: Any) -> Any:
        calls = self._door.calls
        spec = calls.resolve(request.name, request.version or None)
        model = calls.engine.models.get(spec.name, spec.version)
        doc = oip.model_metadata(model, calls.engine.models.store.versions(spec.name))
        tensor = inference_pb2.ModelMetadataResponse.TensorMetadata
        return inference_pb2.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]],
            outputs=[tensor(**t) for t in doc["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._door.answer(context, lambda: self._infer(request, context))

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        calls = self._door.calls
        spec = calls.resolve(request.model_name, request.model_version or None)
        model = calls.engine.models.get(spec.name, spec.version)
        inputs = [_input(request, i) for i in range(len(request.inputs))]
        rows = oip.input_feed(inputs, model)
        predicted = await calls.run(spec, rows, deadline=_deadline(context))
        wanted = [(o.name, None) for o in request.outputs]
        response = inference_pb2.ModelInferResponse(
            model_name=spec.name, model_version=spec.version, id=request.id
        )
        for name, array, _ in oip.selected_outputs(wanted, predicted.outputs, predicted.model):
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(to_raw(array))
        return response


def _input(request: Any, i: int) -> oip.InputTensor:
    """Input `i` of a ModelInferRequest, from its raw contents or its typed contents."""
    tensor = request.inputs[i]
    where = f"inputs[{i}]"
    shape = list(tensor.shape)
    try:
        if request.raw_input_contents:
            if tensor.HasField("contents"):
                raise bad_input(
                    f"{where} has typed contents beside raw_input_contents: send every input "
                    "one way (raw_input_contents for all, or contents for all)"
                )
            if i >= len(request.raw_input_contents):
                raise bad_input(f"{where} has no raw_input_contents (one per input is needed)")
            array = from_raw(tensor.datatype, shape, request.raw_input_contents[i], where)
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise bad_input(
                    f"{where}: {tensor.datatype} tensors must come as raw_input_contents"
                )
            if tensor.datatype == "BYTES":
                values = np.asarray(list(tensor.contents.bytes_contents), dtype=object)
            else:
                values = np.asarray(getattr(tensor.contents, field))
            expected = elements(shape, where)
            if values.size != expected:
                raise bad_input(
                    f"{where}: shape {shape} holds {expected} elements, contents has {values.size}"
                )
            array = values.reshape(shape)
    except TensorError as exc:
        raise bad_input(str(exc)) from None
    return oip.InputTensor(tensor.name, tensor.datatype, array)


_PREDICTOR = prediction_pb2.DESCRIPTOR.services_by_name["Predictor"].full_name
_INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_WATCH_S = 1.0  # how often a Watch looks at readiness again


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health``, the probe gRPC tooling knows (grpc_health_probe, Kubernetes'
    gRPC probes, Envoy): SERVING while the process is ready (`/readyz`), else NOT_SERVING
    (`/readyz` says why), for the server (``""``) and each of its services."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    def _status(self, service: str) -> int | None:
        if service not in ("", _PREDICTOR, _INFERENCE, _HEALTH):
            return None
        ready, _ = self._readiness.ready()
        response = health_pb2.HealthCheckResponse
        return int(response.SERVING if ready else response.NOT_SERVING)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:  # ends when the caller cancels or the server stops
            status = self._status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(_WATCH_S)


def add_services(
    server: grpc.aio.Server, calls: ModelCalls, readiness: Readiness, sensor: Sensor
) -> None:
    """Register the prediction services, the health service and server reflection (which
    lets grpcurl and Postman list and call them without the .proto files)."""
    door = _Door(calls, readiness, sensor)
    prediction_pb2_grpc.add_PredictorServicer_to_server(PredictorService(door), server)  # type: ignore[no-untyped-call]
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceService(door), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(readiness), server)
    reflection.enable_server_reflection(
        (_PREDICTOR, _INFERENCE, _HEALTH, reflection.SERVICE_NAME), server
    )


_OPEN_METHODS = frozenset((
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    f"/{_HEALTH}/Check",
    f"/{_HEALTH}/Watch",
))  # fmt: skip


async def _unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "a valid bearer token is required (metadata authorization: Bearer <token>)",
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid ``authorization: Bearer <token>`` metadata entry."""

    def __init__(self, tokens: TokenCheck, *, open_health: bool) -> None:
        self._tokens = tokens
        self._open = _OPEN_METHODS if open_health else frozenset()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method not in self._open:
            metadata = dict(details.invocation_metadata or ())
            if not self._tokens.allows(metadata.get("authorization")):
                return grpc.unary_unary_rpc_method_handler(_unauthenticated)
        return await continuation(details)
