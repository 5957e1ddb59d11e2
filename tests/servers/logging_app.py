"""An app for a real uvicorn process: prodkit's logging setup and access log, JSON on stdout.

Run by ``tests/logging/test_config.py``; ``/items/{item_id}`` binds a value with structlog's
contextvars and logs through the standard library, so both paths show up in the output.
"""

from __future__ import annotations

import logging

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prodkit import RequestIdMiddleware
from prodkit.logging import AccessLogMiddleware, configure_logging

configure_logging()


async def item(request: Request) -> JSONResponse:
    structlog.contextvars.bind_contextvars(item=request.path_params["item_id"])
    logging.getLogger("funds.handler").info("handled item")
    return JSONResponse({"ok": True})


app = RequestIdMiddleware(AccessLogMiddleware(Starlette(routes=[Route("/items/{item_id}", item)])))
