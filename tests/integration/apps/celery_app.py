"""Celery app for ``celery -A tests.integration.apps.celery_app worker`` (and the web side).

The broker is ``SHOP_BROKER_URL``. With ``SHOP_WORKER_OBS=1`` (the worker) the
library is initialised from the environment at import, after ``celery`` was
imported, so ``init_observability`` instruments Celery by itself.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from mestres_observability import get_logger, init_observability, track_order

app = Celery("shop_worker", broker=os.environ["SHOP_BROKER_URL"], set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
)

if os.environ.get("SHOP_WORKER_OBS") == "1":
    init_observability(service_name="shop-worker")

log = get_logger("shop.tasks")


@app.task(name="shop.place_order", shared=False)
@track_order
def place_order(order_id: str, total: float) -> dict[str, Any]:
    log.info("placing order", order_id=order_id, worker_pid=os.getpid())
    return {"order_id": order_id, "status": "paid", "total": total, "currency": "BRL",
            "items": [{"product_id": "espresso", "quantity": 1}]}


@app.task(name="shop.fail", shared=False)
def fail() -> None:
    raise ValueError("no stock")


@app.task(name="shop.retry_once", bind=True, max_retries=2, default_retry_delay=0, shared=False)
def retry_once(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"
