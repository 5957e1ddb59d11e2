"""The funds API on Starlette, wrapped in prodkit's middlewares."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.funds.model import MAX_SIMULATIONS, project, require_valid
from examples.funds.openapi import openapi
from examples.funds.repository import (
    MAX_PAGE,
    Fund,
    InMemoryRepository,
    Repository,
)
from prodkit import FieldError, Layer, Problem, Stack, caller_from_header
from prodkit import StackSettings as Settings
from prodkit.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    get_header,
)
from prodkit.cache import CacheRule
from prodkit.idempotency import current_claim
from prodkit.metrics import business_counter

USER_ID = re.compile(r"[A-Za-z0-9._@:-]{1,64}\Z")
MAX_BODY = 64 * 1024


def user_id(request: Request) -> str:
    """The caller, from ``X-User-Id`` (a demo stand-in for real authentication)."""
    value = request.headers.get("x-user-id")
    if not value:
        raise Problem(
            401,
            "UNAUTHENTICATED",
            "send an X-User-Id header to identify the caller",
            headers={"WWW-Authenticate": 'X-User-Id realm="funds"'},
        )
    if not USER_ID.match(value):
        raise Problem(
            401,
            "UNAUTHENTICATED",
            "X-User-Id must be 1 to 64 characters from A-Z a-z 0-9 . _ @ : -",
            headers={"WWW-Authenticate": 'X-User-Id realm="funds"'},
        )
    return value


async def json_body(request: Request) -> Any:
    """The request's JSON document, or a 4xx problem that says what is wrong with it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", "send the fund as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, "PAYLOAD_TOO_LARGE", f"the body must be at most {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise Problem(
            400,
            "MALFORMED_JSON",
            "the body is not valid JSON",
            errors=[FieldError("", str(exc)[:200])],
        ) from exc


def repo(request: Request) -> Repository:
    repository: Repository = request.app.state.repository
    return repository


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Problem(
            400,
            "INVALID_QUERY",
            f"{name} must be an integer from {low} to {high}",
            errors=[FieldError(f"/query/{name}", f"must be an integer from {low} to {high}")],
        )
    return value


def not_found(fund_id: str) -> Problem:
    return Problem(404, "NOT_FOUND", f"no fund {fund_id!r} for this caller")


class Recording:
    """Record ``respond(fund)`` as the idempotent response, with the write that makes the fund.

    With the PostgreSQL idempotency store, :meth:`in_transaction` writes the record in the
    write's own transaction: a worker killed at any instant leaves both the fund and its record
    (a retry replays) or neither (a retry runs once). Other stores keep their records elsewhere:
    :meth:`commit_with` writes the record while the commit is in flight, so that only the few
    instructions between sending the commit and sending the record are left for a crash to
    fall between the fund and its record (docs/idempotency.md has the figures).
    """

    def __init__(self, request: Request, respond: Callable[[Fund], Response]) -> None:
        self.claim = current_claim(request.scope)
        self.respond = respond

    async def in_transaction(self, connection: Any, fund: Fund) -> None:
        if self.claim is not None:
            response = self.respond(fund)
            await self.claim.complete_in(
                connection, response.status_code, response.raw_headers, bytes(response.body)
            )

    async def commit_with(self, commit: Awaitable[None], fund: Fund) -> None:
        if self.claim is None or self.claim.completed:
            await commit
            return
        response = self.respond(fund)
        await self.claim.complete_during(
            commit, response.status_code, response.raw_headers, bytes(response.body)
        )


def fund_created(fund: Fund) -> Response:
    return JSONResponse(
        fund.to_json(),
        status_code=201,
        headers={"Location": f"/api/funds/{fund.id}", "X-Model-Version": fund.model_version},
    )


def fund_shown(fund: Fund) -> Response:
    return JSONResponse(fund.to_json())


