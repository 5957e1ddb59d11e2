"""Hostile input against the example: no body a client can send makes the error path fail.

Issue #16: a JSON key that is a lone surrogate made ``encode_problem`` raise inside
``ErrorMiddleware`` and the server answered a plain-text 500. Here every endpoint is fed
arbitrary JSON (keys and values from the whole Unicode range, surrogates included) and must
answer below 500, with a problem+json body for every 4xx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.funds.app import create_app
from examples.funds.model import pointer
from prodkit import ErrorMiddleware, Problem, RequestIdMiddleware, SecurityHeadersMiddleware
from prodkit.asgi import Receive, Scope, Send
from prodkit.settings import StackSettings as Settings

USER = {"X-User-Id": "hostile"}
FUND: dict[str, Any] = {
    "name": "Seed Fund I",
    "size": 25_000_000,
    "stages": [{"name": "seed", "months": 24, "graduate": 0.5, "exit": 0.2}],
}

#: Every character: ``st.characters()`` leaves out the surrogates, so they are added back.
CHARACTERS = st.one_of(st.characters(), st.characters(categories=["Cs"]))
TEXT = st.text(CHARACTERS, max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
#: Fund-shaped documents reach deeper into validation than arbitrary ones.
STAGE = st.dictionaries(
    st.one_of(st.sampled_from(["name", "months", "graduate", "exit"]), TEXT), JSON, max_size=6
)
FUND_LIKE = st.fixed_dictionaries(
    {"name": JSON, "size": JSON, "stages": st.one_of(st.lists(STAGE, max_size=3), JSON)},
    optional={"description": JSON, "\ud800": JSON, "a/b~": JSON},
).flatmap(lambda fund: st.dictionaries(TEXT, JSON, max_size=2).map(lambda extra: extra | fund))
DOCUMENTS = st.one_of(JSON, FUND_LIKE)


def encode(document: Any, raw_surrogates: bool) -> bytes:
    """``document`` as JSON: surrogates escaped (``\\ud800``), or as bytes UTF-8 forbids."""
    if raw_surrogates:
        return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(document).encode()


def assert_honest(response: httpx.Response) -> None:
    """No 5xx; every 4xx a problem whose status and request id match the response's."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == response.status_code
        assert body["request_id"] == response.headers["x-request-id"]


@pytest.fixture
async def funds() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The example in-process on memory storage, and the id of one fund of ``USER``."""
    app = create_app(Settings(rate_limit="1000000/second"))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            created = await http.post("/api/funds", json=FUND, headers=USER)
            assert created.status_code == 201
            yield http, created.json()["id"]


ENDPOINTS = [
    ("POST", "/api/funds"),
    ("PATCH", "/api/funds/{id}"),
    ("PATCH", "/api/funds/missing"),
    ("GET", "/api/funds"),
    ("GET", "/api/funds/{id}"),
    ("GET", "/api/funds/{id}/projection?simulations=10"),
    ("GET", "/api/summary"),
    ("GET", "/openapi.json"),
    ("DELETE", "/api/funds/missing"),
    ("PUT", "/api/funds/{id}"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENTS, raw_surrogates=st.booleans())
async def test_arbitrary_json_never_makes_a_5xx(
    funds: tuple[httpx.AsyncClient, str],
    method: str,
    path: str,
    document: Any,
    raw_surrogates: bool,
) -> None:
    http, fund_id = funds
    response = await http.request(
        method,
        path.format(id=fund_id),
        content=encode(document, raw_surrogates),
        headers={**USER, "Content-Type": "application/json"},
    )
    assert_honest(response)


@pytest.mark.parametrize(
    ("body", "pointers"),
    [
        # The body of issue #16: a lone-surrogate key used to end in a plain-text 500.
        (b'{"\\ud800": 1}', ["/\ud800"]),
        # RFC 6901 section 3: "~" is written "~0" and "/" is written "~1".
        (b'{"a/b": 1, "~": 2, "~1": 3}', ["/a~1b", "/~0", "/~01"]),
        (
            b'{"stages": [{"name": "s", "months": 1, "graduate": 0, "exit": 0, "x/y": 1}]}',
            ["/stages/0/x~1y"],
        ),
    ],
)
async def test_validation_pointers_follow_rfc_6901(
    funds: tuple[httpx.AsyncClient, str], body: bytes, pointers: list[str]
) -> None:
    http, _ = funds
    response = await http.post(
        "/api/funds", content=body, headers={**USER, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert_honest(response)
    found = [error["pointer"] for error in response.json()["errors"]]
    assert set(pointers) <= set(found)


def test_pointer_escapes_each_token() -> None:
    assert pointer() == ""
    assert pointer("stages", 0, "a/b~c") == "/stages/0/a~1b~0c"
    assert pointer("~1") == "/~01"  # "~" first, so "~1" is not read back as "/"


async def test_a_problem_that_cannot_be_rendered_is_still_a_problem() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise Problem(409, "CONFLICT", extensions={"not_json": object()})

    stack = RequestIdMiddleware(SecurityHeadersMiddleware(ErrorMiddleware(app)))
    transport = httpx.ASGITransport(app=stack)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.get("/", headers={"X-Request-ID": "hostile-1"})
    assert response.status_code == 409
    assert_honest(response)
    assert response.json()["code"] == "CONFLICT"
    assert response.headers["x-request-id"] == "hostile-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert [entry["event"] for entry in logs] == ["problem could not be rendered"]
    assert logs[0]["exc_type"] == "TypeError"
