"""ErrorMiddleware turns a framework's own error responses into problems (issue #22).

Each row is one error response as a framework sends it, and what the client gets through
``ErrorMiddleware`` with its defaults. Six real frameworks are driven in
``tests/test_frameworks.py``; here the shapes are sent byte for byte by a tiny ASGI app.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import ErrorMiddleware, RequestIdMiddleware, Stack, StackSettings
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, problem_type
from prodkit.errors._convert import STATUS_CODES
from tests.apps import build_app
from tests.conftest import ClientFactory

Headers = list[tuple[bytes, bytes]]
DOCS = Path(__file__).parents[2] / "docs" / "errors.md"
FASTAPI_422 = {
    "detail": [
        {
            "type": "int_parsing",
            "loc": ["body", "stages", 0, "months"],
            "msg": "Input should be a valid integer",
            "input": "six",
        },
        {"type": "missing", "loc": ["query", "limit"], "msg": "Field required", "input": None},
        {"type": "missing", "loc": ["body", "a/b", "~c"], "msg": "Field required"},
        {"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be an object"},
        {"type": "missing", "loc": ["header", "x-token"], "msg": "Field required"},
    ]
}
LITESTAR_400 = {
    "status_code": 400,
    "detail": "Validation failed for POST /funds",
    "extra": [
        {"message": "Expected `int`, got `str`", "key": "stages[0].months", "source": "body"},
        {"message": "Object missing required field `name`", "key": "data", "source": "body"},
        {"message": "Expected `float`, got `str`", "key": "delay", "source": "query"},
        {"message": "Missing required header", "key": "x.token", "source": "header"},
    ],
}


def responding(status: int, headers: Headers, *chunks: bytes) -> ASGIApp:
    """An app that answers ``status`` with ``headers`` and the body in ``chunks``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        parts = chunks or (b"",)
        for index, chunk in enumerate(parts):
            more = index < len(parts) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


JSON: Headers = [(b"content-type", b"application/json")]
TEXT: Headers = [(b"content-type", b"text/plain; charset=utf-8")]


