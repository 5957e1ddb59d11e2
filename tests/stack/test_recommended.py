"""The recommended layers: the design order, what is there when, one caller and one route resolver."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import Stack, StackSettings, caller_from_header, recommended_stack
from prodkit.asgi import Receive, Scope, Send
from prodkit.testing import capture_log_output
from tests.conftest import ClientFactory
from tests.stack.helpers import DESIGN_ORDER, RECOMMENDED, items, recommended, some_client

# -- the recommended list -----------------------------------------------------------------------


def test_the_recommended_layers_are_the_design_order() -> None:
    stack = recommended()
    assert [(layer.name, layer.middleware) for layer in stack.layers] == RECOMMENDED
    assert [name for name in stack.names if name in DESIGN_ORDER] == DESIGN_ORDER


def test_cors_and_cache_layers_only_when_configured() -> None:
    names = recommended(StackSettings(), cache_routes=None).names
    assert names == [name for name, _ in RECOMMENDED if name not in ("cors", "cache")]


# -- one caller for every layer (issue 22) ------------------------------------------------------

A, B = ("192.0.2.1", 1000), ("198.51.100.9", 1000)


@pytest.mark.parametrize(
    ("caller", "first", "second", "shared"),
    [
        # The default: quotas per client address; a client inventing credentials gets no more.
        (None, (A, "k1"), (A, "k2"), True),
        (None, (A, "k1"), (B, "k1"), False),
        # caller=: one quota per caller, wherever it calls from.
        ("X-Api-Key", (A, "k1"), (A, "k2"), False),
        ("X-Api-Key", (A, "k1"), (B, "k1"), True),
        # A request naming no caller is limited by its address.
        ("X-Api-Key", (A, None), (A, None), True),
        ("X-Api-Key", (A, None), (B, None), False),
    ],
)
async def test_the_stacks_caller_scopes_rate_limits_too(
    make_client: ClientFactory,
    caller: str | None,
    first: tuple[tuple[str, int], str | None],
    second: tuple[tuple[str, int], str | None],
    shared: bool,
) -> None:
    options: dict[str, Any] = {"registry": CollectorRegistry()}
    if caller is not None:
        options["caller"] = caller_from_header(caller)
    stack = Stack.recommended(StackSettings(rate_limit="1/minute"), **options).build(items)

    async def status(address: tuple[str, int], key: str | None) -> int:
        headers = {} if key is None else {"X-Api-Key": key, "Authorization": f"Bearer {key}"}
        return (
            await make_client(stack, client=address).get("/items/1", headers=headers)
        ).status_code

    try:
        assert await status(*first) == 200
        assert await status(*second) == (429 if shared else 200)
    finally:
        await stack.aclose()


async def test_by_default_idempotency_keys_are_scoped_by_authorization(
    make_client: ClientFactory,
) -> None:
    stack = recommended_stack(items, StackSettings(), registry=CollectorRegistry())
    client = make_client(stack)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    try:
        answers = [
            await client.post("/items", json={}, headers={**key, "Authorization": who})
            for who in ("Bearer a", "Bearer b", "Bearer a")
        ]
    finally:
        await stack.aclose()
    statuses = [answer.headers["idempotency-status"] for answer in answers]
    assert statuses == ["created", "created", "replayed"]


# -- one route resolver for every layer that labels by route ------------------------------------


def items_resolver(scope: Scope) -> str | None:
    """The raw ``items`` app's templates, as the raw-ASGI docs page writes them."""
    path: str = scope["path"]
    return "/items/{item_id}" if path.startswith("/items/") and path.count("/") == 2 else None


def test_route_resolver_reaches_every_layer_that_labels_by_route() -> None:
    stack = recommended(route_resolver=items_resolver)
    takes = {"access_log", "metrics", "concurrency_limit"}
    for layer in stack.layers:
        expected = items_resolver if layer.name in takes else None
        assert layer.options.get("route_resolver") is expected, layer.name
    assert "route_resolver" not in recommended().get("metrics").options


async def test_route_resolver_names_a_raw_apps_routes_in_metrics_and_logs() -> None:
    registry = CollectorRegistry()
    app = recommended_stack(
        items, StackSettings(), registry=registry, route_resolver=items_resolver
    )
    transport = httpx.ASGITransport(app=app, client=some_client())
    try:
        with capture_log_output() as logs:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                found = await client.get("/items/7")
                other = await client.get("/elsewhere")
    finally:
        await app.aclose()
    assert found.status_code == other.status_code == 200
    count = "http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/items/{item_id}", "status_code": "200"}
    assert registry.get_sample_value(count, labels) == 1
    unmatched = {**labels, "route": "__unmatched__"}
    assert registry.get_sample_value(count, unmatched) == 1
    routes = [line["route"] for line in logs.events("request completed")]
    assert routes == ["/items/{item_id}", "__unmatched__"]


async def test_by_default_the_stack_sheds_past_100_requests_in_flight() -> None:
    """``MAX_CONCURRENCY`` unset: 100 requests run, the 101st gets ``503 OVERLOADED`` at once."""
    release, all_in = asyncio.Event(), asyncio.Event()
    started = 0

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal started
        if scope["type"] != "http":
            return
        started += 1
        if started == 100:
            all_in.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    stack = Stack.recommended(StackSettings(), registry=CollectorRegistry()).build(slow)
    transport = httpx.ASGITransport(app=stack)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        held = [asyncio.create_task(client.get(f"/items/{n}")) for n in range(100)]
        await asyncio.wait_for(all_in.wait(), 10)
        refused = await client.get("/items/extra")
        release.set()
        statuses = {(await task).status_code for task in held}
    await stack.aclose()
    assert refused.status_code == 503
    assert refused.json()["code"] == "OVERLOADED"
    assert refused.headers["retry-after"] == "1"
    assert statuses == {200}
