"""The contract every middleware prodkit exports keeps with the app it wraps.

Each of the fourteen is wrapped around one real ASGI app and driven with plain ASGI calls:

(a) a ``lifespan`` scope reaches the app and its start-up and shutdown messages come back
    unchanged (``LifespanMiddleware`` answers lifespan itself, by design: its documented order
    of hooks and the app's own lifespan is asserted instead);
(b) a ``websocket`` scope reaches the app and the connect, accept, send and close messages
    pass unchanged (``RequestIdMiddleware`` gives the connection an id, its documented change);
(c) a streaming HTTP response of several ``more_body`` chunks reaches the client chunk by
    chunk: each chunk is at the client before the app sends the next, complete and in order.

A shared transcript records every message where it crosses a boundary: given by the server
(``server>``), received by the app (``app<``), sent by the app (``app>``), received by the
server (``server<``). Passing a message through unchanged and at once is then one exact
property: every ``app<`` right after an equal ``server>``, every ``app>`` right before an
equal ``server<``, and nothing else in between. A middleware that buffered a chunk, answered a
message itself, sent something of its own or read ahead would break it.

Beyond that, for (a) and (b): no metric changes (no request counted, no rate-limit decision,
no in-flight gauge moved), nothing is logged (no access line), and middlewares that count
requests in flight do not count the connection, while they do count an HTTP request.

And how each is configured: ``XxxMiddleware(app, *, options=None, **keywords)``, with one
frozen keyword-only dataclass ``XxxOptions`` and its fields as the ``XxxKeywords`` typed
keywords, both exported beside the middleware, and an ``__init__`` of at most 40 lines (the
options check themselves; the middleware only precomputes what requests read).
(d) The layers share what they know about a request through one object on one scope key, the
    request state (``prodkit.request``): each middleware alone leaves no other ``prodkit.*``
    key on the scope (but the two deprecated ones it documents), and a layer that reads the
    state makes it when no outer layer did; stacked in the recommended order they share one
    state, whose facts are the ones the client, the access line and the metrics see.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args, get_type_hints

import pytest
from prometheus_client import CollectorRegistry

import prodkit
from prodkit import (
    AccessLogMiddleware,
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    CORSMiddleware,
    ErrorMiddleware,
    GracefulShutdownMiddleware,
    HealthMiddleware,
    HTTPMetricsMiddleware,
    IdempotencyMiddleware,
    LifespanMiddleware,
    MetricsEndpointMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    RequestTimeoutMiddleware,
    SecurityHeadersMiddleware,
    get_request_id,
)
from prodkit.asgi import (
    REQUEST_STATE_KEY,
    UNMATCHED_ROUTE,
    ASGIApp,
    Message,
    Receive,
    RequestState,
    Scope,
    Send,
)
from prodkit.cache import CacheRule, MemoryCacheStore
from prodkit.idempotency import MemoryIdempotencyStore
from prodkit.lifecycle import ShutdownCoordinator, ShutdownState
from prodkit.ratelimit import MemoryRateLimitStore
from prodkit.testing import capture_logs

Entry = tuple[str, Any]
CHUNKS = (b"one ", b"two ", b"three ", b"four")


@dataclass
class Env:
    """What one test's middleware is built with; fresh for every test."""

    transcript: list[Entry] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Its own registry: its state gauge moving through a lifespan is its documented job.
    coordinator: ShutdownCoordinator = field(
        default_factory=lambda: ShutdownCoordinator(registry=CollectorRegistry())
    )

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample in the registry, by name and labels."""
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")  # a creation time, not a measurement
        }


def _lifespan_with_hooks(app: ASGIApp, env: Env) -> ASGIApp:
    middleware = LifespanMiddleware(app, coordinator=env.coordinator)

    async def opened() -> None:
        env.transcript.append(("hook", "startup"))

    async def closed() -> None:
        env.transcript.append(("hook", "shutdown"))

    middleware.add_hook(opened, closed)
    return middleware


class StateWith:
    """Equal to a :class:`RequestState` whose attributes have the given values."""

    def __init__(self, **values: object) -> None:
        self.values = values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestState) and all(
            getattr(other, name) == value for name, value in self.values.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StateWith({self.values})"


@dataclass(frozen=True)
class Case:
    """One middleware: how to build it, and what it documents beyond passing through."""

    build: Callable[[ASGIApp, Env], ASGIApp]
    #: Requests it counts as in flight right now (``None``: it counts none).
    in_flight: Callable[[Any, Env], int] | None = None
    #: The HTTP request of (c): one the middleware handles and lets stream.
    method: str = "GET"
    path: str = "/stream"
    #: Request headers of (c) beyond ``Host``.
    headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Keys a websocket scope gains on its way to the app.
    websocket_scope_adds: Mapping[str, object] = field(default_factory=dict)
    #: The request id the app sees while a websocket is open.
    websocket_request_id: str | None = None
    #: Headers it adds to the handshake's ``websocket.accept`` (the request id does).
    websocket_accept_adds: tuple[tuple[bytes, bytes], ...] = ()
    #: The lifespan watches the coordinator: it is stopped once the lifespan ended.
    stops_coordinator: bool = False
    #: What it logs for an HTTP request (the capture's control: lifespan and websocket log none).
    http_log_events: tuple[str, ...] = ()
    #: It reads the request state for the HTTP request of (c), so it makes one when alone.
    makes_state: bool = False
    #: The deprecated scope keys it still sets for that request (documented in its docs page).
    deprecated_keys: frozenset[str] = frozenset()
    #: It records the response: the state holds its outcome afterwards.
    records_outcome: bool = False


CASES: dict[str, Case] = {
    "AccessLogMiddleware": Case(
        lambda app, env: AccessLogMiddleware(app),
        http_log_events=("request completed",),
        makes_state=True,
        records_outcome=True,
    ),
    "CORSMiddleware": Case(
        # A hostile origin on the websocket (see _websocket_scope) is not CORS's to judge.
        lambda app, env: CORSMiddleware(app, allow_origins="https://a.example.com"),
        makes_state=True,  # the Origin and preflight fields, read once
    ),
    "CacheMiddleware": Case(
        lambda app, env: CacheMiddleware(
            app,
            routes={"/items/{id}": CacheRule(ttl=60)},
            store=MemoryCacheStore(),
            registry=env.registry,
        ),
        # A write to a cached route invalidates it and streams; a stored read is held back
        # until complete (test_recording_middlewares_answer_once_the_response_is_complete).
        method="POST",
        path="/items/1",
    ),
    "ConcurrencyLimitMiddleware": Case(
        lambda app, env: ConcurrencyLimitMiddleware(app, max_concurrency=1, registry=env.registry),
        in_flight=lambda middleware, env: int(middleware.in_flight),
    ),
    "ErrorMiddleware": Case(lambda app, env: ErrorMiddleware(app)),
    "GracefulShutdownMiddleware": Case(
        lambda app, env: GracefulShutdownMiddleware(app, coordinator=env.coordinator),
        in_flight=lambda middleware, env: env.coordinator.in_flight,
        stops_coordinator=True,
    ),
    "HTTPMetricsMiddleware": Case(
        lambda app, env: HTTPMetricsMiddleware(app, registry=env.registry),
        makes_state=True,
        records_outcome=True,
    ),
    "HealthMiddleware": Case(
        lambda app, env: HealthMiddleware(app, coordinator=env.coordinator, registry=env.registry)
    ),
    "IdempotencyMiddleware": Case(
        lambda app, env: IdempotencyMiddleware(
            app, store=MemoryIdempotencyStore(), registry=env.registry
        ),
        # A POST without a key streams; one with a key is recorded, so held back until complete.
        method="POST",
        makes_state=True,  # the Idempotency-Key fields, read once
    ),
    "LifespanMiddleware": Case(_lifespan_with_hooks, stops_coordinator=True),
    "MetricsEndpointMiddleware": Case(
        lambda app, env: MetricsEndpointMiddleware(app, registry=env.registry)
    ),
    "RateLimitMiddleware": Case(
        # One request a minute: a websocket or lifespan that spent it would show as a decision.
        lambda app, env: RateLimitMiddleware(
            app, policy="1/minute", store=MemoryRateLimitStore(), registry=env.registry
        )
    ),
    "RequestIdMiddleware": Case(
        lambda app, env: RequestIdMiddleware(app),
        # The request state holds the id; docs/request-id.md still documents the old key.
        websocket_scope_adds={
            REQUEST_STATE_KEY: StateWith(request_id="ws-1"),
            "prodkit.request_id": "ws-1",
        },
        websocket_request_id="ws-1",
        websocket_accept_adds=((b"x-request-id", b"ws-1"),),
        makes_state=True,
        deprecated_keys=frozenset({"prodkit.request_id"}),
    ),
    "RequestTimeoutMiddleware": Case(
        # A request with a body: it is read (within the deadline) before the app streams.
        lambda app, env: RequestTimeoutMiddleware(app, body_timeout=30),
        method="POST",
        headers=((b"content-length", b"2"),),
        makes_state=True,  # Content-Length and Transfer-Encoding, read once
    ),
    "SecurityHeadersMiddleware": Case(lambda app, env: SecurityHeadersMiddleware(app)),
}


def _copy(message: Message) -> Message:
    # A copy as it was when it crossed: a middleware may still change the dict afterwards.
    return copy.deepcopy(message)


class App:
    """A real ASGI app for all three protocols that writes what it receives and sends."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.scopes: list[dict[str, Any]] = []
        self.request_ids: list[str | None] = []
        self.in_flight: list[int] = []
        self.samples: list[object] = []
        self.probe: Callable[[], int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))
        self.request_ids.append(get_request_id())
        self.samples.append(self.env.samples())
        if self.probe is not None:
            self.in_flight.append(self.probe())
        transcript = self.env.transcript

        async def received() -> Message:
            message = await receive()
            transcript.append(("app<", _copy(message)))
            return message

        async def sent(message: Message) -> None:
            transcript.append(("app>", _copy(message)))
            await send(message)

        if scope["type"] == "lifespan":
            await self._lifespan(received, sent)
        elif scope["type"] == "websocket":
            await self._websocket(received, sent)
        else:
            await self._stream(received, sent)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"accepted")]})
        text = (await receive())["text"]
        await send({"type": "websocket.send", "text": f"echo: {text}"})
        await send({"type": "websocket.send", "bytes": b"\x00\x01"})
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})

    async def _stream(self, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-app", b"streamed")],
            }
        )
        for index, chunk in enumerate(CHUNKS):
            more = index < len(CHUNKS) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})


