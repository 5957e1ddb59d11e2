"""RequestTimeoutMiddleware: a body that does not arrive in time gets a 408; one that does reaches
the app whole, and only then."""

from __future__ import annotations

import asyncio
import json
import re
from typing import get_type_hints

import pytest

from prodkit import ConfigurationError, RequestTimeoutMiddleware
from prodkit.asgi import Message, Receive, Scope, Send
from prodkit.timeouts import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    RequestTimeoutKeywords,
    RequestTimeoutOptions,
)


class Echo:
    """An app that records what it received and answers with the body it read."""

    def __init__(self) -> None:
        self.called = 0
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called += 1
        body = b""
        while True:
            message = await receive()
            self.received.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        await send({"type": "http.response.body", "body": body})


def http_scope(headers: list[tuple[bytes, bytes]], version: str = "1.1") -> Scope:
    return {
        "type": "http",
        "http_version": version,
        "method": "POST",
        "path": "/upload",
        "headers": [(b"host", b"testserver"), *headers],
    }


async def serve(
    middleware: RequestTimeoutMiddleware, scope: Scope, incoming: asyncio.Queue[Message]
) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, incoming.get, send)
    return sent


def queue_of(*messages: Message) -> asyncio.Queue[Message]:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    return queue


def chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_stalled_body_gets_a_408_problem_and_never_reaches_the_app() -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, body_timeout=0.05)
    # Headers, then half the body, then nothing: the queue never yields the rest.
    incoming = queue_of(chunk(b"12345", True))
    sent = await serve(middleware, http_scope([(b"content-length", b"10")]), incoming)
    assert app.called == 0
    start, body = sent
    assert start["status"] == 408
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    assert headers[b"cache-control"] == b"no-store"
    problem = json.loads(body["body"])
    assert (problem["status"], problem["code"]) == (408, "REQUEST_TIMEOUT")


async def test_a_body_in_many_chunks_reaches_the_app_as_one_message_then_the_server() -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, body_timeout=5)
    incoming = queue_of(chunk(b"ab", True), chunk(b"", True), chunk(b"cd", False))
    sent = await serve(middleware, http_scope([(b"transfer-encoding", b"chunked")]), incoming)
    assert app.received == [chunk(b"abcd", False)]
    assert (sent[0]["status"], sent[1]["body"]) == (200, b"abcd")
    assert incoming.empty()


async def test_later_receives_go_to_the_server_so_the_app_still_sees_a_disconnect() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        seen.append(await receive())

    incoming = queue_of(chunk(b"xy", False), {"type": "http.disconnect"})
    await serve(RequestTimeoutMiddleware(app), http_scope([(b"content-length", b"2")]), incoming)
    assert seen == [chunk(b"xy", False), {"type": "http.disconnect"}]


async def test_a_client_gone_mid_body_is_replayed_as_it_came() -> None:
    app = Echo()
    incoming = queue_of(chunk(b"ab", True), {"type": "http.disconnect"})
    sent = await serve(
        RequestTimeoutMiddleware(app), http_scope([(b"content-length", b"9")]), incoming
    )
    assert app.received == [chunk(b"ab", True), {"type": "http.disconnect"}]
    assert sent[0]["status"] == 200


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        # RFC 9112 §6.3: an HTTP/1.x request with neither header has no body.
        ([], "1.1"),
        ([(b"content-length", b"0")], "1.1"),
        ([(b"content-length", b"00")], "1.0"),
    ],
)
async def test_a_request_without_a_body_passes_straight_through(
    headers: list[tuple[bytes, bytes]], version: str
) -> None:
    app = Echo()
    # The app reads from the server directly: the middleware took nothing from the queue.
    incoming = queue_of(chunk(b"", False))
    sent = await serve(RequestTimeoutMiddleware(app), http_scope(headers, version), incoming)
    assert (app.called, sent[0]["status"]) == (1, 200)
    assert app.received == [chunk(b"", False)]


async def test_http2_without_content_length_is_read_and_bounded() -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, body_timeout=0.05)
    sent = await serve(middleware, http_scope([], "2"), queue_of(chunk(b"a", True)))
    assert (app.called, sent[0]["status"]) == (0, 408)


async def test_excluded_paths_are_neither_read_nor_bounded() -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, body_timeout=0.05, exclude_paths=["/upload"])
    incoming = queue_of(chunk(b"a", True), chunk(b"b", False))
    sent = await serve(middleware, http_scope([(b"content-length", b"2")]), incoming)
    assert app.received == [chunk(b"a", True), chunk(b"b", False)]
    assert sent[0]["status"] == 200


@pytest.mark.parametrize("timeout", [0, -1, True, "10"])
def test_the_deadline_must_be_positive_seconds(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="body_timeout"):
        RequestTimeoutMiddleware(Echo(), body_timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "incoming"),
    [
        pytest.param([(b"content-length", b"11")], [], id="declared too large: nothing is read"),
        pytest.param(
            [(b"transfer-encoding", b"chunked")],
            [chunk(b"123456", True), chunk(b"789012", True)],
            id="found too large while reading",
        ),
    ],
)
async def test_a_body_larger_than_the_limit_is_a_413_and_is_never_buffered(
    headers: list[tuple[bytes, bytes]], incoming: list[Message]
) -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, max_body_bytes=10)
    queue = queue_of(*incoming, chunk(b"never read", False))
    sent = await serve(middleware, http_scope(headers), queue)
    assert app.called == 0
    start, body = sent
    assert start["status"] == 413
    assert dict(start["headers"])[b"connection"] == b"close"
    assert json.loads(body["body"])["code"] == "REQUEST_BODY_TOO_LARGE"
    assert queue.qsize() == 1  # the rest of the body was left unread


async def test_a_body_at_the_limit_reaches_the_app_whole() -> None:
    app = Echo()
    middleware = RequestTimeoutMiddleware(app, max_body_bytes=10)
    incoming = queue_of(chunk(b"12345", True), chunk(b"67890", False))
    sent = await serve(middleware, http_scope([(b"content-length", b"10")]), incoming)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"1234567890"
    assert app.received[0] == chunk(b"1234567890", False)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_body_bytes_must_be_a_positive_whole_number(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        RequestTimeoutMiddleware(Echo(), max_body_bytes=value)  # type: ignore[arg-type]


# -- options ---------------------------------------------------------------------------------


def test_options_object_and_keywords_configure_the_same_middleware() -> None:
    by_keyword = RequestTimeoutMiddleware(Echo(), body_timeout=2, exclude_paths=["/uploads/*"])
    options = RequestTimeoutOptions(body_timeout=2, exclude_paths=["/uploads/*"])
    by_object = RequestTimeoutMiddleware(Echo(), options=options)
    assert by_object.options is options
    assert by_keyword.options == options
    assert by_keyword.body_timeout == by_object.body_timeout == 2.0
    assert options.exclude_paths == ("/uploads/*",)


def test_the_defaults_are_the_options_defaults() -> None:
    middleware = RequestTimeoutMiddleware(Echo())
    assert middleware.options == RequestTimeoutOptions()
    assert (middleware.body_timeout, middleware.max_body_bytes) == (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_MAX_BODY_BYTES,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"body_timeout": True}, "body_timeout=True: not a number; write seconds greater than 0"),
        ({"max_body_bytes": 0}, "max_body_bytes=0: less than 1"),
        ({"exclude_paths": "/uploads/*"}, "exclude_paths='/uploads/*': a list of paths"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RequestTimeoutOptions(**options)  # type: ignore[arg-type]


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(RequestTimeoutKeywords) == get_type_hints(RequestTimeoutOptions)
