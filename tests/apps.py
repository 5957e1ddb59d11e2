"""Tiny test apps with the same endpoints under each framework of the matrix.

Endpoints (every framework):

* ``GET /items/{item_id}``: 200 JSON ``{"id": ..., "request_id": ...}``
* ``GET /boom``: raises ``RuntimeError`` whose text must never reach a client
* ``GET /problem``: raises :class:`prodkit.Problem` (409, ``DEMO_CONFLICT``)
* ``GET /stream?delay=S``: three body chunks ``a``, ``b``, ``c``, each after ``S`` seconds
* ``POST /echo``: the request body back, with the request's content type
* ``GET /slow?seconds=S``: sleeps, then 200 ``slept``
* ``GET /sub/things/{thing_id}``: 200 ``thing``, served by the framework's way of composing an
  app (a mounted app, an included router, a blueprint, an included URLconf)
* ``GET /forbidden``: 403 with the detail ``not yours``, refused the framework's own way (its
  ``HTTPException``, ``abort``, ``PermissionDenied``; plain text on the raw app)
* ``GET /echo``: 405 with ``Allow: POST``, answered by the framework's router
* ``POST /validate`` (FastAPI and Litestar, which validate request bodies): a :class:`Fund`
  ``{"name", "size", "stages": [{"months"}]}`` back as ``{"name": ...}``
* WebSocket ``/ws``: accepts, sends ``hi`` and closes (not on Django, whose ASGI handler serves
  HTTP only)

The raw ASGI app has no router: its route template is the unmatched one unless a resolver such
as :func:`raw_route_resolver` names it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qs

from fastapi import Request as FastAPIRequest  # module level: FastAPI resolves annotations here
from fastapi import WebSocket as FastAPIWebSocket

from prodkit import Problem, get_request_id
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, encode_problem, read_body

FRAMEWORKS = ("raw", "starlette", "fastapi", "litestar", "quart", "django")
SECRET_TEXT = "database password is hunter2"  # noqa: S105 - a fake secret that must not leak
FORBIDDEN_DETAIL = "not yours"


@dataclass
class Stage:
    """A stage of :class:`Fund`: FastAPI and Litestar validate it in ``POST /validate``."""

    months: int


@dataclass
class Fund:
    """The body ``POST /validate`` takes (module level: the frameworks resolve it here)."""

    name: str
    size: int
    stages: list[Stage] = field(default_factory=list)


def _query_float(query: str, name: str) -> float:
    values = parse_qs(query).get(name)
    return float(values[0]) if values else 0.0


def _problem() -> Problem:
    return Problem(409, "DEMO_CONFLICT", "demo conflict", extensions={"hint": "retry later"})


# -- raw ASGI ---------------------------------------------------------------------------------


async def _send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *(extra or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _raw_websocket(receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hi"})
    await send({"type": "websocket.close", "code": 1000})


def raw_route_resolver(scope: Scope) -> str | None:
    """The raw app's route templates, the way its users would name them (see the docs)."""
    path: str = scope["path"]
    if path.startswith("/items/") and path.count("/") == 2:
        return "/items/{item_id}"
    if path.startswith("/sub/things/") and path.count("/") == 3:
        return "/sub/things/{thing_id}"
    if path in ("/boom", "/problem", "/stream", "/echo", "/slow", "/ws", "/forbidden"):
        return path
    return None


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
        if scope["type"] == "websocket":
            await _raw_websocket(receive, send)
            return
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
        elif path == "/echo":
            await _send_body(
                send, 405, b"Method Not Allowed", b"text/plain", extra=[(b"allow", b"POST")]
            )
        elif path == "/forbidden":
            await _send_body(send, 403, FORBIDDEN_DETAIL.encode(), b"text/plain")
        elif path == "/slow":
            await asyncio.sleep(_query_float(query, "seconds"))
            await _send_body(send, 200, b"slept", b"text/plain")
        elif path.startswith("/sub/things/"):
            await _send_body(send, 200, b"thing", b"text/plain")
        else:
            await _send_body(send, 404, b"not found", b"text/plain")

    return app


# -- Starlette and FastAPI ----------------------------------------------------------------------


