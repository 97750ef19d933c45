"""The gRPC door of `pipeline serve`: the seed's /Predictor/Predict and the Open Inference
Protocol's GRPCInferenceService, through clients generated from schemas/*.proto."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
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

from .conftest import MLP, Server
from .test_http import LOGREG, ROWS, ort_outputs


@pytest.fixture
def channel(server: Server) -> grpc.Channel:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


def test_predict_on_the_method_path_the_seed_clients_call(channel: grpc.Channel) -> None:
    call = channel.unary_unary(
        "/Predictor/Predict",
        request_serializer=prediction_pb2.PredictRequest.SerializeToString,
        response_deserializer=prediction_pb2.PredictResponse.FromString,
    )
    reply = call(prediction_pb2.PredictRequest(features=ROWS[0].tolist()), timeout=10)
    label, probabilities = ort_outputs(MLP, ROWS[:1])
    assert reply.prediction == int(label[0])
    assert reply.confidence == pytest.approx(float(probabilities[0].max()), abs=1e-6)
    assert (reply.model, reply.version, reply.label) == (
        MLP,
        "1",
        ("malignant", "benign")[int(label[0])],
    )


def test_predict_with_a_model_and_errors_with_their_status(channel: grpc.Channel) -> None:
    stub = prediction_pb2_grpc.PredictorStub(channel)
    reply = stub.Predict(prediction_pb2.PredictRequest(features=ROWS[1].tolist(), model=LOGREG))
    _, probabilities = ort_outputs(LOGREG, ROWS[1:2])
    assert reply.model == LOGREG
    assert reply.confidence == pytest.approx(float(probabilities[0].max()), abs=1e-6)
    with pytest.raises(grpc.RpcError) as short:
        stub.Predict(prediction_pb2.PredictRequest(features=[1.0, 2.0]))
    assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "features must have 30 values" in short.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Predict(prediction_pb2.PredictRequest(features=ROWS[0].tolist(), model="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_inference_service_health_metadata_and_infer(channel: grpc.Channel) -> None:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(inference_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name=MLP)).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="nope")).ready
    meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MLP, version="1"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("features", "FP32", [-1, 30])
    ]
    request = inference_pb2.ModelInferRequest(model_name=MLP, id="g1")
    request.inputs.add(name="features", datatype="FP32", shape=[8, 30])
    request.raw_input_contents.append(ROWS.astype("<f4").tobytes())
    reply = stub.ModelInfer(request)
    assert reply.id == "g1" and [o.name for o in reply.outputs] == ["label", "probabilities"]
    label, probabilities = ort_outputs(MLP, ROWS)
    got_label = np.frombuffer(reply.raw_output_contents[0], dtype="<i8")
    got_proba = np.frombuffer(reply.raw_output_contents[1], dtype="<f4").reshape(8, 2)
    assert got_label.tolist() == label.tolist()
    np.testing.assert_allclose(got_proba, probabilities, atol=1e-6)


def test_infer_takes_typed_contents_too(channel: grpc.Channel) -> None:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = inference_pb2.ModelInferRequest(model_name=LOGREG)
    tensor = request.inputs.add(name="features", datatype="FP64", shape=[2, 30])
    tensor.contents.fp64_contents.extend(ROWS[:2].astype(np.float64).reshape(-1).tolist())
    request.outputs.add(name="probabilities")
    reply = stub.ModelInfer(request)
    _, probabilities = ort_outputs(LOGREG, ROWS[:2])
    got = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(got, probabilities, atol=1e-6)


def test_the_grpc_health_service_answers_for_the_server_and_each_service(
    channel: grpc.Channel,
) -> None:
    """Issue 26 item 11: grpc.health.v1, which grpc_health_probe and Kubernetes' gRPC
    probes call."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "Predictor", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Nothing"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    watched = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
    watched.cancel()


def test_server_reflection_lists_the_services_and_describes_them(channel: grpc.Channel) -> None:
    """Issue 26 item 11: grpcurl and Postman find the services without the .proto files."""
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"Predictor", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    infer = pool.FindServiceByName("inference.GRPCInferenceService").FindMethodByName("ModelInfer")
    assert infer.input_type.full_name == "inference.ModelInferRequest"
