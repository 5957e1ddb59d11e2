"""ConcurrencyLimitMiddleware: the request past the limit is shed with a 503 problem."""

from __future__ import annotations

import asyncio
import re
from typing import get_type_hints

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError
from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.shedding import (
    DEFAULT_EXCLUDE_PATHS,
    ConcurrencyLimitKeywords,
    ConcurrencyLimitMiddleware,
    ConcurrencyLimitOptions,
)
from prodkit.shedding._middleware import REDUCED_CAPACITY_TYPE
from tests.conftest import ClientFactory


class Gate:
    """An app whose requests wait at a gate; counts how many are inside."""

    def __init__(self, expected_inside: int) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.expected = expected_inside
        self.all_inside = asyncio.Event()

    def app(self) -> ASGIApp:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        async def work(request: Request) -> Response:
            self.inside += 1
            if self.inside >= self.expected:
                self.all_inside.set()
            await self.open.wait()
            return PlainTextResponse("done")

        async def livez(request: Request) -> Response:
            return PlainTextResponse("alive")

        return Starlette(routes=[Route("/work/{job_id}", work), Route("/livez", livez)])


async def test_the_eleventh_concurrent_request_gets_a_503(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    gate = Gate(expected_inside=10)
    middleware = ConcurrencyLimitMiddleware(gate.app(), max_concurrency=10, registry=registry)
    client = make_client(middleware)
    held = [asyncio.create_task(client.get(f"/work/{n}")) for n in range(10)]
    await gate.all_inside.wait()
    assert middleware.in_flight == 10

    shed = await client.get("/work/11")
    assert shed.status_code == 503
    assert shed.headers["content-type"] == "application/problem+json"
    assert shed.headers["retry-after"] == "1"
    assert shed.headers["cache-control"] == "no-store"
    body = shed.json()
    assert body["code"] == "OVERLOADED"
    assert body["type"] == REDUCED_CAPACITY_TYPE
    assert body["status"] == 503
    probe = await client.get("/livez")  # probes are exempt even at capacity
    assert probe.status_code == 200

    gate.open.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 10
    assert middleware.in_flight == 0
    assert (await client.get("/work/12")).status_code == 200
    assert (
        registry.get_sample_value(
            "prodkit_capacity_rejections_total", {"endpoint": "/work/{job_id}"}
        )
        == 1
    )


async def test_a_short_queue_waits_for_a_slot_and_rejects_when_full(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    gate = Gate(expected_inside=2)
    middleware = ConcurrencyLimitMiddleware(
        gate.app(), max_concurrency=2, queue_size=1, queue_timeout=30, registry=registry
    )
    client = make_client(middleware)
    held = [asyncio.create_task(client.get(f"/work/{n}")) for n in range(2)]
    await gate.all_inside.wait()
    queued = asyncio.create_task(client.get("/work/queued"))
    # Nothing signals "a request is queued": yield to the loop until it is.
    while not middleware.queued:  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert (await client.get("/work/overflow")).status_code == 503  # the queue is full
    gate.open.set()
    assert [r.status_code for r in await asyncio.gather(*held, queued)] == [200, 200, 200]
    assert middleware.in_flight == 0


async def test_a_queued_request_is_rejected_after_its_timeout(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    gate = Gate(expected_inside=1)
    middleware = ConcurrencyLimitMiddleware(
        gate.app(), max_concurrency=1, queue_size=5, queue_timeout=0.05, registry=registry
    )
    client = make_client(middleware)
    held = asyncio.create_task(client.get("/work/1"))
    await gate.all_inside.wait()
    assert (await client.get("/work/2")).status_code == 503
    assert middleware.queued == 0
    gate.open.set()
    assert (await held).status_code == 200
    assert middleware.in_flight == 0


async def test_a_cancelled_waiter_gives_no_slot_away(registry: CollectorRegistry) -> None:
    gate = Gate(expected_inside=1)
    middleware = ConcurrencyLimitMiddleware(
        gate.app(), max_concurrency=1, queue_size=5, queue_timeout=30, registry=registry
    )
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        held = asyncio.create_task(client.get("/work/1"))
        await gate.all_inside.wait()
        waiting = asyncio.create_task(client.get("/work/2"))
        while not middleware.queued:  # noqa: ASYNC110 - no event marks "queued"
            await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert middleware.queued == 0
        gate.open.set()
        assert (await held).status_code == 200
    assert middleware.in_flight == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0}, "at least 1"),
        ({"max_concurrency": "10"}, "integer"),
        ({"max_concurrency": 1, "queue_size": -1}, "queue_size"),
        ({"max_concurrency": 1, "queue_size": 3}, "queue_timeout"),
        ({"max_concurrency": 1, "retry_after": 0}, "retry_after"),
    ],
)
def test_configuration_errors(options: dict[str, object], message: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError

    with pytest.raises(ConfigurationError, match=message):
        ConcurrencyLimitMiddleware(app, **options)  # type: ignore[arg-type]


# -- options ---------------------------------------------------------------------------------


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_options_object_and_keywords_configure_the_same_middleware() -> None:
    registry = CollectorRegistry()
    by_keyword = ConcurrencyLimitMiddleware(_ok, max_concurrency=3, registry=registry)
    options = ConcurrencyLimitOptions(max_concurrency=3, registry=CollectorRegistry())
    by_object = ConcurrencyLimitMiddleware(_ok, options=options)
    assert by_object.options is options
    assert by_keyword.options.max_concurrency == by_object.max_concurrency == 3
    # The defaults, written once in the dataclass.
    assert by_keyword.options == ConcurrencyLimitOptions(max_concurrency=3, registry=registry)
    assert by_keyword.options.exclude_paths == DEFAULT_EXCLUDE_PATHS
    assert (by_keyword.queue_size, by_keyword.queue_timeout, by_keyword.retry_after) == (0, 0, 1)


def test_max_concurrency_is_required() -> None:
    with pytest.raises(TypeError, match="max_concurrency"):
        ConcurrencyLimitMiddleware(_ok)


def test_exclude_paths_are_read_once() -> None:
    paths = (path for path in ["/livez", "/ping"])
    options = ConcurrencyLimitOptions(
        max_concurrency=1, exclude_paths=paths, registry=CollectorRegistry()
    )
    assert options.exclude_paths == ("/livez", "/ping")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": True}, "max_concurrency=True: not an integer"),
        ({"max_concurrency": 1, "queue_size": 2, "queue_timeout": -1}, "queue_timeout=-1:"),
        ({"max_concurrency": 1, "queue_timeout": -1}, "queue_timeout=-1: negative"),
        ({"max_concurrency": 1, "retry_after": 1.5}, "retry_after=1.5: not an integer"),
        ({"max_concurrency": 1, "exclude_paths": "/livez"}, "not one string"),
        ({"max_concurrency": 1, "exclude_paths": ["livez"]}, "must start with '/'"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ConcurrencyLimitOptions(**options)  # type: ignore[arg-type]


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(ConcurrencyLimitKeywords) == get_type_hints(ConcurrencyLimitOptions)
