"""The same per-request service on FastAPI: validated by pydantic, one model call each.

Served by uvicorn, e.g. ``uvicorn --factory --workers 2
pipeline.dev.bench.doorpeers.fastapi_app:create_app``. The endpoint is ``async``: the model
call takes microseconds, so handing it to FastAPI's thread pool (a ``def`` endpoint) would
cost more than it saves. FastAPI is imported only in `create_app`, so this module imports
without the bench extra. (No ``from __future__ import annotations`` here: FastAPI reads
the endpoint's annotations, which name `Body` from `create_app`'s scope.)
"""

from typing import Annotated, Any

from pipeline.dev.bench.doorpeers.model import OneRowModel

__all__ = ["create_app"]


def create_app() -> Any:
    """The FastAPI app: ``POST /predict`` ``{"data": [...]}`` (one row, one model call) and
    ``GET /healthz``."""
    from fastapi import Body, FastAPI, HTTPException

    app = FastAPI()
    model = OneRowModel()

    async def predict(data: Annotated[list[float], Body(embed=True)]) -> dict[str, float]:
        try:
            return model.answer(data)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/predict", predict, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    return app
