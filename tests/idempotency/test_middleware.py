"""IdempotencyMiddleware: what a client sees on first runs, replays, conflicts and failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from prodkit import (
    ConfigurationError,
    ErrorMiddleware,
    Problem,
    RequestIdMiddleware,
    caller_from_header,
)
from prodkit.asgi import ASGIApp, CircuitBreaker, Message, Receive, Scope, Send
from prodkit.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.idempotency._middleware import SCOPE_KEY, IdempotencyMiddleware
from tests.apps import build_app
from tests.conftest import ClientFactory

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
#: The credentials the tests' client sends: the default caller is a digest of them.
AUTHORIZATION = "Bearer alice-token"
AUTH = {"Authorization": AUTHORIZATION}
ALICE = hashlib.sha256(AUTHORIZATION.encode()).hexdigest()  # caller_from_authorization's name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingApp:
    """A raw ASGI app that records each call and answers as told."""

    def __init__(
        self,
        status: int = 201,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None,
        gate: asyncio.Event | None = None,
        fail: bool = False,
    ) -> None:
        self.calls: list[bytes] = []
        self.statuses = [status]
        self.headers = headers
        self.chunks = chunks
        self.gate = gate
        self.fail = fail
        self.entered = asyncio.Event()
        self.seen_status: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.calls.append(body)
        self.seen_status.append(scope.get(SCOPE_KEY))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("handler failed")
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        payload = json.dumps({"call": len(self.calls), "echo": body.decode("latin-1")}).encode()
        headers = (
            list(self.headers)
            if self.headers is not None
            else [
                (b"content-type", b"application/json"),
                (b"location", f"/api/funds/{len(self.calls)}".encode()),
                (b"set-cookie", b"session=secret"),
                (b"x-debug", b"call-specific"),
            ]
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for chunk in self.chunks or [payload]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def wrap(app: ASGIApp, **options: Any) -> tuple[IdempotencyMiddleware, MemoryIdempotencyStore]:
    store = options.pop("store", None)
    if store is None:
        store = MemoryIdempotencyStore()
    options.setdefault("registry", CollectorRegistry())
    return IdempotencyMiddleware(app, store=store, **options), store


async def post(
    client: httpx.AsyncClient,
    path: str = "/api/funds",
    *,
    key: str | None = KEY,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Authorization": AUTHORIZATION, **(headers or {})}
    if key is not None:
        sent["Idempotency-Key"] = key
    if content is not None:
        return await client.post(path, content=content, headers=sent)
    return await client.post(path, json=body if body is not None else {"name": "A"}, headers=sent)


def sample(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value("prodkit_idempotency_requests_total", {"outcome": outcome})
    return value or 0.0


# -- first execution and replay ---------------------------------------------------------------


async def test_first_request_runs_and_a_retry_replays_it(make_client: ClientFactory) -> None:
    app = CountingApp()
    registry = CollectorRegistry()
    middleware, _ = wrap(app, registry=registry)
    client = make_client(middleware)

    first = await post(client, body={"name": "A", "size": 10})
    again = await post(client, body={"name": "A", "size": 10})

    assert len(app.calls) == 1
    assert app.seen_status == ["created"]
    assert first.status_code == again.status_code == 201
    assert first.headers["idempotency-status"] == "created"
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"] == "/api/funds/1"
    assert again.headers["content-type"] == "application/json"
    assert again.headers["content-length"] == str(len(first.content))
    # Cookies and headers off the allow-list are never replayed.
    assert "set-cookie" in first.headers
    assert "set-cookie" not in again.headers
    assert "x-debug" not in again.headers
    assert sample(registry, "created") == 1
    assert sample(registry, "replayed") == 1


async def test_replay_carries_the_replaying_requests_id(make_client: ClientFactory) -> None:
    middleware, _ = wrap(CountingApp())
    client = make_client(RequestIdMiddleware(ErrorMiddleware(middleware)))
    first = await post(client, headers={"X-Request-ID": "first-request"})
    again = await post(client, headers={"X-Request-ID": "retry-request"})
    assert first.headers["x-request-id"] == "first-request"
    assert again.headers["x-request-id"] == "retry-request"
    assert again.headers["idempotency-status"] == "replayed"


async def test_replays_on_every_framework(framework: str, make_client: ClientFactory) -> None:
    middleware, _ = wrap(build_app(framework))
    client = make_client(middleware)
    headers = {"Idempotency-Key": KEY, "Content-Type": "text/plain", "Authorization": AUTHORIZATION}
    first = await client.post("/echo", content=b"payload", headers=headers)
    again = await client.post("/echo", content=b"payload", headers=headers)
    # (FastAPI's /echo in tests/apps.py answers 422 itself: its local Request annotation does
    # not resolve; a 4xx is recorded and replayed like any other final answer.)
    assert first.status_code == again.status_code
    assert again.content == first.content
    assert again.headers["idempotency-status"] == "replayed"
    assert again.headers["content-type"] == first.headers["content-type"]
    if framework != "fastapi":
        assert first.content == b"payload"


async def test_json_key_order_and_whitespace_do_not_matter(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, _ = wrap(app)
    client = make_client(middleware)
    headers = {"Content-Type": "application/json"}
    await post(client, content=b'{"name": "A", "size": 10}', headers=headers)
    again = await post(client, content=b'{\n  "size":10,"name":"A"}', headers=headers)
    assert again.headers["idempotency-status"] == "replayed"
    assert len(app.calls) == 1
    # ... and the app received the exact bytes that were sent, not the canonical form.
    assert app.calls == [b'{"name": "A", "size": 10}']


@pytest.mark.parametrize(
    ("first", "retry", "replayed"),
    [
        # Issue 21, item 2: beyond double precision (an 18-decimal token amount), a changed
        # amount was replayed as the first one's success instead of a 422.
        (b'{"amount": 1.000000000000000001}', b'{"amount": 1.000000000000000002}', False),
        (b'{"amount": 9007199254740993.0}', b'{"amount": 9007199254740992.0}', False),
        # ... and one amount written two ways was a 422.
        (b'{"amount": 1000000}', b'{"amount": 1e6}', True),
        (b'{"amount": 1000000.0}', b'{"amount": 10E+5}', True),
    ],
)
async def test_json_numbers_compare_by_exact_value(
    first: bytes, retry: bytes, replayed: bool, make_client: ClientFactory
) -> None:
    app = CountingApp()
    middleware, _ = wrap(app)
    client = make_client(middleware)
    headers = {"Content-Type": "application/json"}
    assert (await post(client, content=first, headers=headers)).status_code == 201
    again = await post(client, content=retry, headers=headers)
    if replayed:
        assert again.status_code == 201
        assert again.headers["idempotency-status"] == "replayed"
    else:
        assert again.status_code == 422
        assert again.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert app.calls == [first]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/funds", {"name": "B"}),  # same endpoint, another body
        ("/api/funds?dry_run=1", {"name": "A"}),  # another query
        ("/api/other", {"name": "A"}),  # another endpoint: never its response
    ],
)
async def test_reused_key_for_another_request_is_422_and_changes_nothing(
    path: str, body: dict[str, str], make_client: ClientFactory
) -> None:
    app = CountingApp()
    registry = CollectorRegistry()
    middleware, _ = wrap(app, registry=registry)
    client = make_client(middleware)
    first = await post(client, body={"name": "A"})
    reused = await post(client, path, body=body)
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "idempotency-status" not in reused.headers
    assert len(app.calls) == 1
    original = await post(client, body={"name": "A"})
    assert original.headers["idempotency-status"] == "replayed"
    assert original.content == first.content
    assert sample(registry, "mismatch") == 1


async def test_keys_are_scoped_to_the_caller(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, _ = wrap(app, caller=caller_from_header("X-User-Id"))
    client = make_client(middleware)
    alice = await post(client, headers={"X-User-Id": "alice"})
    bob = await post(client, headers={"X-User-Id": "bob"})
    alice_again = await post(client, headers={"X-User-Id": "alice"})
    assert len(app.calls) == 2
    assert bob.headers["idempotency-status"] == "created"
    assert bob.json()["call"] == 2
    assert alice_again.json() == alice.json()


async def test_default_caller_is_the_authorization_credential(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, _ = wrap(app)
    client = make_client(middleware)
    await post(client, headers={"Authorization": "Bearer one"})
    other = await post(client, headers={"Authorization": "Bearer two"})
    same = await post(client, headers={"Authorization": "Bearer one"})
    assert other.headers["idempotency-status"] == "created"
    assert same.headers["idempotency-status"] == "replayed"
    assert len(app.calls) == 2


# -- unknown callers: never one scope shared by everyone without credentials --------------------


class StoreUnderTest:
    """A real store and a count of the records it holds (memory, PostgreSQL or Redis)."""

    def __init__(self, store: Any, count: Callable[[], Awaitable[int]]) -> None:
        self.store = store
        self.count = count


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def real_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    """Each backend, empty: its own PostgreSQL table or Redis key prefix."""
    if request.param == "memory":
        memory = MemoryIdempotencyStore()

        async def count_memory() -> int:
            return len(memory)

        yield StoreUnderTest(memory, count_memory)
    elif request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        table = f"idem_{uuid.uuid4().hex[:12]}"
        postgres = PostgresIdempotencyStore(
            dsn, table=table, pool_options={"min_size": 1, "max_size": 2}
        )
        await postgres.ensure_schema()

        async def count_rows() -> int:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
            finally:
                await conn.close()

        yield StoreUnderTest(postgres, count_rows)
        await postgres.aclose()
    else:
        import redis.asyncio as redis_asyncio

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        redis_store = RedisIdempotencyStore.from_url(url, key_prefix=prefix)
        client = redis_asyncio.Redis.from_url(url)

        async def count_keys() -> int:
            return len([key async for key in client.scan_iter(match=f"{prefix}*", count=500)])

        yield StoreUnderTest(redis_store, count_keys)
        await client.aclose()
        await redis_store.aclose()


class OrderApp:
    """Places an order for the session cookie's user, or answers 401 without a session (the
    way an app that authenticates by cookie does)."""

    def __init__(self) -> None:
        self.orders: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        cookie = dict(scope["headers"]).get(b"cookie", b"")
        user = cookie.removeprefix(b"session=").decode()
        if not user:
            await Problem(401, "UNAUTHENTICATED", "log in first").send(send)
            return
        self.orders.append(user)
        body = json.dumps({"order": len(self.orders), "for": user}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("blank", ["", " ", "\t"])
async def test_a_blank_authorization_header_names_no_caller(
    blank: str, make_client: ClientFactory
) -> None:
    # Every client sending an empty Authorization header shared one caller (the digest of
    # nothing), so one could replay another's response.
    app = OrderApp()
    middleware, _ = wrap(app, store=MemoryIdempotencyStore(), registry=CollectorRegistry())
    client = make_client(middleware)
    response = await client.post(
        "/orders",
        json={"item": "book"},
        headers={"Authorization": blank, "Cookie": "session=alice", "Idempotency-Key": "k"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "IDEMPOTENCY_CALLER_UNKNOWN"
    assert app.orders == []


async def test_cookie_users_never_get_each_others_response_by_default(
    real_store: StoreUnderTest, make_client: ClientFactory
) -> None:
    # Issue 21, item 1: with the default caller (the Authorization header), two users
    # authenticated by cookie shared the empty caller, and Bob got Alice's confirmation.
    app = OrderApp()
    registry = CollectorRegistry()
    middleware, _ = wrap(app, store=real_store.store, registry=registry)
    client = make_client(middleware)
    alice = await client.post(
        "/orders",
        json={"item": "book"},
        headers={"Cookie": "session=alice", "Idempotency-Key": "order-1"},
    )
    bob = await client.post(
        "/orders",
        json={"item": "book"},
        headers={"Cookie": "session=bob", "Idempotency-Key": "order-1"},
    )
    for response in (alice, bob):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "IDEMPOTENCY_CALLER_UNKNOWN"
        assert "credentials" in response.json()["detail"]
        assert "caller=" in response.json()["detail"]
        assert "idempotency-status" not in response.headers
    assert app.orders == []  # neither ran: refused, not run unprotected
    assert await real_store.count() == 0
    assert sample(registry, "caller_unknown") == 2
    # Named by a header the authentication layer sets, each user gets their own order.
    middleware, _ = wrap(app, store=real_store.store, caller=caller_from_header("X-User-Id"))
    client = make_client(middleware)
    for user in ("alice", "bob"):
        headers = {"Cookie": f"session={user}", "X-User-Id": user, "Idempotency-Key": "order-1"}
        placed = await client.post("/orders", json={"item": "book"}, headers=headers)
        assert placed.headers["idempotency-status"] == "created"
        assert placed.json()["for"] == user
    assert app.orders == ["alice", "bob"]


async def test_anonymous_requests_leave_no_record(
    real_store: StoreUnderTest, make_client: ClientFactory
) -> None:
    # Issue 21, item 1: each unauthenticated keyed request left its 401 on record for 24 h.
    app = OrderApp()
    middleware, _ = wrap(app, store=real_store.store)
    client = make_client(middleware)
    for number in range(20):
        response = await client.post(
            "/orders", json={}, headers={"Idempotency-Key": f"anonymous-{number}"}
        )
        assert response.status_code == 400
        assert response.json()["code"] == "IDEMPOTENCY_CALLER_UNKNOWN"
    assert await real_store.count() == 0


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_not_recorded(
    status: int, real_store: StoreUnderTest, make_client: ClientFactory
) -> None:
    # An authentication failure answers the credentials, not the operation: the claim is
    # released, so the retry with credentials the app accepts runs the operation.
    app = CountingApp()
    app.statuses = [status, 201]
    middleware, _ = wrap(app, store=real_store.store)
    client = make_client(middleware)
    refused = await post(client, headers={"Authorization": "Bearer expired"})
    assert refused.status_code == status
    assert refused.headers["idempotency-stored"] == "false"
    assert await real_store.count() == 0
    retried = await post(client, headers={"Authorization": "Bearer expired"})
    assert retried.status_code == 201
    assert retried.headers["idempotency-status"] == "created"
    assert len(app.calls) == 2


async def test_an_empty_caller_is_an_unknown_caller(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, store = wrap(app, caller=lambda scope: "")
    response = await post(make_client(middleware))
    assert response.status_code == 400
    assert response.json()["code"] == "IDEMPOTENCY_CALLER_UNKNOWN"
    assert app.calls == []
    assert len(store) == 0


async def test_unknown_callers_can_be_run_without_idempotency(make_client: ClientFactory) -> None:
    app = OrderApp()
    registry = CollectorRegistry()
    middleware, store = wrap(app, unknown_caller="ignore_key", registry=registry)
    client = make_client(middleware)
    anonymous = {"Idempotency-Key": "order-1"}
    refused = await client.post("/orders", json={}, headers=anonymous)
    assert refused.status_code == 401  # the app's own answer to a request without credentials
    assert refused.json()["code"] == "UNAUTHENTICATED"
    for _ in range(2):
        placed = await client.post(
            "/orders", json={}, headers={**anonymous, "Cookie": "session=alice"}
        )
        assert placed.status_code == 201
        assert "idempotency-status" not in placed.headers  # the key was not honoured
    assert app.orders == ["alice", "alice"]
    assert len(store) == 0
    assert sample(registry, "caller_unknown") == 3
    # A request with credentials is still idempotent.
    for _ in range(2):
        await client.post(
            "/orders", json={}, headers={**anonymous, **AUTH, "Cookie": "session=bob"}
        )
    assert app.orders == ["alice", "alice", "bob"]


async def test_body_in_many_chunks_reaches_the_app_unchanged() -> None:
    app = CountingApp()
    middleware, _ = wrap(app)
    parts = [b'{"na', b'me": ', b'"chunked"}']
    sent: list[Message] = []

    def scope() -> Scope:
        return {
            "type": "http",
            "method": "POST",
            "path": "/api/funds",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"authorization", AUTHORIZATION.encode()),
                (b"idempotency-key", f'"{KEY}"'.encode()),
                (b"content-type", b"application/json"),
            ],
        }

    async def send(message: Message) -> None:
        sent.append(message)

    for _ in range(2):
        queue = [
            {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
            for i, part in enumerate(parts)
        ]

        async def receive(queue: list[dict[str, Any]] = queue) -> Message:
            return queue.pop(0)

        await middleware(scope(), receive, send)
    assert app.calls == [b'{"name": "chunked"}']
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [dict(m["headers"])[b"idempotency-status"] for m in starts] == [b"created", b"replayed"]


# -- keys and limits: rejected before any store is touched ------------------------------------


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (f'"{KEY}"'.encode(), True),  # draft section 2.1: an sf-string
        (KEY.encode(), True),  # bare token, as many clients send it
        (b'"with \\"escaped\\" quote"', True),
        (b'"' + b"k" * 255 + b'"', True),  # at the default length cap
        (b'"' + b"k" * 256 + b'"', False),  # over it
        (b'""', False),  # empty string
        (b'"unterminated', False),
        (b'"key";param=1', False),  # the draft says String, not an Item with parameters
        (b"two words", False),
        ('"ключ"'.encode(), False),  # non-ASCII
        (b'"tab\there"', False),  # control character
    ],
)
async def test_key_syntax(raw: bytes, valid: bool, make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, store = wrap(app)
    client = make_client(middleware)
    response = await client.post(
        "/api/funds",
        json={},
        headers=[(b"authorization", AUTHORIZATION.encode()), (b"idempotency-key", raw)],
    )
    if valid:
        assert response.status_code == 201
        assert len(store) == 1
    else:
        assert response.status_code == 400
        assert response.json()["code"] == "IDEMPOTENCY_KEY_INVALID"
        assert len(store) == 0
        assert app.calls == []


async def test_two_key_fields_are_rejected(make_client: ClientFactory) -> None:
    middleware, store = wrap(CountingApp())
    client = make_client(middleware)
    response = await client.post(
        "/api/funds", json={}, headers=[(b"idempotency-key", b'"a"'), (b"idempotency-key", b'"b"')]
    )
    assert response.status_code == 400
    assert response.json()["code"] == "IDEMPOTENCY_KEY_INVALID"
    assert len(store) == 0


async def test_missing_key_is_400_where_required_and_passes_elsewhere(
    make_client: ClientFactory,
) -> None:
    app = CountingApp()
    middleware, _ = wrap(app, required=["/api/funds"])
    client = make_client(middleware)
    missing = await post(client, key=None)
    assert missing.status_code == 400
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "IDEMPOTENCY_KEY_MISSING"
    assert app.calls == []
    elsewhere = await post(client, "/api/other", key=None)
    assert elsewhere.status_code == 201
    assert "idempotency-status" not in elsewhere.headers


async def test_only_configured_methods_and_routes(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, store = wrap(app, routes=["/api/funds", "/api/funds/{id}"])
    client = make_client(middleware)
    await post(client, "/api/unlisted")
    await post(client, "/api/unlisted")
    await client.put("/api/funds", json={}, headers={"Idempotency-Key": KEY, **AUTH})
    assert len(app.calls) == 3
    assert len(store) == 0
    patch = await client.patch("/api/funds/7", json={}, headers={"Idempotency-Key": KEY, **AUTH})
    assert patch.headers["idempotency-status"] == "created"


async def test_oversize_body_is_413_and_not_run(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, store = wrap(app, max_body_bytes=16)
    client = make_client(middleware)
    response = await post(client, content=b"x" * 17)
    assert response.status_code == 413
    assert response.json()["code"] == "IDEMPOTENCY_BODY_TOO_LARGE"
    assert app.calls == []
    assert len(store) == 0


# -- concurrency and leases --------------------------------------------------------------------


async def test_duplicate_in_flight_is_409_with_retry_after(make_client: ClientFactory) -> None:
    gate = asyncio.Event()
    app = CountingApp(gate=gate)
    registry = CollectorRegistry()
    middleware, _ = wrap(app, lease=30, registry=registry)
    client = make_client(middleware)
    first = asyncio.create_task(post(client))
    await app.entered.wait()
    duplicate = await post(client)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    assert 1 <= int(duplicate.headers["retry-after"]) <= 30
    gate.set()
    assert (await first).status_code == 201
    assert (await post(client)).headers["idempotency-status"] == "replayed"
    assert len(app.calls) == 1
    assert sample(registry, "in_progress") == 1


async def test_wait_timeout_waits_for_the_first_and_replays(make_client: ClientFactory) -> None:
    gate = asyncio.Event()
    app = CountingApp(gate=gate)
    middleware, _ = wrap(app, wait_timeout=30)
    client = make_client(middleware)
    first = asyncio.create_task(post(client))
    await app.entered.wait()
    duplicate = asyncio.create_task(post(client))
    await asyncio.sleep(0.1)  # the duplicate is polling now; the first may finish
    gate.set()
    first_response, duplicate_response = await asyncio.gather(first, duplicate)
    assert duplicate_response.status_code == 201
    assert duplicate_response.headers["idempotency-status"] == "replayed"
    assert duplicate_response.content == first_response.content
    assert len(app.calls) == 1


async def test_a_handler_that_outlives_its_lease_cannot_overwrite(
    make_client: ClientFactory,
) -> None:
    clock = Clock()
    gate = asyncio.Event()
    slow = CountingApp(gate=gate)
    store = MemoryIdempotencyStore(clock=clock)
    middleware, _ = wrap(slow, store=store, lease=5, ttl=600)
    client = make_client(middleware)
    with structlog.testing.capture_logs() as logs:
        first = asyncio.create_task(post(client))
        await slow.entered.wait()
        clock.now += 6  # the lease runs out; the retry takes the key over
        slow.gate = None
        retry = await post(client)
        assert retry.headers["idempotency-status"] == "created"
        gate.set()
        late = await first
    assert late.status_code == 201  # the late handler's client still gets its answer
    assert late.headers["idempotency-stored"] == "false"
    replay = await post(client)
    assert replay.headers["idempotency-status"] == "replayed"
    assert replay.content == retry.content  # the newer owner's record stands
    assert any(entry["event"] == "idempotency claim lost before completion" for entry in logs)


async def test_a_cancelled_request_releases_its_claim() -> None:
    gate = asyncio.Event()
    app = CountingApp(gate=gate)
    middleware, store = wrap(app)
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/funds",
        "query_string": b"",
        "headers": [(b"authorization", AUTHORIZATION.encode()), (b"idempotency-key", KEY.encode())],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        return None

    task = asyncio.create_task(middleware(scope, receive, send))
    await app.entered.wait()
    assert len(store) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(store) == 0


# -- what is not recorded ------------------------------------------------------------------------


async def test_server_errors_are_not_recorded(make_client: ClientFactory) -> None:
    app = CountingApp()
    app.statuses = [503, 201]
    middleware, store = wrap(app)
    client = make_client(middleware)
    failed = await post(client)
    assert failed.status_code == 503
    assert failed.headers["idempotency-stored"] == "false"
    assert len(store) == 0
    retried = await post(client)
    assert retried.status_code == 201
    assert retried.headers["idempotency-status"] == "created"
    assert len(app.calls) == 2


async def test_server_errors_can_be_recorded(make_client: ClientFactory) -> None:
    app = CountingApp(status=500)
    middleware, _ = wrap(app, store_server_errors=True)
    client = make_client(middleware)
    await post(client)
    again = await post(client)
    assert again.status_code == 500
    assert again.headers["idempotency-status"] == "replayed"
    assert len(app.calls) == 1


async def test_an_exception_releases_the_claim(make_client: ClientFactory) -> None:
    app = CountingApp(fail=True)
    middleware, store = wrap(app)
    client = make_client(ErrorMiddleware(middleware))
    failed = await post(client)
    assert failed.status_code == 500
    assert failed.json()["code"] == "INTERNAL_ERROR"
    assert len(store) == 0
    app.fail = False
    retried = await post(client)
    assert retried.status_code == 201
    assert retried.headers["idempotency-status"] == "created"


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, [(b"content-type", b"text/plain"), (b"retry-after", b"5")]),
        (429, [(b"content-type", b"application/problem+json")]),
        (408, [(b"content-type", b"application/problem+json")]),
    ],
    ids=["retry-after", "429-without-retry-after", "408"],
)
async def test_transient_responses_are_not_recorded(
    status: int, headers: list[tuple[bytes, bytes]], make_client: ClientFactory
) -> None:
    problem = json.dumps({"type": "urn:prodkit:problem:rate-limited", "status": status}).encode()
    app = CountingApp(status=status, headers=headers, chunks=[problem])
    middleware, store = wrap(app)
    client = make_client(middleware)
    first = await post(client)
    assert first.status_code == status
    assert first.headers["idempotency-stored"] == "false"
    await post(client)
    assert len(app.calls) == 2
    assert len(store) == 0


class ProblemApp:
    """Raises a 422 problem, optionally after sending a plain 500 as Starlette's
    ``ServerErrorMiddleware`` does before it re-raises."""

    def __init__(self, *, plain_500_first: bool = False, error: Exception | None = None) -> None:
        self.calls = 0
        self.plain_500_first = plain_500_first
        self.error = error or Problem(422, "FUND_INVALID", "size must be positive")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if self.plain_500_first:
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
        raise self.error


@pytest.mark.parametrize("plain_500_first", [False, True], ids=["raised", "after-a-plain-500"])
async def test_a_raised_problem_is_recorded_and_replayed(
    plain_500_first: bool, make_client: ClientFactory
) -> None:
    app = ProblemApp(plain_500_first=plain_500_first)
    registry = CollectorRegistry()
    middleware, store = wrap(app, registry=registry)
    client = make_client(RequestIdMiddleware(ErrorMiddleware(middleware)))
    first = await post(client)
    assert first.status_code == 422
    assert first.headers["content-type"] == "application/problem+json"
    assert first.headers["idempotency-status"] == "created"
    assert "idempotency-stored" not in first.headers
    assert first.json()["code"] == "FUND_INVALID"
    assert first.json()["request_id"] == first.headers["x-request-id"]
    again = await post(client)
    assert again.status_code == 422
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content
    assert app.calls == 1
    assert len(store) == 1
    assert sample(registry, "created") == 1
    assert sample(registry, "replayed") == 1


async def test_a_plain_500_then_an_exception_is_one_unrecorded_problem(
    make_client: ClientFactory,
) -> None:
    app = ProblemApp(plain_500_first=True, error=RuntimeError("boom"))
    middleware, store = wrap(app)
    client = make_client(ErrorMiddleware(middleware))
    failed = await post(client)
    assert failed.status_code == 500
    assert failed.json()["code"] == "INTERNAL_ERROR"
    assert len(store) == 0  # released: the retry runs
    await post(client)
    assert app.calls == 2


async def test_a_plain_500_without_an_exception_is_sent_unrecorded(
    make_client: ClientFactory,
) -> None:
    app = CountingApp(status=500, headers=[(b"content-type", b"text/plain")], chunks=[b"down"])
    middleware, store = wrap(app)
    client = make_client(middleware)
    failed = await post(client)
    assert (failed.status_code, failed.content) == (500, b"down")
    assert failed.headers["idempotency-stored"] == "false"
    assert len(store) == 0


async def test_streamed_response_within_the_cap_is_recorded_whole(
    make_client: ClientFactory,
) -> None:
    app = CountingApp(chunks=[b"a" * 10, b"b" * 10, b"c" * 10])
    middleware, _ = wrap(app, max_response_bytes=30)
    client = make_client(middleware)
    first = await post(client)
    again = await post(client)
    assert first.content == again.content == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert again.headers["idempotency-status"] == "replayed"


async def test_oversize_response_is_streamed_not_recorded_and_logged(
    make_client: ClientFactory,
) -> None:
    app = CountingApp(chunks=[b"a" * 10, b"b" * 10, b"c" * 10])
    middleware, store = wrap(app, max_response_bytes=25)
    client = make_client(middleware)
    with structlog.testing.capture_logs() as logs:
        first = await post(client)
    assert first.status_code == 201
    assert first.content == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert first.headers["idempotency-stored"] == "false"
    assert len(store) == 0
    assert [e["reason"] for e in logs if e["event"] == "idempotent response not stored"] == [
        "response body larger than max_response_bytes"
    ]


# -- store failures ------------------------------------------------------------------------------


def unreachable_store() -> RedisIdempotencyStore:
    pytest.importorskip("redis")
    return RedisIdempotencyStore.from_url("redis://127.0.0.1:1/0")


async def test_unreachable_store_fails_closed_with_503(make_client: ClientFactory) -> None:
    app = CountingApp()
    registry = CollectorRegistry()
    store = unreachable_store()
    middleware, _ = wrap(app, store=store, registry=registry)
    client = make_client(middleware)
    try:
        response = await post(client)
    finally:
        await store.aclose()
    assert response.status_code == 503
    assert response.json()["code"] == "IDEMPOTENCY_STORE_UNAVAILABLE"
    assert response.headers["retry-after"] == "1"  # the default breaker probes after 0.5 s
    assert app.calls == []
    assert sample(registry, "error") == 1


async def test_unreachable_store_can_fail_open(make_client: ClientFactory) -> None:
    app = CountingApp()
    store = unreachable_store()
    middleware, _ = wrap(app, store=store, fail_open=True)
    client = make_client(middleware)
    try:
        response = await post(client)
    finally:
        await store.aclose()
    assert response.status_code == 201
    assert "idempotency-status" not in response.headers
    assert len(app.calls) == 1


async def test_open_breaker_answers_503_without_calling_the_store(
    make_client: ClientFactory,
) -> None:
    registry = CollectorRegistry()
    breaker = CircuitBreaker(
        "idempotency-store", failure_threshold=1, recovery_time=5, registry=registry
    )
    store = unreachable_store()
    middleware, _ = wrap(CountingApp(), store=store, breaker=breaker, registry=registry)
    client = make_client(middleware)
    try:
        first = await post(client)
        second = await post(client, key="another-key")
    finally:
        await store.aclose()
    assert first.status_code == second.status_code == 503
    assert second.headers["retry-after"] == "5"  # the breaker's recovery_time
    rejections = registry.get_sample_value(
        "prodkit_circuit_breaker_rejections_total", {"breaker": "idempotency-store"}
    )
    assert rejections == 1


async def test_a_full_memory_store_fails_closed(make_client: ClientFactory) -> None:
    gate = asyncio.Event()
    app = CountingApp(gate=gate)
    middleware, _ = wrap(app, store=MemoryIdempotencyStore(max_entries=1))
    client = make_client(middleware)
    first = asyncio.create_task(post(client))
    await app.entered.wait()
    second = await post(client, key="another-key")
    gate.set()
    await first
    assert second.status_code == 503
    assert second.json()["code"] == "IDEMPOTENCY_STORE_UNAVAILABLE"
    assert len(app.calls) == 1


# -- configuration and helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"stored_headers": ["Content-Type", "Set-Cookie"]},
        {"lease": 100, "ttl": 10},
        {"lease": 0},
        {"methods": ["post"]},
        {"methods": []},
        {"header_name": "Idempotency Key"},
        {"max_key_length": 0},
        {"wait_timeout": 0},
        {"routes": ["no-slash"]},
        {"unknown_caller": "share"},
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        IdempotencyMiddleware(CountingApp(), store=MemoryIdempotencyStore(), **options)


def test_store_must_implement_the_protocol() -> None:
    with pytest.raises(ConfigurationError, match="claim"):
        IdempotencyMiddleware(CountingApp(), store=object())  # type: ignore[arg-type]


class CompletionFailingStore(MemoryIdempotencyStore):
    """A memory store whose ``complete`` fails while ``failing`` is set: a store that went
    down between the claim and the record (found by the load test's spike on PostgreSQL)."""

    failing = True

    async def complete(self, *args: Any, **kwargs: Any) -> bool:
        if self.failing:
            raise ConnectionResetError("store went away")
        return await super().complete(*args, **kwargs)


async def test_a_record_that_cannot_be_written_keeps_the_key_claimed(
    make_client: ClientFactory,
) -> None:
    app = CountingApp()
    store = CompletionFailingStore()
    breaker = CircuitBreaker("idem", failure_threshold=1, registry=CollectorRegistry())
    middleware, _ = wrap(app, store=store, breaker=breaker)
    client = make_client(middleware)
    with structlog.testing.capture_logs() as logs:
        first = await post(client)
    assert first.status_code == 201  # the handler ran: its client gets its answer
    assert first.headers["idempotency-stored"] == "false"
    assert any("not recorded" in entry["event"] for entry in logs)
    # An immediate retry must not run the handler a second time.
    retry = await post(client)
    assert retry.status_code == 409
    assert retry.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    assert len(app.calls) == 1


async def test_recording_is_tried_even_while_the_breaker_is_open(
    make_client: ClientFactory,
) -> None:
    app = CountingApp()
    store = CompletionFailingStore()
    store.failing = False
    clock = Clock()
    breaker = CircuitBreaker(
        "idem", failure_threshold=1, recovery_time=5, registry=CollectorRegistry(), clock=clock
    )
    middleware, _ = wrap(app, store=store, breaker=breaker)
    client = make_client(middleware)

    async def open_breaker_during_the_handler(scope: Scope, receive: Receive, send: Send) -> None:
        breaker.record_failure()  # another request saw the store fail meanwhile
        await app(scope, receive, send)

    middleware.app = open_breaker_during_the_handler
    first = await post(client)
    assert first.status_code == 201
    assert "idempotency-stored" not in first.headers  # recorded despite the open breaker
    record = await store.get(middleware.storage_key(ALICE, KEY))
    assert record is not None
    assert record.completed
    middleware.app = app
    # The breaker stays open (its clock does not move), so the retry's claim fails closed ...
    refused = await post(client)
    assert refused.status_code == 503
    assert refused.json()["code"] == "IDEMPOTENCY_STORE_UNAVAILABLE"
    # ... and once it lets a probe through, the record written under the open breaker replays.
    clock.now += breaker.recovery_time
    replay = await post(client)
    assert replay.status_code == 201
    assert replay.headers["idempotency-status"] == "replayed"
    assert replay.content == first.content
    assert len(app.calls) == 1


class SlowCompletionStore(MemoryIdempotencyStore):
    """A store whose ``complete`` takes long enough for the request to be cancelled meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.completing = asyncio.Event()

    async def complete(self, *args: Any, **kwargs: Any) -> bool:
        self.completing.set()
        await asyncio.sleep(10)
        return await super().complete(*args, **kwargs)


async def test_a_request_cancelled_while_recording_keeps_the_key_claimed(
    make_client: ClientFactory,
) -> None:
    app = CountingApp()
    store = SlowCompletionStore()
    middleware, _ = wrap(app, store=store)
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/funds",
        "query_string": b"",
        "headers": [
            (b"authorization", AUTHORIZATION.encode()),
            (b"idempotency-key", KEY.encode()),
            (b"content-type", b"application/json"),
        ],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"name":"A"}', "more_body": False}

    async def send(message: Message) -> None:
        return None

    task = asyncio.create_task(middleware(scope, receive, send))
    await store.completing.wait()
    task.cancel()  # the client went away, or the shutdown deadline struck
    with pytest.raises(asyncio.CancelledError):
        await task
    retry = await post(make_client(middleware))
    assert retry.status_code == 409  # not run again while the first one's lease holds
    assert len(app.calls) == 1


async def test_json_with_a_lone_surrogate_is_not_a_server_error(make_client: ClientFactory) -> None:
    app = CountingApp()
    middleware, _ = wrap(app)
    response = await post(
        make_client(middleware),
        content=b'{"name": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201
    assert len(app.calls) == 1