async def serve(app: ASGIApp, scope: Scope, incoming: Sequence[Message], env: Env) -> None:
    """Play the server: hand out ``incoming`` one message per ``receive``, take what is sent."""
    pending = list(incoming)

    async def receive() -> Message:
        # Past the script, a real server's next message is the client going away.
        message = pending.pop(0) if pending else {"type": "http.disconnect"}
        env.transcript.append(("server>", _copy(message)))
        return message

    async def send(message: Message) -> None:
        env.transcript.append(("server<", _copy(message)))

    await app(scope, receive, send)


def passed_through(transcript: Sequence[Entry]) -> list[Entry]:
    """The transcript of a middleware that passes every message on unchanged and at once."""
    expected: list[Entry] = []
    for side, message in transcript:
        if side == "app<":
            expected += [("server>", message), ("app<", message)]
        elif side == "app>":
            expected += [("app>", message), ("server<", message)]
    return expected


def _websocket_scope() -> Scope:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"origin", b"https://evil.test"),
            (b"x-request-id", b"ws-1"),
        ],
        "client": ("192.0.2.7", 50000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
    }


def _http_scope(method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("192.0.2.7", 50000),
        "server": ("127.0.0.1", 8000),
    }


@dataclass
class Subject:
    """One case built around a fresh :class:`App`."""

    case: Case
    env: Env
    app: App
    middleware: ASGIApp


