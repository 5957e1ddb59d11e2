"""ErrorMiddleware: problem+json for unhandled exceptions and raised Problems, logged once."""

from __future__ import annotations

import re
from typing import Any, get_type_hints

import pytest
import structlog

from prodkit import (
    AccessLogMiddleware,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    ErrorMiddleware,
    FieldError,
    Problem,
    RequestIdMiddleware,
)
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, problem_type, request_state
from prodkit.errors import ErrorKeywords, ErrorOptions
from tests.apps import FRAMEWORKS, SECRET_TEXT, build_app, mounted_starlette_app
from tests.conftest import ClientFactory


async def test_unhandled_exception_is_a_500_problem(
    framework: str, make_client: ClientFactory
) -> None:
    client = make_client(RequestIdMiddleware(ErrorMiddleware(build_app(framework))))
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 500
    assert body["code"] == "INTERNAL_ERROR"
    assert body["type"] == problem_type("INTERNAL_ERROR")
    assert body["title"] == "Internal Server Error"
    assert body["request_id"] == response.headers["x-request-id"]
    assert SECRET_TEXT not in response.text
    assert "Traceback" not in response.text
    if framework != "django":  # Django logs it itself, through django.request
        # Litestar answers the exception itself, but while handling it: logged all the same.
        assert [entry["event"] for entry in logs] == ["unhandled exception"]
        # The traceback as text, redacted: no exc_info for a renderer to expand into locals.
        assert logs[0]["exception"].startswith("Traceback (most recent call last):")
        assert "exc_info" not in logs[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_raised_problem_is_rendered(framework: str, make_client: ClientFactory) -> None:
    client = make_client(RequestIdMiddleware(ErrorMiddleware(build_app(framework))))
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/problem", headers={"X-Request-ID": "p-1"})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": problem_type("DEMO_CONFLICT"),
        "title": "Conflict",
        "status": 409,
        "detail": "demo conflict",
        "code": "DEMO_CONFLICT",
        "hint": "retry later",
        "request_id": "p-1",
    }
    assert not [entry for entry in logs if entry["log_level"] == "error"]


async def test_validation_problem_has_pointers_and_headers(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise Problem(
            422,
            "VALIDATION_FAILED",
            "2 fields are invalid",
            errors=[
                FieldError("/name", "must not be empty"),
                FieldError("/stages/0/months", "must be >= 1"),
            ],
            headers={"Retry-After": "5"},
        )

    response = await make_client(ErrorMiddleware(app)).post("/")
    assert response.status_code == 422
    assert response.headers["retry-after"] == "5"
    assert response.json()["errors"] == [
        {"pointer": "/name", "detail": "must not be empty"},
        {"pointer": "/stages/0/months", "detail": "must be >= 1"},
    ]


async def test_no_second_response_after_the_response_started(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    with structlog.testing.capture_logs() as logs, pytest.raises(RuntimeError, match="mid-stream"):
        await ErrorMiddleware(app)(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send
        )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert [entry["event"] for entry in logs] == ["unhandled exception"]


async def test_plain_500_from_the_app_becomes_a_problem(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"Internal Server Error: " + SECRET_TEXT.encode(),
            }
        )

    response = await make_client(ErrorMiddleware(app)).get("/")
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert SECRET_TEXT not in response.text


async def test_other_5xx_and_successes_pass_untouched_without_conversion(
    make_client: ClientFactory,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = 503 if scope["path"] == "/busy" else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"as sent"})

    client = make_client(ErrorMiddleware(app, convert_framework_errors=False))
    for path, status in (("/busy", 503), ("/ok", 200)):
        response = await client.get(path)
        assert (response.status_code, response.text) == (status, "as sent")
    # By default the 503 is a problem that keeps the text; the 200 is untouched either way.
    client = make_client(ErrorMiddleware(app))
    busy, ok = await client.get("/busy"), await client.get("/ok")
    assert busy.status_code == 503
    assert (busy.json()["code"], busy.json()["detail"]) == ("SERVICE_UNAVAILABLE", "as sent")
    assert (ok.status_code, ok.headers["content-type"], ok.text) == (200, "text/plain", "as sent")


