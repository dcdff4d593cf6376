"""A typed user's view of the decorators; checked by mypy --strict (tests/test_typing.py).

Not collected by pytest (no test_ prefix): it only has to type-check.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from mestres_observability import counted, job, timed, timer, track_order, track_payment


class Order:
    status = "paid"
    total_amount = Decimal("1.00")


@track_order
def create(cart: list[str]) -> Order:
    return Order()


@track_order(currency="EUR")
async def create_async(cart: list[str]) -> Order:
    return Order()


class Shop:
    @track_payment
    def pay(self, order: Order, method: str) -> dict[str, Any]:
        return {"amount": order.total_amount, "method": method, "status": "approved"}

    @counted("brews")
    @timed("brew_seconds")
    async def brew(self, size: str) -> int:
        return 1


@job("nightly_report")
def nightly_report(day: str) -> int:
    return 1


@job("inventory_sync")
async def inventory_sync() -> None:
    return None


def use() -> None:
    order: Order = create(["espresso"])
    payment: dict[str, Any] = Shop().pay(order, "pix")
    with timer("block_seconds") as t:
        pass
    elapsed: float | None = t.elapsed
    rows: int = nightly_report("2026-01-01")
    with job("inventory_sync") as run:
        name: str = run.name
    del payment, elapsed, rows, name