@pytest.fixture(params=sorted(CASES))
def subject(request: pytest.FixtureRequest) -> Subject:
    case = CASES[request.param]
    env = Env()
    app = App(env)
    middleware = case.build(app, env)
    if case.in_flight is not None:
        count = case.in_flight
        app.probe = lambda: count(middleware, env)
    return Subject(case, env, app, middleware)


def test_every_exported_middleware_is_covered() -> None:
    exported = {name for name in prodkit.__all__ if name.endswith("Middleware")}
    assert exported == set(CASES)
    assert len(CASES) == 15


async def test_lifespan_reaches_the_app_unchanged(subject: Subject) -> None:
    env, app = subject.env, subject.app
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    before = env.samples()
    with capture_logs() as logs:
        await serve(
            subject.middleware,
            scope,
            [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
            env,
        )
    assert app.scopes == [scope]
    if isinstance(subject.middleware, LifespanMiddleware):
        # It is the server's counterpart: it runs its hooks around the app's own lifespan,
        # drives that lifespan itself, and answers the server once each phase completed.
        assert env.transcript == [
            ("server>", {"type": "lifespan.startup"}),
            ("hook", "startup"),
            ("app<", {"type": "lifespan.startup"}),
            ("app>", {"type": "lifespan.startup.complete"}),
            ("server<", {"type": "lifespan.startup.complete"}),
            ("server>", {"type": "lifespan.shutdown"}),
            ("app<", {"type": "lifespan.shutdown"}),
            ("app>", {"type": "lifespan.shutdown.complete"}),
            ("hook", "shutdown"),
            ("server<", {"type": "lifespan.shutdown.complete"}),
        ]
    else:
        assert env.transcript == passed_through(env.transcript)
        assert [side for side, _ in env.transcript].count("server<") == 2
    if subject.case.in_flight is not None:
        assert app.in_flight == [0]  # a lifespan is not a request in flight
    if subject.case.stops_coordinator:
        assert env.coordinator.state is ShutdownState.STOPPED
    else:
        assert env.coordinator.state is ShutdownState.RUNNING
    assert app.samples == [before]
    assert env.samples() == before
    if subject.case.stops_coordinator:
        # The lifecycle layers install the coordinator's signal handling at start-up, and say so.
        assert [line["event"] for line in logs] == ["shutdown signals held for the drain"]
    else:
        assert logs == []


async def test_websocket_reaches_the_app_unchanged(subject: Subject) -> None:
    env, app, case = subject.env, subject.app, subject.case
    scope = _websocket_scope()
    sent_scope = dict(scope)
    before = env.samples()
    with capture_logs() as logs:
        await serve(
            subject.middleware,
            scope,
            [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "ping"}],
            env,
        )
    assert app.scopes == [{**sent_scope, **case.websocket_scope_adds}]
    assert app.request_ids == [case.websocket_request_id]
    assert get_request_id() is None
    expected = passed_through(env.transcript)
    for index, (side, message) in enumerate(expected):
        if side == "server<" and message["type"] == "websocket.accept":
            headers = [*message.get("headers", []), *case.websocket_accept_adds]
            expected[index] = (side, {**message, "headers": headers})
    assert env.transcript == expected
    assert [message["type"] for side, message in env.transcript if side == "server<"] == [
        "websocket.accept",
        "websocket.send",
        "websocket.send",
        "websocket.close",
    ]
    if case.in_flight is not None:
        assert app.in_flight == [0]  # a websocket is not a request in flight
    assert app.samples == [before]
    assert env.samples() == before
    assert logs == []