async def test_streaming_and_mounted_apps_pass_through(make_client: ClientFactory) -> None:
    response = await make_client(ErrorMiddleware(mounted_starlette_app())).get("/api/items/3")
    assert (response.status_code, response.text) == (200, "ok")
    response = await make_client(ErrorMiddleware(build_app("starlette"))).get("/stream")
    assert response.text == "abc"


async def test_a_client_that_disconnected_mid_body_is_not_a_server_error() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def upload(request: Request) -> Response:
        await request.body()  # raises ClientDisconnect when the client is gone
        return Response("ok")

    app = ErrorMiddleware(Starlette(routes=[Route("/upload", upload, methods=["POST"])]))
    messages: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [],
        "query_string": b"",
    }
    with structlog.testing.capture_logs() as logs:
        await app(scope, receive, send)
    assert [m for m in sent if m["type"] == "http.response.start" and m["status"] >= 500] == []
    assert [entry["event"] for entry in logs] == ["client disconnected before the response"]
    # Nothing for the outer layers to report: the client left, no exception is recorded.
    assert request_state(scope).error is None


def _plain_500(*chunks: bytes) -> ASGIApp:
    """An app that answers a plain-text 500 in ``chunks``, as a framework's own handler does."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"text/plain")],
        }
        await send(start)
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


async def test_a_plain_500_larger_than_hold_limit_goes_out_as_it_is(
    make_client: ClientFactory,
) -> None:
    app = ErrorMiddleware(_plain_500(b"first ", b"second ", b"third"), hold_limit=8)
    response = await make_client(app).get("/")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "first second third"


async def test_a_plain_500_within_hold_limit_is_replaced(make_client: ClientFactory) -> None:
    app = ErrorMiddleware(_plain_500(b"first ", b"second"), hold_limit=12)
    response = await make_client(app).get("/")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "INTERNAL_ERROR"


async def test_replace_server_errors_off_passes_a_plain_500(make_client: ClientFactory) -> None:
    app = ErrorMiddleware(_plain_500(b"as sent"), replace_server_errors=False)
    response = await make_client(app).get("/")
    assert (response.status_code, response.text) == (500, "as sent")


async def test_a_problem_500_from_the_app_is_not_replaced(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Problem(500, "APP_DEFINED", "the app's own problem").send(send)

    response = await make_client(ErrorMiddleware(app)).get("/")
    assert (response.status_code, response.json()["code"]) == (500, "APP_DEFINED")


@pytest.mark.parametrize(
    "content_type",
    [
        (b"content-type", b"application/problem+json; charset=utf-8"),
        (b"Content-Type", b"application/problem+json"),  # as Django writes its header names
    ],
)
async def test_a_problem_500_is_recognised_by_its_media_type(
    content_type: tuple[bytes, bytes], make_client: ClientFactory
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": [content_type]})
        await send({"type": "http.response.body", "body": b'{"code":"APP_DEFINED"}'})

    response = await make_client(ErrorMiddleware(app)).get("/")
    assert (response.status_code, response.json()) == (500, {"code": "APP_DEFINED"})


async def test_a_problem_raised_after_the_response_started_is_logged_and_re_raised() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise Problem(409, "TOO_LATE", "raised once the response had started")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    with structlog.testing.capture_logs() as logs, pytest.raises(Problem):
        await ErrorMiddleware(app)(
            {"type": "http", "method": "GET", "path": "/late", "headers": []}, receive, send
        )
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("exception after the response started", "error", "/late")
    ]


async def test_an_unhandled_exception_is_left_in_the_scope_for_outer_layers() -> None:
    failure = RuntimeError("boom")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise failure

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with structlog.testing.capture_logs() as logs:
        await ErrorMiddleware(app)(scope, receive, send)
    assert request_state(scope).error is failure  # the access log and metrics report it
    assert [(e["event"], e["log_level"], e["exc_type"]) for e in logs] == [
        ("unhandled exception", "error", "RuntimeError")
    ]


# -- a dependency that is unavailable: 503 DEPENDENCY_UNAVAILABLE -----------------------------


class PoolTimeout(TimeoutError):
    """Stands for a driver's own timeout class (asyncpg raises TimeoutError subclasses)."""


