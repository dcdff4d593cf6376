"""Apps decorated as a new user might (tests/adapters/test_first_hour.py).

Each builder stores its app in this module's namespace first, as a module-level
``app = Flask(__name__)`` would be, then decorates the views.
"""

from __future__ import annotations

from typing import Any

from mestres_observability import track_order, track_payment

app: Any = None
router: Any = None
bp: Any = None
ORDER = {"id": 1, "status": "paid", "total_amount": 3}


def flask_app_decorated_in_the_wrong_order(flask: Any) -> Any:
    global app
    app = flask.Flask("shop")

    @track_order  # wrong: above the route
    @app.post("/orders")
    def create_order() -> Any:
        return ORDER

    return app


def blueprint_decorated_in_the_wrong_order(flask: Any) -> Any:
    global bp
    bp = flask.Blueprint("shop", __name__)

    @track_order
    @bp.post("/orders")
    def create_order() -> Any:
        return ORDER

    return bp


def fastapi_app_decorated_in_the_wrong_order(fastapi: Any) -> Any:
    global app, router
    app = fastapi.FastAPI()
    router = fastapi.APIRouter()

    @track_order
    @app.post("/orders")
    async def create_order() -> Any:
        return ORDER

    @track_payment()
    @router.post("/payments")
    async def pay() -> Any:
        return {"amount": 1, "method": "pix", "status": "approved"}

    return app


def flask_app_in_the_right_order(flask: Any) -> Any:
    global app
    app = flask.Flask("shop")

    @app.post("/orders")
    @track_order
    def create_order() -> Any:
        return ORDER

    return app


def fastapi_app_in_the_right_order(fastapi: Any) -> Any:
    global app
    app = fastapi.FastAPI()

    @app.post("/orders")
    @track_order
    async def create_order() -> Any:
        return ORDER

    return app