def _response_side(transcript: Sequence[Entry]) -> tuple[list[Entry], list[Message]]:
    """The transcript with response starts reduced to their status, and the starts."""
    starts: list[Message] = []
    reduced: list[Entry] = []
    for side, message in transcript:
        if isinstance(message, dict) and message.get("type") == "http.response.start":
            starts.append(message)
            message = {"type": "http.response.start", "status": message["status"]}
        reduced.append((side, message))
    return reduced, starts


async def test_a_streamed_response_reaches_the_client_chunk_by_chunk(subject: Subject) -> None:
    env, app, case = subject.env, subject.app, subject.case
    scope = _http_scope(case.method, case.path, case.headers)
    request: Message = {"type": "http.request", "body": b"{}", "more_body": False}
    with capture_logs() as logs:
        await serve(subject.middleware, scope, [request], env)
    assert tuple(entry["event"] for entry in logs) == case.http_log_events
    # Headers are the middlewares' to add (request id, security headers, RateLimit ...); the
    # status, the app's own headers and every body message reach the client as sent.
    transcript, starts = _response_side(env.transcript)
    assert transcript == passed_through(transcript)
    app_start, client_start = starts
    assert set(app_start["headers"]) <= set(client_start["headers"])
    bodies = [m for side, m in env.transcript if side == "server<" and m["type"].endswith("body")]
    assert [(m["body"], m["more_body"]) for m in bodies] == [
        (b"one ", True),
        (b"two ", True),
        (b"three ", True),
        (b"four", False),
    ]
    if case.in_flight is not None:
        assert app.in_flight == [1]  # the probe sees requests: a websocket's 0 means something


