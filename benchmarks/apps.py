"""Apps the throughput benchmark serves: one Starlette endpoint, bare and in the full stack."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prodkit import ASGIApp, StackSettings, configure_logging, header_user_key
from prodkit.cache import CacheRule
from prodkit.stack import recommended_stack


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"], "name": "benchmark item"})


def starlette_app() -> Starlette:
    """A bare Starlette app with ``GET /items/{item_id}``."""
    return Starlette(routes=[Route("/items/{item_id}", item)])


def bare() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the bare app."""
    return starlette_app()


def full_stack() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the same app in the whole recommended stack.

    In-memory stores, one JSON access line per request on stdout (the throughput benchmark
    sends a server's output to a file, as it does for uvicorn's own access log), and the route
    cached when ``BENCH_CACHE=1``.
    """
    configure_logging("INFO", "json")
    cache = (
        {"/items/{item_id}": CacheRule(ttl=60)} if os.environ.get("BENCH_CACHE") == "1" else None
    )
    return recommended_stack(
        starlette_app(),
        StackSettings(rate_limit="1000000/second", max_concurrency=10_000),
        configure_logs=False,
        cache_routes=cache,
        cache_user_key=header_user_key("X-User-Id"),
    )
