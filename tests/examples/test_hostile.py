"""Hostile input against the example: no body or head a client can send makes it fail.

Issue #16: a JSON key that is a lone surrogate made ``encode_problem`` raise inside
``ErrorMiddleware`` and the server answered a plain-text 500. Here every endpoint is fed
arbitrary JSON (keys and values from the whole Unicode range, surrogates included) and must
answer below 500, with a problem+json body for every 4xx.

Issue #21: request heads too large for the server's limits, sent the way an attacker would
(one write, slow pieces, pipelined), and a request with both ``Content-Length`` and
``Transfer-Encoding``, against the example's real server process.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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
from prodkit.serving.uvicorn import REFUSAL_LOG_INTERVAL
from prodkit.settings import StackSettings as Settings
from tests.servers import ServerProcess, free_port, run_server

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


# -- hostile request heads and framing against the example's server (issue #21) ----------------
#
# The example is served by prodkit serve's machinery: uvicorn with httptools behind a protocol
# that measures every request head as it arrives (32 KiB, 100 header fields). Before, only h11's
# limit on heads that arrive in pieces applied: one write of a 40 KB header, or of 10,000
# headers, was parsed whole and cost the worker about 30 times a normal request.

MAX_HEAD = 32 * 1024
MAX_HEADERS = 100


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m examples.funds`` with its defaults (one worker, memory storage)."""
    port = free_port()
    with run_server(
        ["examples.funds", "--port", str(port)],
        port=port,
        tmp_path=tmp_path_factory.mktemp("hostile"),
        env={"RATE_LIMIT": "100000/minute"},
    ) as server:
        yield server


@dataclass
class Exchange:
    """What came back on one raw connection, read until the server closed it."""

    data: bytes
    closed: bool

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.data)]

    def problem(self) -> dict[str, Any]:
        head, _, body = self.data.partition(b"\r\n\r\n")
        assert b"content-type: application/problem+json" in head.lower(), self.data[:400]
        parsed: dict[str, Any] = json.loads(body)
        return parsed