def starlette_app() -> ASGIApp:
    """The standard endpoints on Starlette."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.websockets import WebSocket

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

    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    async def forbidden(request: Request) -> Response:
        raise HTTPException(403, FORBIDDEN_DETAIL)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/forbidden", forbidden),
            Route("/problem", problem),
            Route("/stream", stream),
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
            Mount("/sub", app=Starlette(routes=[Route("/things/{thing_id}", thing)])),
            WebSocketRoute("/ws", ws),
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
    from fastapi import APIRouter, FastAPI, HTTPException
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

    @router.get("/forbidden")
    async def forbidden() -> None:
        raise HTTPException(403, detail=FORBIDDEN_DETAIL)

    @router.post("/validate")
    async def validate(fund: Fund) -> dict[str, Any]:
        return {"name": fund.name}

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

    @router.websocket("/ws")
    async def ws(websocket: FastAPIWebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    sub = APIRouter()

    @sub.get("/things/{thing_id}", response_class=PlainTextResponse)
    async def thing(thing_id: str) -> str:
        return "thing"

    app.include_router(router)
    app.include_router(sub, prefix="/sub")
    return app


# -- Litestar -----------------------------------------------------------------------------------


def litestar_app() -> ASGIApp:
    """The standard endpoints on Litestar (Problem rendered by an exception handler)."""
    from litestar import Litestar, MediaType, Request, Router, WebSocket, get, post, websocket
    from litestar.enums import RequestEncodingType
    from litestar.exceptions import PermissionDeniedException
    from litestar.params import Body
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

    @get("/forbidden")
    async def forbidden() -> None:
        raise PermissionDeniedException(detail=FORBIDDEN_DETAIL)

    @post("/validate", status_code=200)
    async def validate(
        data: Annotated[Fund, Body(media_type=RequestEncodingType.JSON)],
    ) -> dict[str, Any]:
        return {"name": data.name}

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

    @get("/things/{thing_id:str}", media_type=MediaType.TEXT)
    async def thing(thing_id: str) -> str:
        return "thing"

    @websocket("/ws")
    async def ws(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        await socket.send_text("hi")
        await socket.close()

    def render_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
        return Response(
            encode_problem(exc.to_dict()),
            status_code=exc.status,
            media_type="application/problem+json",
            headers=exc.headers,
        )

    return Litestar(  # type: ignore[return-value]  # Litestar types its scope more narrowly
        route_handlers=[
            item,
            boom,
            problem,
            forbidden,
            validate,
            stream,
            echo,
            slow,
            ws,
            Router("/sub", route_handlers=[thing]),
        ],
        exception_handlers={Problem: render_problem},
        logging_config=None,
        # The annotations are strings (PEP 563) naming these locally imported types.
        signature_namespace={
            "Stream": Stream,
            "Response": Response,
            "Request": Request,
            "WebSocket": WebSocket,
            "Body": Body,
            "RequestEncodingType": RequestEncodingType,
        },
    )


# -- Quart ---------------------------------------------------------------------------------------


def quart_app() -> ASGIApp:
    """The standard endpoints on Quart (exceptions propagate to prodkit's ErrorMiddleware)."""
    from quart import Blueprint, Quart, Response, abort, request, websocket

    app = Quart("prodkit_tests")
    # Quart answers an exception with its own HTML 500 unless told to let it through.
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/items/<item_id>")
    async def item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "request_id": get_request_id()}

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError(SECRET_TEXT)

    @app.get("/problem")
    async def problem() -> str:
        raise _problem()

    @app.get("/forbidden")
    async def forbidden() -> str:
        abort(403, FORBIDDEN_DETAIL)

    @app.get("/stream")
    async def stream() -> Response:
        delay = float(request.args.get("delay", "0"))

        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                yield chunk

        return Response(chunks(), content_type="text/plain")

    @app.post("/echo")
    async def echo() -> Response:
        content_type = request.headers.get("content-type", "application/octet-stream")
        return Response(await request.get_data(), content_type=content_type)

    @app.get("/slow")
    async def slow() -> Response:
        await asyncio.sleep(float(request.args.get("seconds", "0")))
        return Response("slept", content_type="text/plain")

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        await websocket.send("hi")
        await websocket.close(1000)

    sub = Blueprint("sub", "prodkit_tests_sub", url_prefix="/sub")

    @sub.get("/things/<thing_id>")
    async def thing(thing_id: str) -> Response:
        return Response("thing", content_type="text/plain")

    app.register_blueprint(sub)
    return app  # type: ignore[return-value]  # Quart types its scope more narrowly


