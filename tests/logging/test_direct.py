"""The access log's fast path: the same line as the bound logger's, only under prodkit's setup."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import json
import re
from typing import Any
from urllib.parse import urlencode

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.typing import EventDict, Processor

from prodkit import RequestIdMiddleware
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send
from prodkit.logging import AccessLogMiddleware
from prodkit.logging._config import configure_logging
from prodkit.logging._direct import direct_writer
from prodkit.testing import capture_log_output, capture_logs


def _direct_and_usual(stream: io.StringIO, fields: dict[str, Any]) -> tuple[Any, Any]:
    write = direct_writer("prodkit.access", "warning")
    assert callable(write)
    write("request completed", dict(fields))
    structlog.get_logger("prodkit.access").warning("request completed", **fields)
    direct, usual = (json.loads(line) for line in stream.getvalue().split("\n")[:2])
    assert direct.pop("timestamp") <= usual.pop("timestamp")
    return direct, usual


# The access log writes its lines without structlog's per-call wrapper while prodkit's own
# configuration is in place; the line must be the one the bound logger would have written.
_SAFE_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(
    fields=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda key: key not in ("event", "level", "timestamp", "logger")
        ),
        st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False), _SAFE_TEXT, st.none()),
        max_size=6,
    )
)
def test_direct_access_lines_equal_structlog_lines(fields: dict[str, Any]) -> None:
    stream = io.StringIO()
    with capture_log_output():  # puts the previous setup back afterwards
        configure_logging("info", "json", stream=stream)
        direct, usual = _direct_and_usual(stream, fields)
    assert list(direct.items()) == list(usual.items())  # same keys, values and order


def _bound_values_line() -> tuple[Any, Any]:
    structlog.contextvars.bind_contextvars(user_id="alice", status="bound")
    stream = io.StringIO()
    with capture_log_output():
        configure_logging("info", "json", stream=stream)
        return _direct_and_usual(stream, {"status": 200, "path": "/x"})


def test_direct_access_lines_carry_context_values_like_structlog_lines() -> None:
    direct, usual = contextvars.copy_context().run(_bound_values_line)
    assert list(direct.items()) == list(usual.items())
    assert (direct["user_id"], direct["status"]) == ("alice", 200)  # the call's value wins


def test_direct_access_lines_follow_the_configuration() -> None:
    with capture_log_output():  # puts the previous setup back afterwards
        configure_logging("warning", "json", stream=io.StringIO())
        assert direct_writer("prodkit.access", "info") is False  # filtered, as the logger would
        assert callable(direct_writer("prodkit.access", "error"))
        with capture_logs() as captured:  # capture changes the processors in place
            assert direct_writer("prodkit.access", "error") is True
            structlog.get_logger("prodkit.access").error("seen")
        assert [event["event"] for event in captured] == ["seen"]
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        assert direct_writer("prodkit.access", "error") is True  # someone else's configuration
        structlog.reset_defaults()


def test_a_replaced_wrapper_or_factory_is_someone_elses_configuration() -> None:
    with capture_log_output():
        configure_logging("info", "json", stream=io.StringIO())
        assert callable(direct_writer("prodkit.access", "info"))
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
        assert direct_writer("prodkit.access", "info") is True
        configure_logging("info", "json", stream=io.StringIO())
        structlog.configure(logger_factory=structlog.PrintLoggerFactory())
        assert direct_writer("prodkit.access", "info") is True


def test_an_earlier_setup_put_back_gets_its_direct_path_back() -> None:
    stream = io.StringIO()
    with capture_log_output():  # the outermost block puts the test run's setup back
        configure_logging("info", "json", stream=stream)
        with capture_log_output() as output:  # a second installation for the inner block
            write = direct_writer("prodkit.access", "info")
            assert callable(write)
            write("inside", {})
        assert [line["event"] for line in output.events()] == ["inside"]
        write = direct_writer("prodkit.access", "info")  # the first installation again
        assert callable(write)
        write("after", {})
    assert [json.loads(line)["event"] for line in stream.getvalue().split("\n") if line] == [
        "after"
    ]


# -- the access log's two paths, request for request -------------------------------------------
#
# ``AccessLogMiddleware()`` writes through the direct writer while prodkit's configuration is
# in place; ``AccessLogMiddleware(logger=structlog.get_logger("prodkit.access"))`` writes the
# same event through structlog's public bound-logger call. Every request must give both the
# same line: the same keys in the same order with the same values, the same redaction, the
# same timestamp format, the same level filtering, and the same lines dropped by a processor.

_SECRET = "hunter2-s3cret"  # noqa: S105 - a fake secret that must never be written
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_LOGGED_HEADERS = ("authorization", "user-agent", "x-api-key")


def _drop_client_errors(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    if 400 <= event_dict.get("status", 0) < 500:
        raise structlog.DropEvent  # structlog's documented way for a processor to drop a line
    return event_dict


def _add_region(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["region"] = "eu-west-1"
    event_dict["db_password"] = _SECRET  # the redactor runs after the extra processors
    return event_dict


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    text = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=12)
    params = st.lists(
        st.tuples(st.sampled_from(["page", "q", "token", "password", "api_key", "sig"]), text),
        max_size=4,
    )
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])),
        "path": "/" + draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]))),
        "query": urlencode(draw(params)) + draw(st.sampled_from(["", f"&token={_SECRET}"])),
        "headers": draw(
            st.lists(st.tuples(st.sampled_from((*_LOGGED_HEADERS, "accept")), text), max_size=4)
        ),
        "status": draw(st.sampled_from([200, 201, 204, 304, 400, 404, 409, 429, 500, 503])),
        "outcome": draw(
            st.lists(
                st.sampled_from(
                    [
                        (b"idempotency-status", b"replayed"),
                        (b"x-cache", b"HIT"),
                        (b"x-cache", b"MISS"),
                    ]
                ),
                max_size=2,
                unique=True,
            )
        ),
        "bound": {
            **draw(
                st.dictionaries(
                    st.sampled_from(["user_id", "tenant", "status", "route"]),
                    st.one_of(text, st.integers()),
                    max_size=3,
                )
            ),
            **draw(st.sampled_from([{}, {"password": _SECRET}, {"api_key": _SECRET}])),
        },
        "raises": draw(st.booleans()),
    }


def _app(request: dict[str, Any]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        structlog.contextvars.bind_contextvars(**request["bound"])
        headers = [(b"content-type", b"text/plain"), *request["outcome"]]
        await send({"type": "http.response.start", "status": request["status"], "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})
        if request["raises"]:
            raise RuntimeError(f"after the response: {_SECRET}")

    return app


async def _serve(app: ASGIApp, request: dict[str, Any], request_id: str) -> None:
    headers = [(name.encode(), value.encode("latin-1")) for name, value in request["headers"]]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode(),
        "root_path": "",
        "query_string": request["query"].encode("latin-1"),
        "headers": [(b"x-request-id", request_id.encode()), *headers],
        "client": ("203.0.113.7", 40000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    # A request runs in its own context, as a server runs it.
    task = asyncio.get_running_loop().create_task(
        RequestIdMiddleware(app)(scope, receive, send), context=contextvars.copy_context()
    )
    with contextlib.suppress(RuntimeError):
        await task


@given(
    request=_requests(),
    level=st.sampled_from(["debug", "info", "warning", "error"]),
    cache_loggers=st.booleans(),
    processors=st.sampled_from([(), (_drop_client_errors,), (_add_region,)]),
)
@settings(max_examples=200)
async def test_the_direct_access_line_is_the_structlog_line(
    request: dict[str, Any],
    level: str,
    cache_loggers: bool,
    processors: tuple[Processor, ...],
) -> None:
    options: dict[str, Any] = {"request_headers": _LOGGED_HEADERS}
    with capture_log_output(level, cache_loggers=cache_loggers, processors=processors) as output:
        assert callable(direct_writer("prodkit.access", "error"))  # the fast path is in force
        direct = AccessLogMiddleware(_app(request), **options)
        public = AccessLogMiddleware(
            _app(request), logger=structlog.get_logger("prodkit.access"), **options
        )
        await _serve(direct, request, "req-1")
        lines = output.events()
        await _serve(public, request, "req-1")
        lines = [*lines, *output.events()[len(lines) :]]
    assert _SECRET not in output.text
    assert len(lines) in (0, 2), lines  # written (or dropped, or filtered) alike
    if lines:
        ours, theirs = lines
        assert _ISO_UTC.fullmatch(ours.pop("timestamp"))
        assert _ISO_UTC.fullmatch(theirs.pop("timestamp"))
        assert type(ours.pop("duration")) is type(theirs.pop("duration")) is float
        assert list(ours.items()) == list(theirs.items())


async def test_a_processor_that_drops_the_line_drops_it_on_both_paths() -> None:
    # A processor given to configure_logging may raise DropEvent (structlog's documented way
    # to drop a line); the direct path let it escape into the server instead of dropping the
    # line.
    request = {
        "method": "GET",
        "path": "/gone",
        "query": "",
        "headers": [],
        "status": 404,
        "outcome": [],
        "bound": {},
        "raises": False,
    }
    with capture_log_output(processors=[_drop_client_errors]) as output:
        for logger in (None, structlog.get_logger("prodkit.access")):
            for status, request_id in ((404, "dropped"), (200, "kept")):
                served = {**request, "status": status}
                app = AccessLogMiddleware(_app(served), logger=logger)
                await _serve(app, served, request_id)  # no DropEvent out of the middleware
    assert [line["request_id"] for line in output.events()] == ["kept", "kept"]


@given(request=_requests())
@settings(max_examples=30)
async def test_the_line_without_any_setup_is_the_configured_structlog_line(
    request: dict[str, Any],
) -> None:
    # While structlog is not configured, the access log writes its own JSON line on standard
    # output (``_core.logs.unconfigured_writer``): the line ``configure_logging()`` would give.
    saved, configured = structlog.get_config(), structlog.is_configured()
    structlog.reset_defaults()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            await _serve(AccessLogMiddleware(_app(request)), request, "req-1")
    finally:
        if configured:
            structlog.configure(**saved)
    with capture_log_output("info") as output:
        logger = structlog.get_logger("prodkit.access")
        await _serve(AccessLogMiddleware(_app(request), logger=logger), request, "req-1")
    # Lines end at "\n" only: str.splitlines() would also cut at a U+2028 or \x1c that a
    # JSON string may hold as it is.
    written = [line for line in stdout.getvalue().split("\n") if line]
    lines = [json.loads(line) for line in written] + output.events()
    assert _SECRET not in stdout.getvalue() + output.text
    assert len(lines) == 2
    ours, theirs = lines
    assert _ISO_UTC.fullmatch(ours.pop("timestamp"))
    assert _ISO_UTC.fullmatch(theirs.pop("timestamp"))
    assert type(ours.pop("duration")) is type(theirs.pop("duration")) is float
    assert list(ours.items()) == list(theirs.items())