@pytest.mark.parametrize(
    ("status", "headers", "body", "code", "detail", "errors"),
    [
        # Starlette: plain text, which is the detail.
        (404, TEXT, b"Not Found", "NOT_FOUND", "Not Found", None),
        (403, TEXT, b"  not yours\n", "FORBIDDEN", "not yours", None),
        # Text in the charset it declares; bytes that are not that text say nothing.
        (
            409,
            [(b"content-type", b"text/plain; charset=latin-1")],
            b"caf\xe9",
            "CONFLICT",
            "café",
            None,
        ),
        (409, TEXT, b"caf\xe9", "CONFLICT", "Conflict", None),
        (409, [(b"content-type", b"text/plain; charset=hex")], b"00", "CONFLICT", "Conflict", None),
        # No Content-Type (a bare ``Response(status_code=404)``), no body: the status's own.
        (404, [], b"", "NOT_FOUND", "Not Found", None),
        # Quart and Django: an HTML page is for people; nothing is scraped from it.
        (
            404,
            [(b"Content-Type", b"text/html; charset=utf-8")],
            b"<!doctype html><title>404</title><p>The requested URL was not found</p>",
            "NOT_FOUND",
            "Not Found",
            None,
        ),
        # FastAPI's HTTPException, and its own 404/405.
        (403, JSON, b'{"detail":"not yours"}', "FORBIDDEN", "not yours", None),
        (
            405,
            JSON,
            b'{"detail":"Method Not Allowed"}',
            "METHOD_NOT_ALLOWED",
            "Method Not Allowed",
            None,
        ),
        # FastAPI's validation errors: the body's locations are pointers into the body, the
        # others are prefixed with where they were (the project's ``/query/<name>``).
        (
            422,
            JSON,
            as_json(FASTAPI_422),
            "VALIDATION_FAILED",
            "The request is invalid; see errors.",
            [
                ("/stages/0/months", "Input should be a valid integer"),
                ("/query/limit", "Field required"),
                ("/a~1b/~0c", "Field required"),  # RFC 6901 escapes
                ("", "Input should be an object"),  # the body as a whole
                ("/header/x-token", "Field required"),
            ],
        ),
        # A body that is not JSON: FastAPI's second token is a character offset, not a field.
        (
            422,
            JSON,
            b'{"detail":[{"type":"json_invalid","loc":["body",1],"msg":"JSON decode error"}]}',
            "VALIDATION_FAILED",
            "The request is invalid; see errors.",
            [("", "JSON decode error")],
        ),
        # Litestar: its own shape; its validation errors are in ``extra``, whatever the status.
        (404, JSON, b'{"status_code":404,"detail":"Not Found"}', "NOT_FOUND", "Not Found", None),
        (
            400,
            JSON,
            as_json(LITESTAR_400),
            "VALIDATION_FAILED",
            "Validation failed for POST /funds",
            [
                ("/stages/0/months", "Expected `int`, got `str`"),
                ("", "Object missing required field `name`"),  # Litestar's name for the body
                ("/query/delay", "Expected `float`, got `str`"),
                ("/header/x.token", "Missing required header"),
            ],
        ),
        (
            400,
            JSON,
            b'{"status_code":400,"detail":"JSON is malformed","extra":null}',
            "BAD_REQUEST",
            "JSON is malformed",
            None,
        ),
        # Any +json media type with a known shape.
        (
            410,
            [(b"content-type", b"application/vnd.api+json")],
            b'{"detail":"gone"}',
            "GONE",
            "gone",
            None,
        ),
        # Statuses without a name of their own.
        (418, TEXT, b"teapot", "CLIENT_ERROR", "teapot", None),
        (599, TEXT, b"", "SERVER_ERROR", None, None),
        (503, TEXT, b"maintenance", "SERVICE_UNAVAILABLE", "maintenance", None),
    ],
)
async def test_framework_error_shapes_become_problems(
    status: int,
    headers: Headers,
    body: bytes,
    code: str,
    detail: str | None,
    errors: list[tuple[str, str]] | None,
    make_client: ClientFactory,
) -> None:
    app = RequestIdMiddleware(ErrorMiddleware(responding(status, headers, body)))
    response = await make_client(app).get("/", headers={"X-Request-ID": "shape-1"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["content-length"] == str(len(response.content))
    problem = response.json()
    assert problem["status"] == status
    assert (problem["code"], problem["type"]) == (code, problem_type(code))
    assert problem["detail"] == (detail if detail is not None else problem["title"])
    assert problem["request_id"] == "shape-1"
    if errors is None:
        assert "errors" not in problem
    else:
        assert [(e["pointer"], e["detail"]) for e in problem["errors"]] == errors


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        # The app's own JSON: only the exact framework shapes are read, anything else is the
        # app's deliberate answer, and converting it would lose what it says.
        (400, JSON, b'{"error":"insufficient funds","balance":3}'),
        (400, JSON, b'{"detail":"x","code":"MINE"}'),  # a member more than FastAPI's
        (403, JSON, b'{"detail":{"reason":"owner"}}'),  # a detail that is not text
        (422, JSON, b'{"detail":[{"loc":"body","msg":"x"}]}'),  # not FastAPI's list
        (410, JSON, b'{"status_code":404,"detail":"Not Found"}'),  # another status
        (400, JSON, b'{"status_code":400,"detail":"x","extra":{"limit":3}}'),  # the app's extra
        (400, JSON, b'{"status_code":true,"detail":"x"}'),
        (400, JSON, b'["detail"]'),
        (400, JSON, b"{not json"),
        # Already a problem, whatever its parameters and header case.
        (409, [(b"Content-Type", b"application/problem+json; charset=utf-8")], b'{"code":"X"}'),
        # Media types that are neither text, HTML nor JSON.
        (400, [(b"content-type", b"application/xml")], b"<error>no</error>"),
        (404, [(b"content-type", b"image/png")], b"\x89PNG"),
        # A compressed body cannot be read.
        (404, [*TEXT, (b"content-encoding", b"gzip")], gzip.compress(b"Not Found")),
    ],
)
async def test_other_error_bodies_pass_as_they_are(
    status: int, headers: Headers, body: bytes, make_client: ClientFactory
) -> None:
    response = await make_client(ErrorMiddleware(responding(status, headers, body))).get("/")
    sent = {name.lower(): value for name, value in headers}
    assert response.status_code == status
    # httpx decodes the compressed body it is given, as a client would.
    assert response.content == (gzip.decompress(body) if b"content-encoding" in sent else body)
    assert response.headers["content-type"].encode() == sent[b"content-type"]