# -- Django ----------------------------------------------------------------------------------------


class DjangoProblemMiddleware:
    """A Django middleware that answers a raised :class:`prodkit.Problem` with itself.

    Django turns every exception into its own 500 page (and logs it through ``django.request``),
    so a problem must be rendered inside Django, as Litestar's exception handler does above.
    """

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    async def __call__(self, request: Any) -> Any:
        return await self.get_response(request)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """Render a Problem; leave any other exception to Django (logged, then a 500)."""
        if not isinstance(exception, Problem):
            return None
        from django.http import HttpResponse  # type: ignore[import-untyped]

        response = HttpResponse(
            encode_problem(exception.to_dict()),
            status=exception.status,
            content_type="application/problem+json",
        )
        for name, value in exception.headers.items():
            response[name] = value
        return response


class _DjangoURLConf:
    """The URLconf of :func:`django_app`: Django reads ``urlpatterns`` from it."""

    urlpatterns: ClassVar[list[Any]] = []


def _django_urlpatterns() -> list[Any]:
    from django.core.exceptions import PermissionDenied  # type: ignore[import-untyped]
    from django.http import (
        HttpRequest,
        HttpResponse,
        HttpResponseNotAllowed,
        JsonResponse,
        StreamingHttpResponse,
    )
    from django.urls import include, path  # type: ignore[import-untyped]

    async def item(request: HttpRequest, item_id: str) -> HttpResponse:
        return JsonResponse({"id": item_id, "request_id": get_request_id()})

    async def boom(request: HttpRequest) -> HttpResponse:
        raise RuntimeError(SECRET_TEXT)

    async def problem(request: HttpRequest) -> HttpResponse:
        raise _problem()

    async def forbidden(request: HttpRequest) -> HttpResponse:
        raise PermissionDenied(FORBIDDEN_DETAIL)

    async def stream(request: HttpRequest) -> HttpResponse:
        delay = float(request.GET.get("delay", "0"))

        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(delay)
                yield chunk

        return StreamingHttpResponse(chunks(), content_type="text/plain")

    async def echo(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        content_type = request.headers.get("content-type", "application/octet-stream")
        return HttpResponse(request.body, content_type=content_type)

    async def slow(request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(float(request.GET.get("seconds", "0")))
        return HttpResponse(b"slept", content_type="text/plain")

    async def thing(request: HttpRequest, thing_id: str) -> HttpResponse:
        return HttpResponse(b"thing", content_type="text/plain")

    return [
        path("items/<str:item_id>", item),
        path("boom", boom),
        path("problem", problem),
        path("forbidden", forbidden),
        path("stream", stream),
        path("echo", echo),
        path("slow", slow),
        path("sub/", include([path("things/<str:thing_id>", thing)])),
    ]


def django_app() -> ASGIApp:
    """The standard endpoints on Django's ASGI handler (settings configured once per process)."""
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.handlers.asgi import ASGIHandler  # type: ignore[import-untyped]

    if not settings.configured:
        _DjangoURLConf.urlpatterns = _django_urlpatterns()
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=_DjangoURLConf,
            MIDDLEWARE=["tests.apps.DjangoProblemMiddleware"],
            SECRET_KEY="prodkit-tests-only",  # noqa: S106 - a test-only key
        )
        import django  # type: ignore[import-untyped]

        django.setup()
    return ASGIHandler()  # type: ignore[no-any-return]


_BUILDERS = {
    "raw": raw_app,
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "quart": quart_app,
    "django": django_app,
}


def build_app(framework: str) -> ASGIApp:
    """A fresh app with the standard endpoints for ``framework`` (one of :data:`FRAMEWORKS`)."""
    return _BUILDERS[framework]()
