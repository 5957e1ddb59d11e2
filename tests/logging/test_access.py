"""AccessLogMiddleware: one JSON "request completed" line per request, read from real output."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, get_type_hints

import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, ErrorMiddleware, RequestIdMiddleware
from prodkit.asgi import (
    ASGIApp,
    ClientAddressResolver,
    Message,
    Receive,
    Scope,
    Send,
    send_problem,
)
from prodkit.cache import CacheMiddleware, CacheRule
from prodkit.idempotency import IdempotencyMiddleware, MemoryIdempotencyStore
from prodkit.logging import (
    AccessLogKeywords,
    AccessLogMiddleware,
    AccessLogOptions,
    configure_logging,
)
from prodkit.testing import LogOutput, capture_log_output
from tests.apps import build_app
from tests.conftest import ClientFactory

EVENT = "request completed"
ROUTE = {
    "raw": "__unmatched__",
    "starlette": "/items/{item_id}",
    "fastapi": "/items/{item_id}",
    "litestar": "/items/{item_id}",
    "quart": "/items/{item_id}",
    "django": "/items/{item_id}",
}


@pytest.fixture
def logs() -> Iterator[LogOutput]:
    with capture_log_output() as output:
        yield output


async def _get_ignoring_app_errors(client: httpx.AsyncClient, path: str) -> httpx.Response | None:
    # Raw ASGI, Starlette and FastAPI re-raise an app's exception to the server (httpx's
    # transport raises it here); Litestar answers the 500 itself.
    try:
        return await client.get(path)
    except RuntimeError:
        return None


async def test_one_line_per_request_with_all_fields(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(build_app(framework))))
    response = await client.get("/items/7", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 200
    [line] = logs.events(EVENT)
    assert line["request_id"] == "req-1"
    assert line["method"] == "GET"
    assert line["route"] == ROUTE[framework]
    assert line["path"] == "/items/7"
    assert line["status"] == 200
    assert line["bytes"] == len(response.content)
    assert line["client"] == "127.0.0.1"
    assert line["level"] == "info"
    assert line["logger"] == "prodkit.access"
    assert isinstance(line["duration"], float)
    assert 0 <= line["duration"] < 60
    assert isinstance(line["pid"], int)
    assert line["hostname"]
    assert datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    assert "query" not in line


async def test_raising_app_is_logged_as_500_and_the_exception_re_raised(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(build_app(framework))))
    with contextlib.suppress(RuntimeError):
        await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    [line] = logs.events(EVENT)
    assert line["status"] == 500
    assert line["level"] == "error"
    assert line["request_id"] == "boom-1"
    if framework in ("litestar", "django"):  # they turn the exception into their own 500
        assert "exc_type" not in line
    else:
        assert line["exc_type"] == "RuntimeError"


async def test_unhandled_500_behind_error_middleware_has_the_request_id(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    app = RequestIdMiddleware(AccessLogMiddleware(ErrorMiddleware(build_app(framework))))
    response = await make_client(app).get("/boom")
    assert response.status_code == 500
    [line] = logs.events(EVENT)
    assert line["status"] == 500
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["bytes"] == len(response.content)


async def test_rejections_by_inner_middleware_are_logged_with_their_route(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    inner = build_app("starlette")

    class Reject:
        app = inner  # routers are found below middlewares through ``.app``

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send_problem(send, 429, "RATE_LIMITED", headers={"Retry-After": "3"})

    client = make_client(RequestIdMiddleware(AccessLogMiddleware(Reject())))
    response = await client.get("/items/9")
    assert response.status_code == 429
    [line] = logs.events(EVENT)
    assert (line["status"], line["route"], line["level"]) == (429, "/items/{item_id}", "warning")
    assert line["request_id"] == response.headers["x-request-id"]


async def test_unknown_paths_share_the_unmatched_route(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(AccessLogMiddleware(build_app(framework)))
    assert (await client.get("/no/such/path")).status_code == 404
    [line] = logs.events(EVENT)
    assert (line["route"], line["path"], line["status"]) == ("__unmatched__", "/no/such/path", 404)


async def test_streaming_duration_runs_to_the_last_chunk(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    # tests/apps.py sleeps ``delay`` between the three chunks: 2 x 0.3 s = 0.6 s.
    client = make_client(AccessLogMiddleware(build_app(framework)))
    response = await client.get("/stream?delay=0.2")
    assert response.text == "abc"
    [line] = logs.events(EVENT)
    assert line["duration"] >= 0.6
    assert line["bytes"] == 3


async def _drive(app: ASGIApp, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent


async def test_client_gone_before_the_response_is_499(logs: LogOutput) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # the client left while the app was reading: nothing to answer

    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    assert await _drive(AccessLogMiddleware(app), receive) == []
    [line] = logs.events(EVENT)
    assert (line["status"], line["level"]) == (499, "warning")


async def test_cancelled_before_the_response_is_499_and_propagates(logs: LogOutput) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError  # servers cancel the request task when the client leaves

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    with pytest.raises(asyncio.CancelledError):
        await _drive(AccessLogMiddleware(app), receive)
    [line] = logs.events(EVENT)
    assert line["status"] == 499
    assert line["exc_type"] == "CancelledError"


def _binding_app(framework: str) -> ASGIApp:
    """``/bind`` binds ``user_id`` with structlog's contextvars; ``/plain`` binds nothing."""
    bind = structlog.contextvars.bind_contextvars

    if framework == "raw":

        async def raw(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/bind":
                bind(user_id="alice", plan="gold")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return raw
    if framework in ("starlette", "fastapi"):
        from fastapi import FastAPI
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import BaseRoute, Route

        async def bound(request: Request) -> PlainTextResponse:
            bind(user_id="alice", plan="gold")
            return PlainTextResponse("ok")

        async def plain(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        routes: list[BaseRoute] = [Route("/bind", bound), Route("/plain", plain)]
        return Starlette(routes=routes) if framework == "starlette" else FastAPI(routes=routes)
    from litestar import Litestar, MediaType, get

    @get("/bind", media_type=MediaType.TEXT)
    async def bound_ls() -> str:
        bind(user_id="alice", plan="gold")
        return "ok"

    @get("/plain", media_type=MediaType.TEXT)
    async def plain_ls() -> str:
        return "ok"

    return Litestar(route_handlers=[bound_ls, plain_ls], logging_config=None)  # type: ignore[return-value]


async def test_values_bound_in_the_handler_appear_once_and_never_leak(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(_binding_app(framework))))
    assert (await client.get("/bind")).status_code == 200
    assert (await client.get("/plain")).status_code == 200
    first, second = logs.events(EVENT)
    assert (first["path"], first["user_id"], first["plan"]) == ("/bind", "alice", "gold")
    assert second["path"] == "/plain"
    assert "user_id" not in second
    assert "plan" not in second
    assert structlog.contextvars.get_contextvars() == {}


async def test_values_bound_before_the_request_are_kept(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(AccessLogMiddleware(_binding_app("raw")))
    with structlog.contextvars.bound_contextvars(user_id="outer"):
        await client.get("/bind")
        assert structlog.contextvars.get_contextvars() == {"user_id": "outer"}
    [line] = logs.events(EVENT)
    assert line["user_id"] == "alice"


async def test_secrets_never_reach_the_output(make_client: ClientFactory, logs: LogOutput) -> None:
    app = RequestIdMiddleware(
        AccessLogMiddleware(
            ErrorMiddleware(build_app("starlette")),
            request_headers=["Authorization", "Cookie", "X-API-Key", "User-Agent"],
        )
    )
    response = await make_client(app).get(
        "/items/1?token=s3cr3t&page=2&Api_Key=s3cr3t&SIGNATURE=s3cr3t",
        headers={
            "Authorization": "Bearer s3cr3t",
            "Cookie": "session=s3cr3t",
            "X-API-Key": "s3cr3t",
            "User-Agent": "probe/1.0",
        },
    )
    assert response.status_code == 200
    assert "s3cr3t" not in logs.text
    [line] = logs.events(EVENT)
    assert line["query"] == "token=[REDACTED]&page=2&Api_Key=[REDACTED]&SIGNATURE=[REDACTED]"
    assert line["headers"] == {
        "authorization": "[REDACTED]",
        "cookie": "[REDACTED]",
        "x-api-key": "[REDACTED]",
        "user-agent": "probe/1.0",
    }


async def test_successes_can_be_sampled_but_errors_never_are(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    client = make_client(AccessLogMiddleware(build_app("starlette"), sample_rate=0.0))
    for _ in range(5):
        await client.get("/items/1")
    await client.get("/missing")
    await _get_ignoring_app_errors(client, "/boom")
    assert [line["status"] for line in logs.events(EVENT)] == [404, 500]


async def test_excluded_paths_are_not_logged(make_client: ClientFactory, logs: LogOutput) -> None:
    client = make_client(
        AccessLogMiddleware(build_app("starlette"), exclude_paths=["/items/1", "/stream/*"])
    )
    await client.get("/items/1")
    await client.get("/items/2")
    assert [line["path"] for line in logs.events(EVENT)] == ["/items/2"]


async def test_levels_are_configurable(make_client: ClientFactory, logs: LogOutput) -> None:
    client = make_client(
        AccessLogMiddleware(build_app("starlette"), levels={2: "debug", 4: "info"})
    )
    await client.get("/items/1")
    await client.get("/missing")
    assert [line["level"] for line in logs.events(EVENT)] == ["debug", "info"]


async def test_disabled_level_writes_nothing(make_client: ClientFactory) -> None:
    with capture_log_output(level="warning") as output:
        client = make_client(AccessLogMiddleware(build_app("starlette")))
        await client.get("/items/1")
        await client.get("/missing")
    assert [line["status"] for line in output.events(EVENT)] == [404]


# X-Forwarded-For is believed only from a trusted proxy (ClientAddressResolver's rules).
@pytest.mark.parametrize(
    ("peer", "trusted", "forwarded_for", "expected"),
    [
        ("10.0.0.1", ["10.0.0.0/8"], "203.0.113.9", "203.0.113.9"),
        ("198.51.100.7", ["10.0.0.0/8"], "203.0.113.9", "198.51.100.7"),  # spoofed
        ("10.0.0.1", [], "203.0.113.9", "10.0.0.1"),  # no trusted proxies configured
    ],
)
async def test_client_address_through_trusted_proxies(
    peer: str,
    trusted: list[str],
    forwarded_for: str,
    expected: str,
    make_client: ClientFactory,
    logs: LogOutput,
) -> None:
    app = AccessLogMiddleware(build_app("raw"), trusted_proxies=trusted)
    client = make_client(app, client=(peer, 4000))
    await client.get("/items/1", headers={"X-Forwarded-For": forwarded_for})
    [line] = logs.events(EVENT)
    assert line["client"] == expected


# Without trusted proxies the client is the peer, whose canonical text the access log keeps per
# peer address (it costs 1 to 4 µs to write an address out): the line must name the client that
# ClientAddressResolver.resolve() names for the same request, whether remembered or not.
_PEERS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda address: f"::ffff:{address}"),  # IPv4-mapped IPv6
    st.ip_addresses(v=4).map(lambda address: f"{address}:8080"),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]:443"),
    st.ip_addresses(v=6).map(lambda address: f"{address}%eth0"),
    st.sampled_from(["testclient", "", " 10.0.0.1 ", '"10.0.0.2"', "unix:/run/app.sock"]),
    st.text(max_size=20),
)