def _raise_from(cause: BaseException) -> None:
    raise RuntimeError("the repository failed") from cause


def _raise_while_handling(context: BaseException) -> None:
    try:
        raise context
    except type(context):
        raise RuntimeError("a bug in the except block")  # noqa: B904 - the implicit context is the point


def _raised(make: Any) -> BaseException:
    """The exception ``make()`` raises, with its cause or context as Python links them."""
    try:
        make()
    except BaseException as exc:
        return exc
    raise AssertionError("make() did not raise")


def _throw(exc: BaseException) -> Any:
    def make() -> None:
        raise exc

    return make


@pytest.mark.parametrize(
    ("make", "unavailable", "status"),
    [
        # prodkit's own BackendError (a store down, an open breaker) always means unavailable.
        (_throw(BackendError("redis: ConnectionError")), (), 503),
        (_throw(BackendUnavailableError("breaker open")), (), 503),
        # The classes given, and their subclasses.
        (_throw(OSError("connection refused")), (OSError,), 503),
        (_throw(ConnectionRefusedError("refused")), (OSError,), 503),
        (_throw(PoolTimeout()), (TimeoutError,), 503),
        # Not listed: an unhandled exception as before.
        (_throw(OSError("connection refused")), (), 500),
        (_throw(ValueError("bad")), (OSError, TimeoutError), 500),
        # Raised from one (``raise ... from exc``): the app wrapped the driver's error.
        (lambda: _raise_from(TimeoutError()), (TimeoutError,), 503),
        (lambda: _raise_from(RuntimeError("x")), (TimeoutError,), 500),
        # Raised while handling one, without ``from``: a bug in the handler stays a 500.
        (lambda: _raise_while_handling(OSError("refused")), (OSError,), 500),
        # A task group whose every task lost the database; not if one of them hit a bug.
        (_throw(ExceptionGroup("both", [OSError(), TimeoutError()])), (OSError,), 503),
        (_throw(ExceptionGroup("one", [OSError(), ValueError()])), (OSError,), 500),
    ],
)
async def test_unavailable_dependencies_are_503_with_retry_after(
    make: Any,
    unavailable: tuple[type[BaseException], ...],
    status: int,
    make_client: ClientFactory,
) -> None:
    failure = _raised(make)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise failure

    middleware = ErrorMiddleware(app, unavailable=unavailable, unavailable_retry_after=3)
    client = make_client(RequestIdMiddleware(middleware))
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/api/funds", headers={"X-Request-ID": "outage-1"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if status == 500:
        assert body["code"] == "INTERNAL_ERROR"
        assert "retry-after" not in response.headers
        assert [e["event"] for e in logs] == ["unhandled exception"]
        return
    assert response.headers["retry-after"] == "3"
    assert response.headers["cache-control"] == "no-store"
    assert body == {
        "type": problem_type("DEPENDENCY_UNAVAILABLE"),
        "title": "Service Unavailable",
        "status": 503,
        "detail": "A service this request depends on is unavailable; retry in 3 s.",
        "code": "DEPENDENCY_UNAVAILABLE",
        "request_id": "outage-1",
    }
    # One warning, no traceback: an outage is not a bug in the code.
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("dependency unavailable", "warning", "/api/funds")
    ]
    assert logs[0]["exc_type"] == type(failure).__name__
    assert logs[0]["method"] == "GET"
    assert "error" in logs[0]  # the exception's message
    assert "exc_info" not in logs[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_unavailable_through_each_framework(
    framework: str, make_client: ClientFactory
) -> None:
    # /boom raises RuntimeError: declared unavailable here, it is answered 503 whether the
    # framework lets it through (Starlette re-raises after its own 500, which is held back) or
    # answers it itself while handling it (Litestar). Django answers and logs it on its own and
    # never shows prodkit the exception: its plain 500 becomes INTERNAL_ERROR.
    app = ErrorMiddleware(build_app(framework), unavailable=[RuntimeError])
    with structlog.testing.capture_logs():
        response = await make_client(app).get("/boom")
    expected = (500, "INTERNAL_ERROR") if framework == "django" else (503, "DEPENDENCY_UNAVAILABLE")
    assert (response.status_code, response.json()["code"]) == expected
    assert SECRET_TEXT not in response.text
    if framework != "django":
        assert response.headers["retry-after"] == "2"  # the default


async def test_unavailable_after_the_response_started_is_still_re_raised() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise OSError("connection lost mid-stream")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    with structlog.testing.capture_logs(), pytest.raises(OSError, match="mid-stream"):
        await ErrorMiddleware(app, unavailable=[OSError])(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send
        )
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_the_access_log_records_an_unavailable_answer_at_its_status_level(
    make_client: ClientFactory,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise BackendError("store down")

    # 5xx at warning here: an exception left for the access log would force "error".
    logged = AccessLogMiddleware(ErrorMiddleware(app), levels={5: "warning"})
    with structlog.testing.capture_logs() as logs:
        response = await make_client(logged).get("/api/funds")
    assert response.status_code == 503
    (line,) = [e for e in logs if e["event"] == "request completed"]
    assert (line["status"], line["log_level"]) == (503, "warning")
    assert "exc_type" not in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unavailable": OSError}, "a list of exception classes"),
        ({"unavailable": ["OSError"]}, "not an exception class"),
        ({"unavailable": [OSError()]}, "not an exception class"),
        ({"unavailable_retry_after": 0}, "from 1 to 60"),
        ({"unavailable_retry_after": 61}, "from 1 to 60"),
        ({"unavailable_retry_after": 1.5}, "from 1 to 60"),
    ],
)
def test_invalid_unavailable_options_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ErrorMiddleware(build_app("starlette"), **options)


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    by_keyword = ErrorMiddleware(_plain_500(b"as sent"), replace_server_errors=False)
    options = ErrorOptions(replace_server_errors=False)
    by_object = ErrorMiddleware(_plain_500(b"as sent"), options=options)
    assert by_object.options is options
    assert by_keyword.options == options
    for middleware in (by_keyword, by_object):
        response = await make_client(middleware).get("/")
        assert (response.status_code, response.text) == (500, "as sent")


def test_the_defaults_are_the_options_defaults() -> None:
    middleware = ErrorMiddleware(build_app("raw"))
    assert middleware.options == ErrorOptions()
    assert (middleware.hold_limit, middleware.unavailable_retry_after) == (65536, 2)
    assert middleware.unavailable == (BackendError,)


def test_unavailable_is_kept_as_a_tuple_read_once() -> None:
    options = ErrorOptions(unavailable=(kind for kind in [OSError, TimeoutError]))
    assert options.unavailable == (OSError, TimeoutError)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hold_limit": -1}, "hold_limit=-1: negative; write an integer of 0 or more"),
        ({"unavailable": OSError}, "unavailable=OSError: one class, not a list"),
        ({"unavailable_retry_after": True}, "unavailable_retry_after=True: not an integer"),
        ({"unavailable_retry_after": 61}, "unavailable_retry_after=61: more than 60"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ErrorOptions(**options)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(ErrorKeywords) == get_type_hints(ErrorOptions)
