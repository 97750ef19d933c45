"""The seed's own design: a Flask app calling ONNX Runtime once per request.

Served by gunicorn, e.g. ``gunicorn -w 2 'pipeline.dev.bench.doorpeers.seed_flask:create_app()'``;
each worker process builds the app and loads the model. Flask is imported only there, so
this module imports without the bench extra.
"""

from __future__ import annotations

from typing import Any

from pipeline.dev.bench.doorpeers.model import OneRowModel

__all__ = ["create_app"]


def create_app() -> Any:
    """The Flask app: ``POST /predict`` ``{"data": [...]}`` (one row, one model call) and
    ``GET /healthz``."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    model = OneRowModel()

    def predict() -> Any:
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or "data" not in body:
            return jsonify(error='the body must be a JSON object {"data": [numbers]}'), 400
        try:
            return jsonify(model.answer(body["data"]))
        except ValueError as exc:
            return jsonify(error=str(exc)), 400

    def healthz() -> Any:
        return jsonify(status="ok")

    app.add_url_rule("/predict", view_func=predict, methods=["POST"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    return app
