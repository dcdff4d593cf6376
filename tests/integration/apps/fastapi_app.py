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


init_observability(app, service_name="fastapi-multiworker", configure_logging=False,
                   tracing_enabled=False, access_log=False)