async def test_headers_that_matter_are_kept_and_the_body_headers_replaced(
    make_client: ClientFactory,
) -> None:
    headers: Headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"18"),
        (b"etag", b'"v1"'),
        (b"allow", b"GET, POST"),
        (b"www-authenticate", b'Bearer realm="funds"'),
        (b"retry-after", b"30"),
        (b"set-cookie", b"session=; Max-Age=0"),
        (b"x-app", b"kept"),
    ]
    app = ErrorMiddleware(responding(405, headers, b"Method Not Allowed"))
    response = await make_client(app).get("/")
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    for name in ("allow", "www-authenticate", "retry-after", "set-cookie", "x-app"):
        assert response.headers[name] == dict(headers)[name.encode()].decode()
    assert "etag" not in response.headers  # it named the body that was replaced
    assert response.headers.get_list("content-length") == [str(len(response.content))]
    assert response.headers.get_list("content-type") == ["application/problem+json"]
    # The body names the request: no cache may keep it, unless the app said otherwise.
    assert response.headers["cache-control"] == "no-store"
    cacheable = [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60")]
    response = await make_client(ErrorMiddleware(responding(404, cacheable, b"x"))).get("/")
    assert response.headers.get_list("cache-control") == ["max-age=60"]


async def test_a_body_in_several_parts_is_read_whole(make_client: ClientFactory) -> None:
    app = ErrorMiddleware(responding(404, TEXT, b"no such ", b"fund", b""))
    response = await make_client(app).get("/")
    assert response.json()["detail"] == "no such fund"


@pytest.mark.parametrize(
    "headers",
    [
        TEXT,  # read part by part until the limit is passed
        [*TEXT, (b"content-length", b"17")],  # declared too large: not held at all
    ],
)
async def test_an_error_body_over_hold_limit_passes_as_it_is(
    headers: Headers, make_client: ClientFactory
) -> None:
    app = ErrorMiddleware(responding(404, headers, b"a long ", b"404 page ", b"!"), hold_limit=16)
    response = await make_client(app).get("/")
    assert (response.status_code, response.text) == (404, "a long 404 page !")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_responses_to_head_and_successes_are_untouched(make_client: ClientFactory) -> None:
    client = make_client(ErrorMiddleware(responding(404, TEXT, b"")))
    response = await client.head("/")
    assert (response.status_code, response.headers["content-type"]) == (404, TEXT[0][1].decode())
    for status in (200, 201, 302):
        app = ErrorMiddleware(responding(status, TEXT, b"a", b"b"))
        response = await make_client(app).get("/", follow_redirects=False)
        assert (response.status_code, response.content) == (status, b"ab")


async def test_conversion_can_be_turned_off(make_client: ClientFactory) -> None:
    app = ErrorMiddleware(build_app("fastapi"), convert_framework_errors=False)
    response = await make_client(app).get("/no/such/path")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


async def test_an_app_that_raises_after_an_error_start_gets_a_500(
    make_client: ClientFactory,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"no", "more_body": True})
        raise RuntimeError("failed while answering")

    response = await make_client(ErrorMiddleware(app)).get("/")
    assert (response.status_code, response.json()["code"]) == (500, "INTERNAL_ERROR")


async def test_an_app_that_returns_mid_body_is_sent_what_it_sent() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    sent = await call(ErrorMiddleware(app))
    assert [(m["type"], m.get("status"), m.get("body")) for m in sent] == [
        ("http.response.start", 404, None),
        ("http.response.body", None, b"partial"),
    ]


