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


def streaming_app() -> ASGIApp:
    """A 200 sent in 16 body chunks: what the errors layer costs per chunk of a success."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for _ in range(15):
            await send({"type": "http.response.body", "body": b"x" * 64, "more_body": True})
        await send({"type": "http.response.body", "body": b"x" * 64})

    return app


def cases() -> list[Case]:
    """The foundation's cases."""
    return [
        Case("raw: bare", raw_app),
        Case(
            "raw: request id + errors",
            lambda: RequestIdMiddleware(ErrorMiddleware(raw_app())),
            baseline="raw: bare",
        ),
        Case("raw: bare, 16-chunk stream", streaming_app),
        Case(
            "raw: request id + errors, 16-chunk stream",
            lambda: RequestIdMiddleware(ErrorMiddleware(streaming_app())),
            baseline="raw: bare, 16-chunk stream",
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
        # The error path: Starlette's own text/plain 404, which the errors layer turns into a
        # problem: the figure includes reading and rendering the body.
        Case("starlette: bare, 404", starlette_app, path="/nope", expect_status=404),
        Case(
            "starlette: request id + errors, 404",
            lambda: RequestIdMiddleware(ErrorMiddleware(starlette_app())),
            path="/nope",
            expect_status=404,
            baseline="starlette: bare, 404",
        ),
    ]
