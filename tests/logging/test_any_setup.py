"""prodkit's own lines (access, errors, warnings) are safe under ANY logging setup.

Issue 21 item 5 and issue 22 item 2: an unhandled ``httpx.HTTPStatusError`` carries its URL,
``?api_key=...`` included, and structlog's default console renderer with Rich installed (Litestar
pulls it in) prints every frame's local variables. Whatever the application did with logging
(nothing; structlog's defaults; its own JSON chain with ``dict_tracebacks``; the standard
library; prodkit's ``configure_logging``), prodkit redacts its lines and turns exceptions into
a plain traceback before any processor of the application's sees them.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
import structlog

from prodkit import BackendError, ErrorMiddleware, RequestIdMiddleware
from prodkit.asgi import CircuitBreaker, Receive, Scope, Send
from prodkit.logging import AccessLogMiddleware
from prodkit.testing import capture_log_output
from tests.conftest import ClientFactory

#: The planted secret (a fake live key): not one character of it may reach the output.
SECRET = "sk_live_planted-fake-secret-42"  # noqa: S105 - a fake secret that must never be rendered
#: The name of a local variable holding it: it shows only if a frame's locals are rendered.
LOCAL_NAME = "upstream_key"

#: What each setup writes, read after the requests: its name -> a function returning the text.
Output = Callable[[], str]
SETUPS = ["unconfigured", "structlog-defaults", "own-json-chain", "stdlib", "configure_logging"]


@pytest.fixture(params=SETUPS)
def output(
    request: pytest.FixtureRequest, unconfigured: None, capsys: pytest.CaptureFixture[str]
) -> Iterator[Output]:
    """Set logging up as an application might, and give a way to read what was written."""
    name = request.param
    stream = io.StringIO()
    if name == "unconfigured":
        yield lambda: capsys.readouterr().out
        return
    if name == "configure_logging":
        with capture_log_output(level="info") as captured:
            yield lambda: captured.text
        return
    if name == "structlog-defaults":
        # The default processors, whose ConsoleRenderer renders exc_info with Rich, locals on.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
        yield stream.getvalue
        return
    if name == "own-json-chain":
        # A common JSON set-up: dict_tracebacks shows locals by default.
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(stream),
        )
        yield stream.getvalue
        return
    # The standard library's handlers, rendering with structlog's ConsoleRenderer (Rich).
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(logging.Filter("prodkit"))  # not the test client's own request lines
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.dev.ConsoleRenderer())
    )
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream.getvalue
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def charge(scope: Scope, receive: Receive, send: Send) -> None:
    """Call a payment API that refuses, the way a real client fails: with the URL in the error."""
    if scope["path"] == "/charge":
        upstream_key = SECRET
        url = f"https://api.example.com/v1/charges?api_key={upstream_key}"
        try:
            httpx.Response(401, request=httpx.Request("GET", url)).raise_for_status()
        except httpx.HTTPStatusError as exc:
            exc.add_note(f"sent Authorization: Bearer {upstream_key}")
            raise RuntimeError(
                f"charge failed, cache at redis://:{upstream_key}@cache:6379"
            ) from exc
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_no_secret_and_no_local_variable_in_any_setup(
    output: Output, make_client: ClientFactory
) -> None:
    app = RequestIdMiddleware(AccessLogMiddleware(ErrorMiddleware(charge)))
    client = make_client(app)
    secret_headers = {"Authorization": f"Bearer {SECRET}"}
    failed = await client.get(f"/charge?api_key={SECRET}", headers=secret_headers)
    served = await client.get(f"/items/1?api_key={SECRET}&page=2", headers=secret_headers)
    assert (failed.status_code, served.status_code) == (500, 200)

    async def refused() -> None:
        raise ConnectionError(f"connect to postgresql://app:{SECRET}@db:5432/app refused")

    breaker = CircuitBreaker("payments-db", failure_threshold=1)
    with pytest.raises(BackendError):
        await breaker.call(refused)

    text = output()
    assert SECRET not in text
    assert LOCAL_NAME not in text  # no frame's variables, in any renderer
    assert "unhandled exception" in text
    assert "circuit breaker opened" in text
    # The traceback is still there, chained cause and note included, redacted.
    assert "HTTPStatusError" in text
    assert "RuntimeError" in text
    assert "api_key=[REDACTED]" in text
    assert "Bearer [REDACTED]" in text
    assert text.count("request completed") == 2


async def test_unconfigured_lines_are_json(
    unconfigured: None, capsys: pytest.CaptureFixture[str], make_client: ClientFactory
) -> None:
    client = make_client(RequestIdMiddleware(AccessLogMiddleware(ErrorMiddleware(charge))))
    await client.get("/charge", headers={"X-Request-ID": "rid-9"})
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert [(line["event"], line["logger"], line["level"]) for line in lines] == [
        ("unhandled exception", "prodkit.errors", "error"),
        ("request completed", "prodkit.access", "error"),
    ]
    error = lines[0]
    assert error["request_id"] == "rid-9"
    assert (error["method"], error["path"], error["exc_type"]) == ("GET", "/charge", "RuntimeError")
    assert error["exception"].startswith("Traceback (most recent call last):\n")
    assert (
        "The above exception was the direct cause of the following exception"
        in (error["exception"])
    )
    assert "exc_info" not in error
