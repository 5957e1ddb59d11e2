"""RequestIdMiddleware: adoption, generation, echo on every response, contextvars reset."""

from __future__ import annotations

import os
import re
from typing import get_type_hints

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import (
    ConfigurationError,
    ErrorMiddleware,
    RequestIdMiddleware,
    get_request_id,
    get_trace_id,
)
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, send_problem
from prodkit.requestid import (
    RequestIdKeywords,
    RequestIdOptions,
    generate_request_id,
    is_valid_request_id,
    parse_traceparent,
)
from tests.apps import build_app
from tests.conftest import ClientFactory

HEX32 = r"[0-9a-f]{32}"


async def test_generates_an_id_and_exposes_it_to_the_app(
    framework: str, make_client: ClientFactory
) -> None:
    client = make_client(RequestIdMiddleware(build_app(framework)))
    response = await client.get("/items/7")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert response.json()["request_id"] == request_id


async def test_adopts_a_valid_inbound_id(framework: str, make_client: ClientFactory) -> None:
    client = make_client(RequestIdMiddleware(build_app(framework)))
    response = await client.get("/items/7", headers={"X-Request-ID": "abc-123.def:ghi"})
    assert response.headers["x-request-id"] == "abc-123.def:ghi"
    assert response.json()["request_id"] == "abc-123.def:ghi"


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\r\nSet-Cookie: x=1",  # header/log injection
        "a" * 10_000,  # oversize
        "ünïcødé",  # non-ASCII
        " leading-space",
        'quote"inside',
        "",
        "-starts-with-dash",
    ],
)
async def test_replaces_hostile_inbound_ids(hostile: str, make_client: ClientFactory) -> None:
    client = make_client(RequestIdMiddleware(build_app("raw")))
    raw = hostile.encode("utf-8")
    response = await client.get("/items/1", headers=[(b"x-request-id", raw)])
    request_id = response.headers["x-request-id"]
    assert request_id != hostile
    assert len(request_id) == 32
    assert hostile not in response.text or hostile == ""


async def test_id_on_unhandled_500_in_header_and_body(
    framework: str, make_client: ClientFactory
) -> None:
    client = make_client(RequestIdMiddleware(ErrorMiddleware(build_app(framework))))
    response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "req-500"
    assert response.json()["request_id"] == "req-500"


async def test_id_on_responses_generated_by_inner_prodkit_middleware(
    make_client: ClientFactory,
) -> None:
    async def rejecting(scope: Scope, receive: Receive, send: Send) -> None:
        await send_problem(send, 429, "RATE_LIMITED", headers={"Retry-After": "3"})

    client = make_client(RequestIdMiddleware(rejecting))
    response = await client.get("/", headers={"X-Request-ID": "inner"})
    assert response.status_code == 429
    assert response.headers["x-request-id"] == "inner"
    assert response.json()["request_id"] == "inner"


async def test_replaces_an_id_the_app_set_itself(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"app")]}
        )
        await send({"type": "http.response.body", "body": b""})

    response = await make_client(RequestIdMiddleware(app)).get("/")
    assert response.headers.get_list("x-request-id") != ["app"]
    assert len(response.headers.get_list("x-request-id")) == 1


async def test_custom_header_generator_and_validator(make_client: ClientFactory) -> None:
    middleware = RequestIdMiddleware(
        build_app("raw"),
        header_name="X-Correlation-ID",
        generator=lambda: "generated",
        validator=lambda value: value.startswith("ok-"),
    )
    client = make_client(middleware)
    assert (await client.get("/items/1", headers={"X-Correlation-ID": "ok-1"})).headers[
        "x-correlation-id"
    ] == "ok-1"
    response = await client.get("/items/1", headers={"X-Correlation-ID": "bad"})
    assert response.headers["x-correlation-id"] == "generated"
    assert "x-request-id" not in response.headers


