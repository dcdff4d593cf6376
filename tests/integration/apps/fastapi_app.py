"""FastAPI app for ``uvicorn fastapi_app:app --workers 2``."""

from __future__ import annotations

import os

from fastapi import FastAPI, Response

from mestres_observability import init_observability

app = FastAPI()


@app.get("/orders/{order_id}")
async def order(order_id: int, response: Response) -> dict[str, int]:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return {"id": order_id}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom")  # a 500: uvicorn logs "Exception in ASGI application"


init_observability(app, service_name="fastapi-multiworker",
                   configure_logging=os.environ.get("APP_CONFIGURE_LOGGING") == "1",
                   tracing_enabled=False, access_log=False)