def exchange(port: int, pieces: list[bytes], *, pause: float = 0.0) -> Exchange:
    """Send ``pieces`` (one write each) on a fresh connection; read until it closes (≤ 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused mid-way: what it said is still in the receive buffer
            if pause:
                time.sleep(pause)
        data = b""
        closed = False
        try:
            while chunk := sock.recv(65536):
                data += chunk
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    return Exchange(data, closed)


def request_head(path: str = "/livez", headers: list[bytes] | None = None, pad: int = 0) -> bytes:
    """A GET head with ``headers`` (``Name: value`` lines) and an ``X-Pad`` of ``pad`` bytes."""
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    lines += headers or []
    if pad:
        lines.append(b"X-Pad: " + b"a" * pad)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def head_of_size(size: int) -> bytes:
    """A request head of exactly ``size`` bytes, request line to blank line."""
    bare = request_head(pad=1)
    head = request_head(pad=1 + size - len(bare))
    assert len(head) == size
    return head


def many_headers(count: int) -> list[bytes]:
    return [b"X-H%d: v" % n for n in range(count)]


def assert_head_refused(result: Exchange) -> None:
    """A 431 problem, then the connection closed; nothing else answered."""
    assert result.statuses == [431], result.data[:400]
    assert result.closed
    problem = result.problem()
    assert problem["code"] == "REQUEST_HEAD_TOO_LARGE"
    assert problem["status"] == 431
    assert b"connection: close" in result.data.lower()


@pytest.mark.server
@pytest.mark.parametrize(
    "head",
    [
        # One write of a 40 KB header: before, accepted (h11 bounds only heads in pieces).
        pytest.param(request_head(pad=40_000), id="one-40KB-header"),
        # One write of 10,000 headers (about 116 KiB): before, accepted at ~30x the cost.
        pytest.param(request_head(headers=many_headers(10_000)), id="10000-headers"),
        pytest.param(head_of_size(MAX_HEAD + 1), id="one-byte-over"),
        pytest.param(request_head(headers=many_headers(MAX_HEADERS)), id="one-header-over"),
    ],
)
def test_an_oversized_head_in_one_write_is_refused_with_431(
    example: ServerProcess, head: bytes
) -> None:
    assert_head_refused(exchange(example.port, [head]))


@pytest.mark.server
@pytest.mark.parametrize(
    "head",
    [
        pytest.param(head_of_size(MAX_HEAD), id="exactly-the-byte-limit"),
        # Host plus 99: exactly the header limit.
        pytest.param(request_head(headers=many_headers(MAX_HEADERS - 1)), id="exactly-100"),
    ],
)
def test_a_head_at_the_limit_is_served(example: ServerProcess, head: bytes) -> None:
    # Connection: close is not sent, so the server answers and keeps the connection; the
    # exchange ends at its read timeout. One status, a 200.
    with socket.create_connection(("127.0.0.1", example.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]


@pytest.mark.server
def test_a_head_sent_in_slow_pieces_is_refused_once_it_passes_the_limit(
    example: ServerProcess,
) -> None:
    # Slowloris: 1 KiB at a time, 33 pieces, and the head never ends. The refusal cannot wait
    # for a blank line that is not coming.
    start = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    pieces = [start] + [b"a" * 1024] * 33
    assert_head_refused(exchange(example.port, pieces, pause=0.005))


@pytest.mark.server
def test_a_head_sent_in_small_pieces_within_the_limit_is_served(example: ServerProcess) -> None:
    head = request_head(headers=[*many_headers(50), b"Connection: close"], pad=20_000)
    pieces = [head[i : i + 700] for i in range(0, len(head), 700)]
    result = exchange(example.port, pieces, pause=0.001)
    assert result.statuses == [200]
    assert result.closed


@pytest.mark.server
def test_an_oversized_head_pipelined_after_a_request_is_never_parsed(
    example: ServerProcess,
) -> None:
    # The first request is answered; the second head, in the same write, is refused by the
    # parser's own count: the connection closes after the first response.
    first = request_head()
    second = request_head(headers=many_headers(10_000))
    result = exchange(example.port, [first + second])
    assert result.statuses == [200]
    assert result.closed


SMUGGLED = b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: victim\r\n\r\n"


@pytest.mark.server
@pytest.mark.parametrize(
    "framing",
    [
        [b"Content-Length: 60", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 60"],
    ],
)
def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
    example: ServerProcess, framing: list[bytes]
) -> None:
    # RFC 9112 section 6.3: both headers may be a smuggling attempt; the server must close the
    # connection after answering. Before, h11 let the request through (the app answered it)
    # and the connection stayed open: the bytes after the chunked body ran as a second request.
    head = request_head("/api/funds", [b"X-User-Id: hostile", *framing])
    head = head.replace(b"GET ", b"POST ", 1)
    result = exchange(example.port, [head + b"2\r\n{}\r\n0\r\n\r\n" + SMUGGLED])
    assert result.statuses == [400], result.data[:400]
    assert result.closed
    assert result.problem()["code"] == "MALFORMED_REQUEST"
    assert b"total_funds" not in result.data  # the smuggled request was never answered


@pytest.mark.server
def test_refused_heads_never_reach_the_app(example: ServerProcess) -> None:
    # Refusal lines are rate-limited per worker (one a REFUSAL_LOG_INTERVAL): the module's
    # server refused heads just before, so wait out the interval for this refusal's line.
    time.sleep(REFUSAL_LOG_INTERVAL + 0.1)
    before = example.output()
    assert_head_refused(exchange(example.port, [request_head("/api/summary", pad=40_000)]))
    exchange(example.port, [request_head(headers=[b"Connection: close"])])  # a normal request
    for _ in range(100):  # the access line of the normal request is written after its answer
        lines = example.output()[len(before) :].splitlines()
        if any('"request completed"' in line for line in lines):
            break
        time.sleep(0.05)
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    completed = [e["path"] for e in entries if e["event"] == "request completed"]
    assert completed == ["/livez"]  # the refused /api/summary never became a request
    refused = [e for e in entries if e["event"] == "request head too large"]
    assert len(refused) == 1
    assert refused[0]["level"] == "warning"
