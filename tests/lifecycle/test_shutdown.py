"""GracefulShutdownMiddleware, ShutdownCoordinator and LifespanMiddleware, in process.

Real signals are sent to this process (SIGUSR1/SIGUSR2, so the test runner's own SIGTERM and
SIGINT handling is never touched); the real-server behaviour is in ``tests/lifecycle/test_servers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, get_type_hints

import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from prodkit import ConfigurationError
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send
from prodkit.health import HealthMiddleware
from prodkit.lifecycle import (
    GracefulShutdownKeywords,
    GracefulShutdownMiddleware,
    GracefulShutdownOptions,
    LifespanKeywords,
    LifespanMiddleware,
    LifespanOptions,
    ShutdownCoordinator,
    ShutdownState,
)
from tests.conftest import ClientFactory


def make_coordinator(registry: CollectorRegistry, **kwargs: Any) -> ShutdownCoordinator:
    kwargs.setdefault("signals", (signal.SIGUSR1,))
    kwargs.setdefault("retry_after", 2)
    return ShutdownCoordinator(registry=registry, **kwargs)


def stack(app: ASGIApp, coordinator: ShutdownCoordinator) -> ASGIApp:
    return HealthMiddleware(
        GracefulShutdownMiddleware(app, coordinator=coordinator), coordinator=coordinator
    )


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    # Signals, timers and loop callbacks move things on; there is no event to await for them.
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def wait_for_state(coordinator: ShutdownCoordinator, state: ShutdownState) -> None:
    await wait_until(lambda: coordinator.state is state, f"state {state.name}")


@pytest.mark.parametrize(
    ("drain", "timeout"),
    [
        (-1, 5),  # negative drain
        (5, 4),  # deadline before the drain ends
        (0, 0),  # no deadline at all
    ],
)
def test_invalid_options_are_rejected(drain: float, timeout: float) -> None:
    with pytest.raises(ConfigurationError):
        ShutdownCoordinator(drain=drain, timeout=timeout)


def test_unknown_signal_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="not a signal number"):
        ShutdownCoordinator(signals=(999,))


async def test_wait_idle_returns_when_the_last_request_finished(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    coordinator = make_coordinator(registry)
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = make_client(GracefulShutdownMiddleware(app, coordinator=coordinator))
    await coordinator.wait_idle()  # nothing in flight: at once
    requests = [asyncio.create_task(client.get("/")) for _ in range(3)]
    for _ in range(1000):
        if coordinator.in_flight == 3:
            break
        await asyncio.sleep(0.005)
    waiters = [asyncio.create_task(coordinator.wait_idle()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*waiters)
    assert [r.status_code for r in await asyncio.gather(*requests)] == [204] * 3


async def test_running_requests_pass_untouched(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    coordinator = make_coordinator(registry)
    client = make_client(stack(app, coordinator))
    response = await client.get("/items/7")
    assert response.status_code == 200
    assert response.json()["id"] == "7"
    assert "connection" not in response.headers
    assert (await client.get("/readyz")).status_code == 200
    assert coordinator.in_flight == 0


async def test_draining_keeps_serving_with_connection_close_and_readiness_503(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    coordinator = make_coordinator(registry, drain=30, timeout=60)
    client = make_client(stack(app, coordinator))
    coordinator.begin_shutdown()
    assert coordinator.state is ShutdownState.DRAINING

    response = await client.get("/items/7")
    assert response.status_code == 200
    assert response.headers["connection"] == "close"

    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "5"
    assert ready.json() == {"status": "fail", "draining": True}
    assert (await client.get("/livez")).status_code == 200
    assert registry.get_sample_value("prodkit_shutdown_state") == 1
    coordinator.stopped()


async def test_http2_responses_get_no_connection_header(registry: CollectorRegistry) -> None:
    # RFC 9113 section 8.2.2: connection-specific fields are malformed in HTTP/2.
    coordinator = make_coordinator(registry, drain=30, timeout=60)
    coordinator.begin_shutdown()
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    middleware = GracefulShutdownMiddleware(app, coordinator=coordinator)
    scope = {"type": "http", "http_version": "2", "method": "GET", "path": "/", "headers": []}
    await middleware(scope, receive, send)
    assert sent[0]["headers"] == []
    # Refused once stopping: Retry-After, still no Connection field.
    coordinator.lifespan_shutdown()
    sent.clear()
    await middleware(scope, receive, send)
    assert sent[0]["status"] == 503
    names = {name for name, _ in sent[0]["headers"]}
    assert b"retry-after" in names
    assert b"connection" not in names
    coordinator.stopped()


async def test_after_the_drain_requests_that_still_arrive_are_served_and_closed(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # The server closes its listener when the drain ends, but a connection it accepted a
    # moment before may still bring a request: its client has no other answer coming. Before,
    # it got a 503 (up to 191 of them when a worker of two was stopped under load).
    coordinator = make_coordinator(registry, drain=0.01, timeout=60)
    client = make_client(stack(app, coordinator))
    coordinator.begin_shutdown()
    await wait_for_state(coordinator, ShutdownState.STOPPING)

    response = await client.get("/items/7")
    assert response.status_code == 200
    assert response.json()["id"] == "7"
    assert response.headers["connection"] == "close"
    assert registry.get_sample_value("prodkit_shutdown_rejected_requests_total") == 0
    assert (await client.get("/readyz")).status_code == 503
    coordinator.stopped()


@pytest.mark.parametrize("stop", ["lifespan_shutdown", "deadline"])
async def test_once_the_app_stops_new_requests_get_a_fast_503(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry, stop: str
) -> None:
    # The server began its lifespan shutdown (the app's pools are closing), or the hard
    # deadline passed: nothing new may start.
    coordinator = make_coordinator(registry, drain=0.01, timeout=0.05)
    client = make_client(stack(app, coordinator))
    coordinator.begin_shutdown()
    if stop == "lifespan_shutdown":
        coordinator.lifespan_shutdown()
    else:
        await wait_until(lambda: not coordinator.accepting, "the deadline")

    response = await client.get("/items/7")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    assert response.headers["connection"] == "close"
    body = response.json()
    assert body["code"] == "SHUTTING_DOWN"
    assert body["status"] == 503
    assert registry.get_sample_value("prodkit_shutdown_rejected_requests_total") == 1
    # Probes still answer: readiness says why, liveness stays up.
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/livez")).status_code == 200
    coordinator.stopped()


async def test_request_running_past_the_deadline_is_cancelled_and_logged(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    coordinator = make_coordinator(registry, drain=0.01, timeout=0.2)
    client = make_client(stack(app, coordinator))
    with capture_logs() as logs:
        slow = asyncio.create_task(client.get("/slow", params={"seconds": "30"}))
        for _ in range(1000):
            if coordinator.in_flight:
                break
            await asyncio.sleep(0.005)
        coordinator.begin_shutdown()
        response = await slow
    assert response.status_code == 503
    assert response.json()["code"] == "SHUTTING_DOWN"
    cancelled = [e for e in logs if e["event"] == "request cancelled at shutdown deadline"]
    assert [(e["method"], e["path"], e["log_level"]) for e in cancelled] == [
        ("GET", "/slow", "warning")
    ]
    assert coordinator.in_flight == 0
    assert registry.get_sample_value("prodkit_shutdown_cancelled_requests_total") == 1
    coordinator.stopped()


async def test_cancelling_a_started_response_ends_it(registry: CollectorRegistry) -> None:
    coordinator = make_coordinator(registry, drain=0, timeout=0.05)
    sent: list[Message] = []
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.sleep(30)

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    middleware = GracefulShutdownMiddleware(app, coordinator=coordinator)
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/", "headers": []}
    task = asyncio.create_task(middleware(scope, receive, send))
    await started.wait()
    coordinator.begin_shutdown()
    await task  # returns normally: the server sees an incomplete response and drops it
    assert [m["type"] for m in sent] == ["http.response.start"]
    coordinator.stopped()


async def test_an_outside_cancellation_is_not_swallowed(registry: CollectorRegistry) -> None:
    coordinator = make_coordinator(registry)
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(30)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    middleware = GracefulShutdownMiddleware(app, coordinator=coordinator)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    task = asyncio.create_task(middleware(scope, receive, send))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert coordinator.in_flight == 0


@pytest.mark.usefixtures("restore_signals")
async def test_signal_handler_is_chained_after_the_drain(registry: CollectorRegistry) -> None:
    calls: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    coordinator = make_coordinator(registry, drain=0.1, timeout=5)
    coordinator.install()
    with capture_logs() as logs:
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_for_state(coordinator, ShutdownState.DRAINING)
        assert calls == []  # the server's handler waits for the drain
        await wait_for_state(coordinator, ShutdownState.STOPPING)
    assert calls == [signal.SIGUSR1]
    assert [e["event"] for e in logs] == [
        "shutdown signal received, draining",
        "drain finished, stopping the server",
    ]
    coordinator.stopped()
    # The previous handler is back.
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.sleep(0.01)
    assert calls == [signal.SIGUSR1, signal.SIGUSR1]


async def drain_then_hand_back(
    registry: CollectorRegistry, calls: list[str]
) -> ShutdownCoordinator:
    """SIGUSR2 to this process: the coordinator drains, then the loop's own handler runs."""
    coordinator = make_coordinator(registry, signals=(signal.SIGUSR2,), drain=0.05, timeout=5)
    coordinator.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    await wait_for_state(coordinator, ShutdownState.DRAINING)
    assert calls == []
    await wait_for_state(coordinator, ShutdownState.STOPPING)
    # The loop hears of the given-back signal through its wakeup descriptor, a turn later.
    await wait_until(lambda: len(calls) >= 1, "the loop's handler ran")
    assert calls == ["server"]
    return coordinator


