"""The same per-request service on FastAPI: validated by pydantic, one model call each.

Served by uvicorn, e.g. ``uvicorn --workers 2 pipeline.dev.bench.doorpeers.fastapi_app:app``.
The endpoint is ``async``: the model call takes microseconds, so handing it to FastAPI's
thread pool (a ``def`` endpoint) would cost more than it saves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI, HTTPException

from pipeline.dev.bench.doorpeers.model import OneRowModel

__all__ = ["app"]

app = FastAPI()
_model = OneRowModel()


async def predict(data: Annotated[list[float], Body(embed=True)]) -> dict[str, float]:
    """``POST /predict`` ``{"data": [...]}``: one row, one model call."""
    try:
        return _model.answer(data)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


async def healthz() -> dict[str, str]:
    """``GET /healthz``: the model is loaded."""
    return {"status": "ok"}


app.add_api_route("/predict", predict, methods=["POST"])
app.add_api_route("/healthz", healthz, methods=["GET"])