async def test_an_error_sent_as_a_file_passes_as_it_is() -> None:
    # ASGI's path-send extension: the server sends the file; there is no body to read here.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": TEXT})
        await send({"type": "http.response.pathsend", "path": "/srv/404.txt"})

    sent = await call(ErrorMiddleware(app))
    assert [(m["type"], m.get("status")) for m in sent] == [
        ("http.response.start", 404),
        ("http.response.pathsend", None),
    ]


async def test_the_recommended_stack_converts_and_keeps_the_apps_own_json(
    make_client: ClientFactory,
) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/refused")
    async def refused() -> JSONResponse:
        return JSONResponse({"error": "insufficient funds"}, status_code=400)

    stack = Stack.recommended(StackSettings(), registry=CollectorRegistry())
    client = make_client(stack.build(app))
    missing = await client.get("/no/such/path")
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "NOT_FOUND"
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    own = await client.get("/refused")
    assert (own.status_code, own.json()) == (400, {"error": "insufficient funds"})
    # The health report keeps its shape: it is JSON of its own, not a framework error.
    ready = await client.get("/readyz")
    assert ready.json()["status"] == "pass"


def test_the_documented_code_table_is_the_one_applied() -> None:
    text = DOCS.read_text()
    section = text.split("### Codes of converted responses", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([A-Z_]+)` \|", section, re.MULTILINE)
    assert {int(status): code for status, code in rows} == dict(STATUS_CODES)


# -- whatever an error response carries, the conversion answers with its status ----------------


async def call(app: ASGIApp, method: str = "GET") -> list[Message]:
    """Call ``app`` once with a GET and no body; the messages it sends."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": method, "path": "/", "headers": []}
    await app(scope, receive, send)
    return sent


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["detail", "status_code", "extra", "loc", "msg", "message", "key", "source"]
            )
            | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@st.composite
def error_bodies(draw: st.DrawFn) -> bytes:
    """Bytes of any kind, and JSON near the framework shapes, where the rules are finest."""
    kind = draw(st.sampled_from(["bytes", "text", "json", "shaped"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    detail = draw(
        JSON_VALUES | st.lists(st.fixed_dictionaries({"loc": JSON_VALUES, "msg": JSON_VALUES}))
    )
    document: dict[str, Any] = {"detail": detail}
    if draw(st.booleans()):
        document["status_code"] = draw(st.integers(400, 599))
        document["extra"] = draw(
            JSON_VALUES
            | st.lists(
                st.fixed_dictionaries(
                    {"message": JSON_VALUES, "key": JSON_VALUES, "source": JSON_VALUES}
                )
            )
        )
    return json.dumps(document).encode()


CONTENT_TYPES = st.sampled_from(
    [
        None,
        b"text/plain",
        b"text/plain; charset=latin-1",
        b"text/plain; charset=utf-16",
        b"text/plain; charset=nonsense",
        b"text/html; charset=utf-8",
        b"application/json",
        b"application/problem+json",
        b"application/vnd.api+json",
        b"application/octet-stream",
    ]
) | st.binary(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(400, 599),
    content_type=CONTENT_TYPES,
    body=error_bodies(),
    cut=st.integers(0, 200),
    hold_limit=st.sampled_from([0, 64, 64 * 1024]),
)
async def test_any_error_response_keeps_its_status_and_never_fails(
    status: int, content_type: bytes | None, body: bytes, cut: int, hold_limit: int
) -> None:
    headers: Headers = [] if content_type is None else [(b"content-type", content_type)]
    app = ErrorMiddleware(
        responding(status, headers, body[:cut], body[cut:]), hold_limit=hold_limit
    )
    sent = await call(app)
    start, *parts = sent
    assert start["status"] == status
    sent_body = b"".join(part.get("body", b"") for part in parts)
    assert parts[-1].get("more_body", False) is False
    sent_type = dict(start["headers"]).get(b"content-type")
    if sent_type == b"application/problem+json" and content_type != sent_type:
        problem = json.loads(sent_body)
        assert problem["status"] == status
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", problem["code"])
        assert dict(start["headers"])[b"content-length"] == str(len(sent_body)).encode()
    else:
        assert (sent_type, sent_body) == (content_type, body)