async def test_contextvars_are_reset_after_the_request(make_client: ClientFactory) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((get_request_id(), get_trace_id()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = make_client(RequestIdMiddleware(app))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await client.get("/", headers={"traceparent": traceparent, "X-Request-ID": "r1"})
    assert seen == [("r1", "4bf92f3577b34da6a3ce929d0e0e4736")]
    assert get_request_id() is None
    assert get_trace_id() is None


def test_rejects_an_invalid_header_name() -> None:
    with pytest.raises(ConfigurationError, match="header_name"):
        RequestIdMiddleware(build_app("raw"), header_name="X Request ID")


# W3C Trace Context, section 3.2 (traceparent): version, trace-id, parent-id, flags.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # all-zero parent id
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff is invalid
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),  # v00 has 4 fields
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        ("garbage", None),
    ],
)
def test_parse_traceparent(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(value) == expected


@given(st.text(max_size=300))
def test_valid_ids_are_always_safe_to_echo(value: str) -> None:
    if is_valid_request_id(value):
        assert value.isascii()
        assert all(ch.isalnum() or ch in "._:/+=@-" for ch in value)
        assert 0 < len(value) <= 128


def test_a_forked_worker_does_not_repeat_its_parents_ids() -> None:
    generate_request_id()  # the parent has random bytes in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, generate_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.close(write_end)
    assert len(child_id) == 32
    assert child_id != generate_request_id()


# -- WebSocket handshakes (issue #14) and a middleware wrapped twice (issue #16) --------------


async def handshake(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Drive one WebSocket handshake through ``app``; return what reached the server."""
    scope: Scope = {"type": "websocket", "path": "/ws", "headers": headers, "root_path": ""}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_id_on_a_websocket_accept() -> None:
    async def accepting(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})
        await send({"type": "websocket.close", "code": 1000})

    sent = await handshake(RequestIdMiddleware(accepting), [(b"x-request-id", b"ws-7")])
    assert sent[0] == {
        "type": "websocket.accept",
        "headers": [(b"x-app", b"1"), (b"x-request-id", b"ws-7")],
    }
    assert sent[1] == {"type": "websocket.close", "code": 1000}


async def test_id_on_a_websocket_denial_response() -> None:
    async def denying(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no"})

    sent = await handshake(RequestIdMiddleware(denying), [])
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 403
    assert len(headers[b"x-request-id"]) == 32
    assert sent[1] == {"type": "websocket.http.response.body", "body": b"no"}


async def test_wrapped_twice_one_id_in_header_and_problem_body(
    make_client: ClientFactory,
) -> None:
    app = RequestIdMiddleware(RequestIdMiddleware(ErrorMiddleware(build_app("starlette"))))
    response = await make_client(app).get("/boom")
    assert response.status_code == 500
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.headers.get_list("x-request-id") == [response.json()["request_id"]]


async def test_wrapped_twice_one_id_seen_by_the_app(make_client: ClientFactory) -> None:
    app = RequestIdMiddleware(RequestIdMiddleware(build_app("starlette")))
    response = await make_client(app).get("/items/1")
    assert response.json()["request_id"] == response.headers["x-request-id"]


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    by_keyword = RequestIdMiddleware(build_app("raw"), header_name="X-Correlation-ID")
    by_object = RequestIdMiddleware(
        build_app("raw"), options=RequestIdOptions(header_name="X-Correlation-ID")
    )
    assert by_keyword.options == by_object.options
    for middleware in (by_keyword, by_object):
        response = await make_client(middleware).get("/", headers={"X-Correlation-ID": "c-1"})
        assert response.headers["x-correlation-id"] == "c-1"
        assert "x-request-id" not in response.headers


def test_the_defaults_are_the_options_defaults() -> None:
    assert RequestIdMiddleware(build_app("raw")).options == RequestIdOptions()
    assert RequestIdOptions().header_name == "X-Request-ID"
    assert RequestIdOptions().max_length == 128


def test_options_and_keywords_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="options= and the keywords max_length"):
        RequestIdMiddleware(build_app("raw"), options=RequestIdOptions(), max_length=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"header_name": "X Request ID"}, "header_name='X Request ID': not a header name"),
        ({"header_name": ""}, "header_name='': not a header name"),
        ({"max_length": 0}, "max_length=0: less than 1; write an integer of at least 1"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RequestIdOptions(**options)  # type: ignore[arg-type]


def test_the_keywords_are_the_options_fields() -> None:
    # The two are written side by side; a field added to one only is caught here.
    assert get_type_hints(RequestIdKeywords) == get_type_hints(RequestIdOptions)