@pytest.mark.parametrize(
    ("name", "method", "path", "headers", "marker"),
    [
        ("CacheMiddleware", "GET", "/items/1", [], (b"x-cache", b"MISS")),
        (
            "IdempotencyMiddleware",
            "POST",
            "/stream",
            [(b"idempotency-key", b'"k-1"'), (b"authorization", b"Bearer t")],
            (b"idempotency-status", b"created"),
        ),
    ],
)
async def test_recording_middlewares_answer_once_the_response_is_complete(
    name: str,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    marker: tuple[bytes, bytes],
) -> None:
    # What they store must be the whole response, so by design these two hold a response
    # they record until its last chunk: it then reaches the client complete and in order.
    env = Env()
    middleware = CASES[name].build(App(env), env)
    request: Message = {"type": "http.request", "body": b"{}", "more_body": False}
    with capture_logs():
        await serve(middleware, _http_scope(method, path, headers), [request], env)
    sides = [side for side, _ in env.transcript]
    last_chunk = len(sides) - 1 - sides[::-1].index("app>")
    assert "server<" not in sides[:last_chunk]
    to_client = [message for side, message in env.transcript if side == "server<"]
    assert to_client[0]["status"] == 200
    assert marker in to_client[0]["headers"]
    assert b"".join(m["body"] for m in to_client[1:]) == b"".join(CHUNKS)
    assert to_client[-1]["more_body"] is False
    assert all(m["more_body"] for m in to_client[1:-1])


# -- how every middleware is configured ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_middleware_takes_one_options_dataclass_or_its_keywords(name: str) -> None:
    middleware = getattr(prodkit, name)
    hints = get_type_hints(middleware.__init__)
    options, no_options = get_args(hints["options"])
    [keywords] = get_args(hints["keywords"])  # Unpack[XxxKeywords]
    assert no_options is type(None)
    assert isinstance(options, type)
    assert options.__name__ == name.removesuffix("Middleware") + "Options"
    assert keywords.__name__ == name.removesuffix("Middleware") + "Keywords"
    assert dataclasses.is_dataclass(options)
    assert vars(options)["__dataclass_params__"].frozen
    assert "__slots__" in vars(options)
    fields = dataclasses.fields(options)
    assert all(field.kw_only for field in fields)
    option_hints = get_type_hints(options)
    assert get_type_hints(keywords) == {field.name: option_hints[field.name] for field in fields}
    # Exported where the middleware is: its concern's public module.
    public = importlib.import_module(middleware.__module__.rsplit("._", 1)[0])
    assert getattr(public, name) is middleware
    assert getattr(public, options.__name__) is options
    assert getattr(public, keywords.__name__) is keywords


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_middlewares_init_is_at_most_40_lines(name: str) -> None:
    lines, _ = inspect.getsourcelines(getattr(prodkit, name).__init__)
    assert len(lines) <= 40


async def test_alone_a_middleware_shares_only_through_the_request_state(subject: Subject) -> None:
    env, app, case = subject.env, subject.app, subject.case
    scope = _http_scope(case.method, case.path, case.headers)
    request: Message = {"type": "http.request", "body": b"{}", "more_body": False}
    with capture_logs():
        await serve(subject.middleware, scope, [request], env)
    [seen] = app.scopes
    keys = {key for key in seen if key.startswith("prodkit.")}
    assert keys == ({REQUEST_STATE_KEY} if case.makes_state else set()) | case.deprecated_keys
    if not case.makes_state:
        return
    # Made on the scope it was given: an outer layer (or the server) finds the same object.
    state = scope[REQUEST_STATE_KEY]
    assert isinstance(state, RequestState)
    assert seen[REQUEST_STATE_KEY] is state
    if case.records_outcome:
        assert (state.status, state.response_bytes, state.error) == (
            200,
            len(b"".join(CHUNKS)),
            None,
        )
        assert state.end is not None
        assert state.end >= state.start
    else:
        assert state.status is None  # nothing recorded the outcome


