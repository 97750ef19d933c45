"""The seed's own design: a Flask app calling ONNX Runtime once per request.

Served by gunicorn, e.g. ``gunicorn -w 2 pipeline.dev.bench.doorpeers.seed_flask:app``;
each worker process loads the model at import.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from pipeline.dev.bench.doorpeers.model import OneRowModel

__all__ = ["app"]

app = Flask(__name__)
_model = OneRowModel()


def predict() -> Any:
    """``POST /predict`` ``{"data": [...]}``: one row, one model call."""
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict) or "data" not in body:
        return jsonify(error='the body must be a JSON object {"data": [numbers]}'), 400
    try:
        return jsonify(_model.answer(body["data"]))
    except ValueError as exc:
        return jsonify(error=str(exc)), 400


def healthz() -> Any:
    """``GET /healthz``: the model is loaded."""
    return jsonify(status="ok")


app.add_url_rule("/predict", view_func=predict, methods=["POST"])
app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
