"""The front doors' peers: the per-request HTTP apps a user would otherwise build.

`seed_flask` is the seed's own design (Flask, ONNX Runtime called once per request, served
by gunicorn); `fastapi_app` is the same per request on FastAPI (served by uvicorn). Both
answer ``POST /predict`` with ``{"data": [30 numbers]}`` exactly as the seed did
(``{"prediction": class index, "confidence": its probability}``) and ``GET /healthz``, and
load the model named by ``DOORPEER_MODEL_DIR`` (`model`). The benchmark
(`pipeline.dev.bench.doors`) starts them; they bind wherever their server is told.
"""