#: Every HTTP middleware in the recommended stack's order, outermost first.
STACKED = (
    "RequestIdMiddleware",
    "AccessLogMiddleware",
    "HTTPMetricsMiddleware",
    "MetricsEndpointMiddleware",
    "SecurityHeadersMiddleware",
    "CORSMiddleware",
    "ErrorMiddleware",
    "HealthMiddleware",
    "GracefulShutdownMiddleware",
    "RequestTimeoutMiddleware",
    "ConcurrencyLimitMiddleware",
    "RateLimitMiddleware",
    "IdempotencyMiddleware",
    "CacheMiddleware",
)


async def test_stacked_middlewares_share_one_request_state() -> None:
    env = Env()
    app = App(env)
    stacked: ASGIApp = app
    for name in reversed(STACKED):
        stacked = CASES[name].build(stacked, env)
    scope = _http_scope("GET", "/stream", [(b"origin", b"https://a.example.com")])
    request: Message = {"type": "http.request", "body": b"", "more_body": False}
    with capture_logs() as logs:
        await serve(stacked, scope, [request], env)

    [seen] = app.scopes
    state = seen[REQUEST_STATE_KEY]
    assert scope[REQUEST_STATE_KEY] is state  # one object, made by the outermost layer
    assert {key for key in seen if key.startswith("prodkit.")} == {
        REQUEST_STATE_KEY,
        "prodkit.request_id",  # deprecated, still set
    }
    # Its facts are the ones the client, the access line and the metrics got.
    start = next(m for side, m in env.transcript if side == "server<" and "status" in m)
    names = [name for name, _ in start["headers"]]
    assert state.request_id == dict(start["headers"])[b"x-request-id"].decode()
    size = len(b"".join(CHUNKS))
    assert (state.status, state.response_bytes, state.route) == (200, size, UNMATCHED_ROUTE)
    [line] = [entry for entry in logs if entry["event"] == "request completed"]
    assert (line["request_id"], line["status"], line["bytes"], line["route"]) == (
        state.request_id,
        200,
        size,
        UNMATCHED_ROUTE,
    )
    assert line["duration"] == round(state.end - state.start, 6)
    labels = (("method", "GET"), ("route", UNMATCHED_ROUTE), ("status_code", "200"))
    samples = env.samples()
    assert samples[("http_request_duration_seconds_count", labels)] == 1
    assert samples[("http_request_duration_seconds_sum", labels)] == state.end - state.start
    # Each layer touched the response once, through the one hook: every header it adds, once.
    for added in (
        b"x-request-id",
        b"x-content-type-options",
        b"access-control-allow-origin",
        b"ratelimit-policy",
        b"ratelimit",
    ):
        assert names.count(added) == 1, added


class Connection:
    """A server's connection the way uvicorn keeps one: it holds the scope, and the app's
    ``send`` is one of its bound methods."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def test_stacked_middlewares_leave_no_reference_cycle_per_request() -> None:
    # Anything on the scope that leads back to ``send`` (an observer kept on the request
    # state, say) makes each request a reference cycle: garbage that only the cycle collector
    # frees, a cost paid on every request of a busy server.
    env = Env()
    stacked: ASGIApp = App(env)
    for name in reversed(STACKED):
        if name == "RateLimitMiddleware":  # its case allows one request a minute
            stacked = RateLimitMiddleware(stacked, policy="100/minute", registry=env.registry)
        else:
            stacked = CASES[name].build(stacked, env)
    requests = [
        ("GET", "/stream", [(b"origin", b"https://a.example.com")]),
        ("GET", "/items/1", []),  # cached: a miss, then a hit
        ("GET", "/items/1", []),
        ("POST", "/stream", [(b"idempotency-key", b'"k-1"'), (b"authorization", b"Bearer t")]),
    ]
    with capture_logs():
        for method, path, headers in requests:  # warm: first uses fill caches and metrics
            connection = Connection(_http_scope(method, path, headers))
            await stacked(connection.scope, connection.receive, connection.send)
        gc.collect()
        gc.disable()
        try:
            statuses = []
            for method, path, headers in requests:
                connection = Connection(_http_scope(method, path, headers))
                await stacked(connection.scope, connection.receive, connection.send)
                statuses.append(connection.sent[0]["status"])
                del connection
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert statuses == [200, 200, 200, 200]
    assert unreachable == 0
