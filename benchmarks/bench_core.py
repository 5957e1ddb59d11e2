"""Foundation: bare app vs request id + errors, on a raw ASGI app and on Starlette."""

from __future__ import annotations

from benchmarks.harness import Case
from prodkit import ErrorMiddleware, RequestIdMiddleware
from prodkit.asgi import ASGIApp, Receive, Scope, Send


def raw_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id":42}'})

    return app


def starlette_app() -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    return Starlette(routes=[Route("/items/{item_id}", item)])


def cases() -> list[Case]:
    """The foundation's cases."""
    return [
        Case("raw: bare", raw_app),
        Case(
            "raw: request id + errors",
            lambda: RequestIdMiddleware(ErrorMiddleware(raw_app())),
            baseline="raw: bare",
        ),
        Case("starlette: bare", starlette_app),
        Case(
            "starlette: request id",
            lambda: RequestIdMiddleware(starlette_app()),
            baseline="starlette: bare",
        ),
        Case(
            "starlette: request id + errors",
            lambda: RequestIdMiddleware(ErrorMiddleware(starlette_app())),
            baseline="starlette: bare",
        ),
        Case(
            "starlette: request id (inbound id) + errors",
            lambda: RequestIdMiddleware(ErrorMiddleware(starlette_app())),
            headers=[("X-Request-ID", "0123456789abcdef")],
            baseline="starlette: bare",
        ),
    ]