async def create_fund(request: Request) -> Response:
    user = user_id(request)
    fields = require_valid(await json_body(request))
    recording = Recording(request, fund_created)
    fund = await repo(request).create(
        user,
        fields,
        before_commit=recording.in_transaction,
        commit_with=recording.commit_with,
    )
    return fund_created(fund)


async def get_fund(request: Request) -> Response:
    user = user_id(request)
    fund_id = request.path_params["fund_id"]
    fund = await repo(request).get(user, fund_id)
    if fund is None:
        raise not_found(fund_id)
    return JSONResponse(fund.to_json())


async def update_fund(request: Request) -> Response:
    user = user_id(request)
    fund_id = request.path_params["fund_id"]
    fields = require_valid(await json_body(request), partial=True)
    recording = Recording(request, fund_shown)
    fund = await repo(request).update(
        user,
        fund_id,
        fields,
        before_commit=recording.in_transaction,
        commit_with=recording.commit_with,
    )
    if fund is None:
        raise not_found(fund_id)
    return fund_shown(fund)


async def delete_fund(request: Request) -> Response:
    user = user_id(request)
    fund_id = request.path_params["fund_id"]
    if not await repo(request).delete(user, fund_id):
        raise not_found(fund_id)
    return Response(status_code=204)


async def list_funds(request: Request) -> Response:
    user = user_id(request)
    limit = query_int(request, "limit", 20, 1, MAX_PAGE)
    q = request.query_params.get("q") or None
    if q is not None and (len(q) > 200 or "\x00" in q):
        raise Problem(
            400,
            "INVALID_QUERY",
            "q must be at most 200 characters, without NUL",
            errors=[FieldError("/query/q", "too long")],
        )
    page = await repo(request).list(
        user, q=q, limit=limit, cursor=request.query_params.get("cursor") or None
    )
    return JSONResponse(
        {"items": [f.to_json() for f in page.items], "next_cursor": page.next_cursor}
    )


async def projection(request: Request) -> Response:
    user = user_id(request)
    fund_id = request.path_params["fund_id"]
    simulations = query_int(request, "simulations", 10_000, 1, MAX_SIMULATIONS)
    seed = query_int(request, "seed", 0, 0, 2**31 - 1)
    fund = await repo(request).get(user, fund_id)
    if fund is None:
        raise not_found(fund_id)
    # CPU-bound: run it in a thread so the event loop keeps answering probes and other requests.
    result = await asyncio.to_thread(project, fund.stages, fund.size, simulations, seed)
    return JSONResponse({"fund_id": fund.id, **result})


async def summary(request: Request) -> Response:
    user = user_id(request)
    return JSONResponse((await repo(request).summary(user)).to_json())


async def openapi_document(request: Request) -> Response:
    return JSONResponse(openapi())


Endpoint = Callable[[Request], Awaitable[Response]]


