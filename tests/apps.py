"""Tiny test apps with the same endpoints under each framework of the matrix.

Endpoints (every framework):

* ``GET /items/{item_id}``: 200 JSON ``{"id": ..., "request_id": ...}``
* ``GET /boom``: raises ``RuntimeError`` whose text must never reach a client
* ``GET /problem``: raises :class:`prodkit.Problem` (409, ``DEMO_CONFLICT``)
* ``GET /stream?delay=S``: three body chunks ``a``, ``b``, ``c``, each after ``S`` seconds
* ``POST /echo``: the request body back, with the request's content type
* ``GET /slow?seconds=S``: sleeps, then 200 ``slept``

The raw ASGI app has no router, so its route template is always the unmatched one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request as FastAPIRequest  # module level: FastAPI resolves annotations here

from prodkit import Problem, get_request_id
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, encode_problem, read_body

FRAMEWORKS = ("raw", "starlette", "fastapi", "litestar")
SECRET_TEXT = "database password is hunter2"  # noqa: S105 - a fake secret that must not leak


def _query_float(query: str, name: str) -> float:
    values = parse_qs(query).get(name)
    return float(values[0]) if values else 0.0


def _problem() -> Problem:
    return Problem(409, "DEMO_CONFLICT", "demo conflict", extensions={"hint": "retry later"})


# -- raw ASGI ---------------------------------------------------------------------------------


async def _send_body(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def raw_app() -> ASGIApp:
    """A router-less ASGI callable serving the standard endpoints."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message: Message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode()
        if path.startswith("/items/"):
            body = json.dumps({"id": path[len("/items/") :], "request_id": get_request_id()})
            await _send_body(send, 200, body.encode(), b"application/json")
        elif path == "/boom":
            raise RuntimeError(SECRET_TEXT)
        elif path == "/problem":
            raise _problem()
        elif path == "/stream":
            delay = _query_float(query, "delay")
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/echo" and scope["method"] == "POST":
            body_bytes, _ = await read_body(receive)
            content_type = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
            await _send_body(send, 200, body_bytes, content_type)
        elif path == "/slow":
            await asyncio.sleep(_query_float(query, "seconds"))
            await _send_body(send, 200, b"slept", b"text/plain")
        else:
            await _send_body(send, 404, b"not found", b"text/plain")

    return app


# -- Starlette and FastAPI ----------------------------------------------------------------------


def starlette_app() -> ASGIApp:
    """The standard endpoints on Starlette."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["item_id"], "request_id": get_request_id()})

    async def boom(request: Request) -> Response:
        raise RuntimeError(SECRET_TEXT)

    async def problem(request: Request) -> Response:
        raise _problem()

    async def stream(request: Request) -> Response:
        delay = float(request.query_params.get("delay", "0"))

        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type=request.headers.get("content-type"))

    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("seconds", "0")))
        return PlainTextResponse("slept")

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/problem", problem),
            Route("/stream", stream),
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
        ]
    )


def mounted_starlette_app() -> ASGIApp:
    """Nested mounts and a mounted sub-application, for route-template resolution."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Mount, Route

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    sub_app = Starlette(routes=[Route("/reports/{report_id:int}", ok)])
    return Starlette(
        routes=[
            Route("/health", ok),
            Mount(
                "/api",
                routes=[
                    Mount("/users/{user_id}", routes=[Route("/posts/{post_id}", ok)]),
                    Route("/items/{item_id}", ok),
                ],
            ),
            Mount("/sub", app=sub_app),
        ]
    )


def fastapi_app() -> ASGIApp:
    """The standard endpoints on FastAPI."""
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import PlainTextResponse, Response, StreamingResponse

    app = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "request_id": get_request_id()}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET_TEXT)

    @router.get("/problem")
    async def problem() -> None:
        raise _problem()

    @router.get("/stream")
    async def stream(delay: float = 0.0) -> StreamingResponse:
        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    @router.post("/echo")
    async def echo(request: FastAPIRequest) -> Response:
        return Response(await request.body(), media_type=request.headers.get("content-type"))

    @router.get("/slow")
    async def slow(seconds: float = 0.0) -> PlainTextResponse:
        await asyncio.sleep(seconds)
        return PlainTextResponse("slept")

    app.include_router(router)
    return app


# -- Litestar -----------------------------------------------------------------------------------


def litestar_app() -> ASGIApp:
    """The standard endpoints on Litestar (Problem rendered by an exception handler)."""
    from litestar import Litestar, MediaType, Request, get, post
    from litestar.response import Response, Stream

    @get("/items/{item_id:str}")
    async def item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "request_id": get_request_id()}

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET_TEXT)

    @get("/problem")
    async def problem() -> None:
        raise _problem()

    @get("/stream")
    async def stream(delay: float = 0.0) -> Stream:
        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                yield chunk

        return Stream(chunks(), media_type=MediaType.TEXT)

    @post("/echo", status_code=200)
    async def echo(request: Request[Any, Any, Any]) -> Response[bytes]:
        return Response(
            await request.body(),
            media_type=request.headers.get("content-type", "application/octet-stream"),
        )

    @get("/slow", media_type=MediaType.TEXT)
    async def slow(seconds: float = 0.0) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    def render_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
        return Response(
            encode_problem(exc.to_dict()),
            status_code=exc.status,
            media_type="application/problem+json",
            headers=exc.headers,
        )

    return Litestar(  # type: ignore[return-value]  # Litestar types its scope more narrowly
        route_handlers=[item, boom, problem, stream, echo, slow],
        exception_handlers={Problem: render_problem},
        logging_config=None,
        # The annotations are strings (PEP 563) naming these locally imported types.
        signature_namespace={"Stream": Stream, "Response": Response, "Request": Request},
    )


_BUILDERS = {
    "raw": raw_app,
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
}


def build_app(framework: str) -> ASGIApp:
    """A fresh app with the standard endpoints for ``framework`` (one of :data:`FRAMEWORKS`)."""
    return _BUILDERS[framework]()