@pytest.mark.usefixtures("restore_signals")
async def test_loop_signal_handler_is_chained_after_the_drain(registry: CollectorRegistry) -> None:
    # hypercorn and granian register their handler with loop.add_signal_handler.
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    loop.add_signal_handler(signal.SIGUSR2, calls.append, "server")
    try:
        coordinator = await drain_then_hand_back(registry, calls)
        coordinator.stopped()
        os.kill(os.getpid(), signal.SIGUSR2)
        await wait_until(lambda: len(calls) >= 2, "the loop's handler ran again")
        assert calls == ["server", "server"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


@pytest.mark.usefixtures("restore_signals")
def test_uvloop_signal_handler_is_chained_after_the_drain(registry: CollectorRegistry) -> None:
    # granian's default loop is uvloop, whose loop keeps its handlers out of Python's reach.
    uvloop = pytest.importorskip("uvloop")
    calls: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, calls.append, "server")
        coordinator = await drain_then_hand_back(registry, calls)
        coordinator.stopped()
        loop.remove_signal_handler(signal.SIGUSR2)

    uvloop.run(main())


@pytest.mark.usefixtures("restore_signals")
@pytest.mark.parametrize("request_first", [False, True])
def test_uvloop_started_again_after_startup_still_holds_the_signal(
    registry: CollectorRegistry, request_first: bool
) -> None:
    # granian runs the loop once for lifespan start-up and again to serve; uvloop registers a
    # fresh wakeup descriptor on every start, which the coordinator claims back.
    uvloop = pytest.importorskip("uvloop")
    calls: list[str] = []
    loop = uvloop.new_event_loop()
    coordinator = make_coordinator(registry, signals=(signal.SIGUSR2,), drain=0.05, timeout=5)

    async def startup() -> None:
        loop.add_signal_handler(signal.SIGUSR2, calls.append, "server")
        coordinator.install()

    async def serve() -> None:
        if request_first:
            record = coordinator.request_started({"type": "http", "method": "GET", "path": "/"})
            coordinator.request_finished(record)
        os.kill(os.getpid(), signal.SIGUSR2)
        await wait_for_state(coordinator, ShutdownState.DRAINING)
        assert calls == []
        await wait_for_state(coordinator, ShutdownState.STOPPING)
        await wait_until(lambda: len(calls) >= 1, "the loop's handler ran")
        assert calls == ["server"]
        coordinator.stopped()
        loop.remove_signal_handler(signal.SIGUSR2)

    try:
        loop.run_until_complete(startup())
        loop.run_until_complete(serve())
    finally:
        loop.close()