def by_method(**handlers: Endpoint) -> Endpoint:
    """One endpoint that dispatches to ``handlers[method]`` (HEAD is served by GET)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


def create_starlette(settings: Settings, repository: Repository | None = None) -> Starlette:
    """The bare Starlette app (no prodkit middlewares)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if repository is None and settings.database_url:
            from examples.funds.postgres import PostgresRepository

            app.state.repository = await PostgresRepository.connect(settings.database_url)
        try:
            yield
        finally:
            await app.state.repository.close()

    # One route per path, dispatching on the method, so a 405's Allow lists every method.
    routes = [
        Route("/api/funds", by_method(GET=list_funds, POST=create_fund), methods=["GET", "POST"]),
        Route(
            "/api/funds/{fund_id}",
            by_method(GET=get_fund, PATCH=update_fund, DELETE=delete_fund),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route("/api/funds/{fund_id}/projection", projection, methods=["GET"]),
        Route("/api/summary", summary, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
    ]
    # Starlette's own 404 and 405 become NOT_FOUND and METHOD_NOT_ALLOWED problems in the
    # stack's errors layer: no exception handler of the app's own.
    app = Starlette(routes=routes, lifespan=lifespan)
    # The in-memory default needs no start-up, so the app also works without lifespan events.
    app.state.repository = repository or InMemoryRepository()
    return app


class FundCreationMetrics:
    """Count ``POST /api/funds`` outcomes in ``fund_creations_total``, replays included.

    It sits just inside the HTTP metrics, outside everything that can answer or reject, so it
    sees what the client sees: the status (a 429, 503 or 500 included), the
    ``Idempotency-Status`` the idempotency middleware set (a replay never reaches the handler),
    and the ``X-Model-Version`` of the fund (replayed with the stored response).
    """

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.counter = business_counter(
            "fund_creations_total",
            "Fund creation requests by status, idempotency outcome and model version.",
            ["status", "idempotency_status", "model_version"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/funds":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or ()
                idempotency = get_header(headers, b"idempotency-status") or b"none"
                version = get_header(headers, b"x-model-version") or b"none"
                self.counter.labels(
                    str(message["status"]), idempotency.decode("latin-1"), version.decode("latin-1")
                ).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_stack(settings: Settings, *, registry: CollectorRegistry | None = None) -> Stack:
    """prodkit's recommended stack for the funds API, with the business counter in it (not built)."""
    stack = Stack.recommended(
        settings,
        registry=registry,
        caller=caller_from_header("X-User-Id"),
        # Per caller. A PATCH or DELETE of a fund is fenced on the fund and its projection
        # from before it runs until it answers, so a worker killed right after the commit
        # leaves nothing stale (docs/caching.md, "Writes are fenced"); a DELETE retried after
        # such a crash answers 404 and invalidates too.
        cache_routes={
            "/api/funds/{fund_id}": CacheRule(ttl=60, per_caller=True, tags=["fund:{fund_id}"]),
            "/api/funds/{fund_id}/projection": CacheRule(
                ttl=300, per_caller=True, tags=["fund:{fund_id}"]
            ),
        },
        idempotency_routes=["/api/funds", "/api/funds/{fund_id}"],
        idempotency_stored_headers=["X-Model-Version"],
        cors_allow_headers=["X-User-Id"],
        # A service configures the process's logging once, here; a library stack does not.
        configure_logs=True,
    )
    # Next to the HTTP metrics: counted once per request, whatever answers it.
    stack.insert_after(
        "metrics", Layer("fund_metrics", FundCreationMetrics, {"registry": registry})
    )
    # A database that cannot be reached is an outage, not a bug: 503 DEPENDENCY_UNAVAILABLE
    # with Retry-After, never 500. OSError and TimeoutError for the socket and the bounded
    # waits; with a database, also what asyncpg raises when it is cut off, refuses, restarts
    # or is full.
    unavailable: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    if settings.database_url:
        from examples.funds.postgres import database_unavailable_errors

        with suppress(ImportError):  # reported, with the extra, when the pool opens
            unavailable = database_unavailable_errors()  # OSError and TimeoutError among them
    errors = stack.get("errors")
    stack.replace(
        "errors",
        Layer("errors", errors.middleware, {**errors.options, "unavailable": unavailable}),
    )
    return stack


def create_app(
    settings: Settings | None = None, *, registry: CollectorRegistry | None = None
) -> Stack:
    """The service: the Starlette app wrapped in prodkit's recommended stack."""
    settings = settings or Settings.from_env()
    starlette_app = create_starlette(settings)

    async def repository_ready() -> None:
        await starlette_app.state.repository.ping()

    stack = create_stack(settings, registry=registry).build(starlette_app)
    if settings.database_url:
        # /readyz turns 503 within cache_ttl + timeout (1.5 s) of the database going away,
        # and 200 again within that of it answering (docs/health.md).
        stack.add_check("postgres", repository_ready, critical=True, timeout=1.0, cache_ttl=0.5)
    return stack