@settings(deadline=None)  # behaviour, never time: a busy machine is slow
@given(peers=st.lists(st.none() | _PEERS, min_size=1, max_size=6))
async def test_the_client_is_the_resolvers_client(peers: list[str | None]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    middleware = AccessLogMiddleware(app)
    expected = []
    with capture_log_output() as output:
        for peer in [*peers, *peers]:  # each peer again, once its text is remembered
            scope: Scope = {
                "type": "http",
                "method": "GET",
                "path": "/",
                "query_string": b"",
                "headers": [(b"x-forwarded-for", b"203.0.113.9")],
                "client": None if peer is None else (peer, 4000),
            }
            await middleware(scope, receive, send)
            expected.append(ClientAddressResolver().resolve(scope))
    assert [line["client"] for line in output.events(EVENT)] == expected


async def test_custom_logger_event_and_level_callable(make_client: ClientFactory) -> None:
    with capture_log_output() as output:
        app = AccessLogMiddleware(
            build_app("raw"),
            logger=structlog.get_logger("myapp.http"),
            event="http",
            levels=lambda status: "critical" if status == 404 else "info",
        )
        await make_client(app).get("/nope")
    [line] = output.events("http")
    assert (line["logger"], line["level"]) == ("myapp.http", "critical")


@pytest.mark.parametrize("cache_loggers", [True, False])
async def test_a_given_logger_follows_a_new_configuration_as_structlog_does(
    make_client: ClientFactory, cache_loggers: bool
) -> None:
    # structlog's lazy logger keeps the configuration it first saw only when
    # cache_logger_on_first_use is on; the access log keeps its logger in that case only.
    logger = structlog.get_logger("myapp.http")
    client = make_client(AccessLogMiddleware(build_app("raw"), logger=logger))
    first, second = io.StringIO(), io.StringIO()
    with capture_log_output():  # puts the test run's setup back afterwards
        configure_logging("info", stream=first, cache_loggers=cache_loggers)
        await client.get("/items/1")
        logger.info("direct")
        configure_logging("info", stream=second, cache_loggers=cache_loggers)
        await client.get("/items/2")
        logger.info("direct")

    def written(stream: io.StringIO) -> list[str]:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [line.get("path", line["event"]) for line in lines if line["logger"] == "myapp.http"]

    # Wherever structlog's own call wrote its second line, the access log wrote its own.
    if cache_loggers:
        both = ["/items/1", "direct", "/items/2", "direct"]
        assert (written(first), written(second)) == (both, [])
    else:
        assert (written(first), written(second)) == (["/items/1", "direct"], ["/items/2", "direct"])


async def test_a_given_logger_below_its_level_writes_nothing(make_client: ClientFactory) -> None:
    with capture_log_output() as output:
        quiet = structlog.wrap_logger(
            structlog.WriteLogger(io.StringIO()),
            wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        )
        loud = structlog.get_logger("myapp.http")
        for logger in (quiet, loud):
            await make_client(AccessLogMiddleware(build_app("raw"), logger=logger)).get("/x")
    assert [line["status"] for line in output.events(EVENT)] == [404]


@pytest.mark.parametrize(
    "wrapper_class",
    [structlog.BoundLogger, structlog.stdlib.BoundLogger, structlog.make_filtering_bound_logger(0)],
)
async def test_any_structlog_wrapper_class_writes_the_line(
    make_client: ClientFactory, wrapper_class: Any
) -> None:
    # structlog's generic BoundLogger answers any attribute (``is_enabled_for`` too) with a
    # logging method of that name: only a level check its class defines may be asked.
    stream = io.StringIO()
    wrapped: Any = structlog.PrintLogger(stream)
    if wrapper_class is structlog.stdlib.BoundLogger:
        wrapped = logging.Logger("test.access.wrapper", logging.INFO)  # in no registry
        wrapped.addHandler(logging.StreamHandler(stream))
    logger = structlog.wrap_logger(
        wrapped, wrapper_class=wrapper_class, processors=[structlog.processors.JSONRenderer()]
    )
    await make_client(AccessLogMiddleware(build_app("raw"), logger=logger)).get("/items/3")
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["event"], line["path"], line["status"]) == (EVENT, "/items/3", 200)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"levels": {4: "loud"}}, "levels"),
        ({"levels": {7: "info"}}, "status class"),
        ({"exclude_paths": "/livez"}, "exclude_paths"),
        ({"exclude_paths": ["livez"]}, "must start with"),
        ({"trusted_proxies": ["not-an-ip"]}, "trusted_proxies"),
        (
            {"trusted_proxies": ["10.0.0.1"], "client_resolver": ClientAddressResolver()},
            "either",
        ),
        ({"request_headers": "authorization"}, "request_headers"),
    ],
)
def test_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AccessLogMiddleware(build_app("raw"), **options)


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    by_keyword = AccessLogMiddleware(build_app("raw"), event="served", exclude_paths=["/livez"])
    options = AccessLogOptions(event="served", exclude_paths=["/livez"])
    by_object = AccessLogMiddleware(build_app("raw"), options=options)
    assert by_object.options is options
    assert by_keyword.options == options
    for middleware in (by_keyword, by_object):
        client = make_client(middleware)
        await client.get("/livez")
        await client.get("/items/1")
    lines = [line for line in logs.events() if line.get("path") in ("/livez", "/items/1")]
    assert [(line["event"], line["path"]) for line in lines] == [("served", "/items/1")] * 2