@pytest.mark.usefixtures("restore_signals")
async def test_other_signals_reach_the_loop_while_the_shutdown_signals_are_held(
    registry: CollectorRegistry,
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "reload")
    loop.add_signal_handler(signal.SIGUSR2, calls.append, "stop")
    try:
        coordinator = make_coordinator(registry, signals=(signal.SIGUSR2,), drain=30, timeout=60)
        coordinator.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_until(lambda: calls == ["reload"], "the loop's SIGUSR1 handler ran")
        os.kill(os.getpid(), signal.SIGUSR2)
        await wait_for_state(coordinator, ShutdownState.DRAINING)
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_until(lambda: len(calls) >= 2, "the loop's SIGUSR1 handler ran again")
        assert calls == ["reload", "reload"]  # SIGUSR2 still held
        coordinator.stopped()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)


@pytest.mark.usefixtures("restore_signals")
async def test_second_signal_ends_the_drain_at_once(registry: CollectorRegistry) -> None:
    calls: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    coordinator = make_coordinator(registry, drain=30, timeout=60)
    coordinator.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    await wait_for_state(coordinator, ShutdownState.DRAINING)
    os.kill(os.getpid(), signal.SIGUSR1)
    await wait_for_state(coordinator, ShutdownState.STOPPING)
    assert calls == [signal.SIGUSR1]
    coordinator.stopped()


