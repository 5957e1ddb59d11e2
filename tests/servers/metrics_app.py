"""An app for real multi-worker servers: HTTP metrics, a business counter and ``/metrics``.

Run by ``tests/metrics/test_multiprocess.py`` under ``uvicorn --workers 2`` with
``PROMETHEUS_MULTIPROC_DIR`` set; every response says which worker process served it.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from prodkit.metrics import HTTPMetricsMiddleware, MetricsEndpointMiddleware, business_counter

SCRAPE_TOKEN = "scrape"  # noqa: S105 - a test credential
orders = business_counter("demo_orders_total", "Orders placed (test app).", ["status"])


async def item(request: Request) -> PlainTextResponse:
    orders.labels(status="created").inc()
    return PlainTextResponse(str(os.getpid()))


app = HTTPMetricsMiddleware(
    MetricsEndpointMiddleware(
        Starlette(routes=[Route("/items/{item_id}", item)]), bearer_token=SCRAPE_TOKEN
    )
)