def test_the_defaults_are_the_options_defaults() -> None:
    middleware = AccessLogMiddleware(build_app("raw"))
    assert middleware.options == AccessLogOptions()
    assert (middleware.event, middleware.sample_rate) == (EVENT, 1.0)
    assert middleware.request_headers == ()


def test_lists_are_kept_as_tuples_read_once() -> None:
    options = AccessLogOptions(
        exclude_paths=(path for path in ["/livez"]),
        trusted_proxies="10.0.0.1, 10.0.0.2",
        request_headers=iter([" User-Agent"]),
    )
    assert options.exclude_paths == ("/livez",)
    assert options.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert options.request_headers == ("User-Agent",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": -0.1}, "sample_rate=-0.1: not from 0 to 1; write a number from 0 to 1"),
        ({"levels": {4: "loud"}}, "levels[4]='loud': not one of the choices; write one of"),
        ({"levels": {7: "info"}}, "levels={7: 'info'}: 7 is not a status class (1 to 5)"),
        ({"request_headers": ["X Id"]}, "request_headers=['X Id']: 'X Id' is not a header name"),
        ({"exclude_paths": "/livez"}, "exclude_paths='/livez': a list of paths, not one string"),
        (
            {"trusted_proxies": "10.0.0.1", "client_resolver": ClientAddressResolver()},
            "trusted_proxies=('10.0.0.1',): given with client_resolver; write either",
        ),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        AccessLogOptions(**options)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(AccessLogKeywords) == get_type_hints(AccessLogOptions)


async def test_lines_are_single_json_objects(make_client: ClientFactory, logs: LogOutput) -> None:
    client = make_client(AccessLogMiddleware(build_app("raw")))
    await client.get("/items/%0Afake%20line")
    for text in logs.lines():
        assert isinstance(json.loads(text), dict)


async def test_exception_after_the_response_started_keeps_the_status(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ConnectionError("upstream went away mid-stream")

    with pytest.raises(ConnectionError):
        await make_client(AccessLogMiddleware(app)).get("/export")
    [line] = logs.events(EVENT)
    assert (line["status"], line["bytes"], line["level"]) == (200, 4, "error")
    assert line["exc_type"] == "ConnectionError"


async def test_cached_loggers_write_every_line(make_client: ClientFactory) -> None:
    with capture_log_output(cache_loggers=True) as output:
        client = make_client(AccessLogMiddleware(build_app("raw")))
        for index in range(3):
            await client.get(f"/items/{index}")
    assert [line["path"] for line in output.events(EVENT)] == ["/items/0", "/items/1", "/items/2"]


async def test_recommended_stack_logs_and_counts_every_request_once(
    framework: str, make_client: ClientFactory, logs: LogOutput
) -> None:
    from prodkit.metrics import HTTPMetricsMiddleware

    inner = ErrorMiddleware(build_app(framework))

    class RejectBusy:
        """Stands in for a rate limiter: ``X-Busy: 1`` gets a 429 problem."""

        app = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and (b"x-busy", b"1") in scope["headers"]:
                await send_problem(send, 429, "RATE_LIMITED", headers={"Retry-After": "3"})
                return
            await self.app(scope, receive, send)

    registry = CollectorRegistry()
    app = RequestIdMiddleware(
        AccessLogMiddleware(HTTPMetricsMiddleware(RejectBusy(), registry=registry))
    )
    client = make_client(app)
    statuses = [
        (await client.get("/items/1")).status_code,
        (await client.get("/nowhere")).status_code,
        (await client.get("/boom")).status_code,
        (await client.get("/items/2", headers={"X-Busy": "1"})).status_code,
    ]
    assert statuses == [200, 404, 500, 429]
    lines = logs.events(EVENT)
    assert [line["status"] for line in lines] == statuses
    assert all(line["request_id"] for line in lines)
    counted = sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "http_request_duration_seconds_count"
    )
    assert counted == len(statuses)


async def test_the_line_says_whether_a_response_was_replayed_or_cached(
    make_client: ClientFactory, logs: LogOutput
) -> None:
    # Issue 22, item 8: a replay and a creation, a hit and a miss, must not read the same.
    # The real idempotency and cache layers, read only through the headers they answer with.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json")]
        status = 201 if scope["method"] == "POST" else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    registry = CollectorRegistry()
    cached = CacheMiddleware(app, routes={"/items/{id}": CacheRule(ttl=60)}, registry=registry)
    idempotent = IdempotencyMiddleware(cached, store=MemoryIdempotencyStore(), registry=registry)
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(idempotent)))
    key = {"Idempotency-Key": "order-1", "Authorization": "Bearer alice"}
    responses = [
        await client.post("/orders", json={"n": 1}, headers=key),
        await client.post("/orders", json={"n": 1}, headers=key),
        await client.get("/items/1"),
        await client.get("/items/1"),
        await client.get("/other"),
    ]
    assert [r.headers.get("idempotency-status") for r in responses[:2]] == [
        "created",
        "replayed",
    ]
    assert [r.headers.get("x-cache") for r in responses[2:4]] == ["MISS", "HIT"]
    lines = logs.events(EVENT)
    assert [line.get("idempotency_status") for line in lines] == [
        "created",
        "replayed",
        None,
        None,
        None,
    ]
    assert [line.get("cache") for line in lines] == [None, None, "MISS", "HIT", None]


async def test_without_any_logging_setup_the_line_is_json_on_stdout(
    make_client: ClientFactory, unconfigured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 22, item 2: structlog's defaults would print a console line (with Rich, a
    # traceback with local variables): prodkit's own line is one JSON line whatever the setup.
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(build_app("starlette"))))
    await client.get("/items/7?token=s3cret&page=2", headers={"X-Request-ID": "bare-1"})
    await client.get("/items/8", headers={"X-Request-ID": "bare-2"})
    out = capsys.readouterr().out
    lines = [json.loads(text) for text in out.splitlines()]
    assert [(line["event"], line["request_id"]) for line in lines] == [
        (EVENT, "bare-1"),
        (EVENT, "bare-2"),
    ]
    assert lines[0]["query"] == "token=[REDACTED]&page=2"
    assert {"timestamp", "level", "logger", "pid", "hostname", "route"} <= set(lines[0])
    assert "s3cret" not in out