# -- lifespan -------------------------------------------------------------------------------


def starlette_with_lifespan(events: list[str]) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/ok", ok)], lifespan=lifespan)


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise RuntimeError("this app only speaks HTTP")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def startup_answer(app: ASGIApp) -> Message:
    """Drive a lifespan start-up as a server does and return the app's answer."""
    received: list[Message] = [{"type": "lifespan.startup"}]
    answers: list[Message] = []

    async def receive() -> Message:
        return received.pop(0)

    async def send(message: Message) -> None:
        answers.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert len(answers) == 1
    return answers[0]


def register_hooks(lifespan: LifespanMiddleware, events: list[str]) -> None:
    async def open_pool() -> None:
        events.append("open pool")

    async def close_pool() -> None:
        events.append("close pool")

    @contextlib.asynccontextmanager
    async def redis_client() -> AsyncIterator[None]:
        events.append("open redis")
        yield
        events.append("close redis")

    lifespan.add_hook(open_pool, close_pool)
    lifespan.add_context(redis_client)


@pytest.mark.usefixtures("restore_signals")
async def test_lifespan_runs_hooks_around_the_apps_own_lifespan(
    registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    events: list[str] = []
    coordinator = make_coordinator(registry)
    lifespan = LifespanMiddleware(starlette_with_lifespan(events), coordinator=coordinator)
    register_hooks(lifespan, events)
    async with LifespanManager(lifespan):
        assert events == ["open pool", "open redis", "app startup"]
        # The signal handling is in place once start-up completed.
        assert signal.getsignal(signal.SIGUSR1) == coordinator._on_signal
        response = await make_client(lifespan).get("/ok")
        assert response.text == "ok"
    assert events[3:] == ["app shutdown", "close redis", "close pool"]
    assert coordinator.state is ShutdownState.STOPPED
    assert signal.getsignal(signal.SIGUSR1) != coordinator._on_signal


async def test_lifespan_answers_for_an_app_without_lifespan(registry: CollectorRegistry) -> None:
    events: list[str] = []
    lifespan = LifespanMiddleware(no_lifespan_app)
    register_hooks(lifespan, events)
    async with LifespanManager(lifespan):
        assert events == ["open pool", "open redis"]
    assert events == ["open pool", "open redis", "close redis", "close pool"]


async def test_failed_startup_closes_what_was_opened(registry: CollectorRegistry) -> None:
    events: list[str] = []
    lifespan = LifespanMiddleware(no_lifespan_app)
    register_hooks(lifespan, events)

    async def broken() -> None:
        raise ConnectionRefusedError("postgres is down")

    lifespan.add_hook(broken)
    with capture_logs() as logs:
        answer = await startup_answer(lifespan)
    assert answer == {"type": "lifespan.startup.failed", "message": "postgres is down"}
    assert events == ["open pool", "open redis", "close redis", "close pool"]
    assert [e["event"] for e in logs] == ["lifespan start-up failed"]


async def test_failed_app_startup_is_reported(registry: CollectorRegistry) -> None:
    from starlette.applications import Starlette

    failing = ["migrations"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if failing:  # always true; keeps a generator shape that mypy can follow
            raise RuntimeError("migrations failed")
        yield

    events: list[str] = []
    middleware = LifespanMiddleware(Starlette(lifespan=lifespan))
    register_hooks(middleware, events)
    with capture_logs():
        answer = await startup_answer(middleware)
    assert answer["type"] == "lifespan.startup.failed"
    assert "migrations failed" in answer["message"]
    assert events == ["open pool", "open redis", "close redis", "close pool"]


@pytest.mark.usefixtures("restore_signals")
async def test_shutdown_middleware_installs_at_the_apps_startup(
    registry: CollectorRegistry,
) -> None:
    events: list[str] = []
    coordinator = make_coordinator(registry)
    app = GracefulShutdownMiddleware(starlette_with_lifespan(events), coordinator=coordinator)
    async with LifespanManager(app):
        assert signal.getsignal(signal.SIGUSR1) == coordinator._on_signal
    assert coordinator.state is ShutdownState.STOPPED


@pytest.mark.usefixtures("restore_signals")
async def test_both_middlewares_install_the_signal_handling_once(
    registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    calls: list[int] = []
    server_handler = lambda signum, frame: calls.append(signum)  # noqa: E731
    signal.signal(signal.SIGUSR1, server_handler)
    events: list[str] = []
    coordinator = make_coordinator(registry)
    inner = GracefulShutdownMiddleware(starlette_with_lifespan(events), coordinator=coordinator)
    lifespan = LifespanMiddleware(inner, coordinator=coordinator)
    with capture_logs() as logs:
        async with LifespanManager(lifespan):
            assert signal.getsignal(signal.SIGUSR1) == coordinator._on_signal
    held = [e for e in logs if e["event"] == "shutdown signals held for the drain"]
    assert [e["signals"] for e in held] == [["SIGUSR1"]]
    # Installed twice, the second install would have taken the first for the server's handler.
    assert signal.getsignal(signal.SIGUSR1) == server_handler
    os.kill(os.getpid(), signal.SIGUSR1)
    await wait_until(lambda: calls == [signal.SIGUSR1], "the server's handler ran")


async def test_shutdown_middleware_alone_serves_again_after_a_second_startup(
    registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    coordinator = make_coordinator(registry)
    app = GracefulShutdownMiddleware(starlette_with_lifespan([]), coordinator=coordinator)
    client = make_client(app)
    for _ in range(2):
        async with LifespanManager(app):
            # Served, not refused as after a shutdown.
            assert (await client.get("/ok")).status_code == 200
        assert coordinator.state is ShutdownState.STOPPED


def test_defaults_match_the_stack_settings() -> None:
    from prodkit.settings import StackSettings

    coordinator = ShutdownCoordinator(registry=CollectorRegistry())
    settings = StackSettings()
    from_env = StackSettings.from_env({})
    # A drain by default: several workers behind one socket lose no request (issue #21).
    assert coordinator.drain == settings.shutdown_drain_seconds == 2.0
    assert from_env.shutdown_drain_seconds == 2.0
    assert coordinator.timeout == settings.shutdown_timeout_seconds == 30.0


# -- options ---------------------------------------------------------------------------------


async def test_drain_options_object_and_keywords_configure_the_same_middleware(
    registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    coordinator = make_coordinator(registry)
    by_keyword = GracefulShutdownMiddleware(no_lifespan_app, coordinator=coordinator)
    options = GracefulShutdownOptions(coordinator=coordinator)
    by_object = GracefulShutdownMiddleware(no_lifespan_app, options=options)
    assert by_object.options is options
    assert by_keyword.options == options
    coordinator.begin_shutdown()
    coordinator.lifespan_shutdown()
    for middleware in (by_keyword, by_object):
        refused = await make_client(middleware).get("/")
        assert (refused.status_code, refused.headers["Retry-After"]) == (503, "2")
    coordinator.stopped()


def test_lifespan_defaults_are_the_options_defaults() -> None:
    middleware = LifespanMiddleware(no_lifespan_app)
    assert middleware.options == LifespanOptions()
    assert middleware.coordinator is None


@pytest.mark.parametrize("make", [GracefulShutdownOptions, LifespanOptions])
def test_a_coordinator_that_is_not_one_is_refused(make: Any) -> None:
    with pytest.raises(
        ConfigurationError, match="coordinator='signals': not a ShutdownCoordinator"
    ):
        make(coordinator="signals")


def test_the_drain_needs_a_coordinator() -> None:
    with pytest.raises(TypeError, match="coordinator"):
        GracefulShutdownMiddleware(no_lifespan_app)


@pytest.mark.parametrize(
    ("keywords", "options"),
    [(GracefulShutdownKeywords, GracefulShutdownOptions), (LifespanKeywords, LifespanOptions)],
)
def test_the_keywords_are_the_options_fields(keywords: type, options: type) -> None:
    assert get_type_hints(keywords) == get_type_hints(options)
