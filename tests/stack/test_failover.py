"""The stack through a Redis failover: the primary that holds a caller's keys dies under load.

A topology of the test's own (``tests/servers/redis_topologies.py``: a Redis Cluster of three
primaries and three replicas, or one primary, one replica and three Sentinels) serves the
stack's one Redis client: the response cache, the rate limiter and the Redis idempotency
store. While requests keep coming, the primary that serves the caller's rate-limit key and a
set of its idempotency records is killed by its PID. What ``docs/scale.md`` promises:

* the cache fails open: every read is answered, by the app, with the app's body;
* the rate limiter follows ``on_store_error``: the stack's (``fail_open``) decides from memory
  and refuses nothing for the store's sake; a ``fail_closed`` limiter answers 503
  ``RATE_LIMIT_UNAVAILABLE`` with ``Retry-After``;
* the idempotency store never runs a handler twice for one key (the handler counts its
  calls), answers 503 ``IDEMPOTENCY_STORE_UNAVAILABLE`` while it cannot tell, and replays
  after the failover what it recorded before it;
* once the replica is promoted, service resumes: new keys are created, the ``fail_closed``
  limiter answers 200 and the cache serves hits.

The seconds from the kill until a keyed request on the dead primary's keys is created again
(and until the ``fail_closed`` limiter decides again) are recorded as figures (``figures``:
``$PRODKIT_SCALE_FIGURES``), never asserted; ``docs/scale.md`` reports them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import (
    IdempotencyMiddleware,
    RateLimitMiddleware,
    Stack,
    StackSettings,
    caller_from_header,
)
from prodkit.asgi import Receive, Scope, Send, read_body
from prodkit.cache import CacheRule
from prodkit.idempotency import IN_PROGRESS, STORE_UNAVAILABLE, RedisIdempotencyStore
from prodkit.ratelimit import RATE_LIMIT_UNAVAILABLE, RateLimitPolicy, RedisRateLimitStore
from tests.conftest import Figures, unavailable
from tests.servers.redis_topologies import (
    SentinelGroup,
    Topology,
    collect_dropped_connections,
    redis_binaries_missing,
    redis_cluster,
    redis_sentinel,
)

pytestmark = [pytest.mark.redis, pytest.mark.server]

#: The failure-detection timeout of both topologies (ms): ``cluster-node-timeout`` and
#: ``down-after-milliseconds``. Redis's defaults are 15000 and 30000.
DETECTION_MS = 1000
#: How long the test waits for service to resume after the kill before it fails.
RESUME_WITHIN = 30.0
STRICT = RateLimitPolicy(100_000, 60, "strict")
ITEMS = 12
ITEM_ROUTE = "/items/{item_id}"


@dataclass
class Service:
    """The app under the stack: what its handlers did, and the stack around them."""

    stack: Stack
    registry: CollectorRegistry
    calls: collections.Counter[str] = field(default_factory=collections.Counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/orders":  # idempotent: counts its calls per Idempotency-Key
            await read_body(receive, 1 << 16)
            headers = dict(scope["headers"])
            key = headers.get(b"idempotency-key", b"").decode()
            self.calls[key] += 1
            await respond(send, 201, {"order": key})
        elif path.startswith("/items/"):  # cached
            await respond(send, 200, {"item": path.rpartition("/")[2]})
        else:  # /open (the stack's fail-open limit) and /strict (a fail-closed one inside)
            await respond(send, 200, {"ok": True})


async def respond(send: Send, status: int, body: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def build(url: str) -> tuple[Service, httpx.AsyncClient]:
    """The recommended stack on ``url`` (idempotency in Redis) around :class:`Service`, and a
    ``fail_closed`` limiter on ``/strict`` that shares the stack's Redis client."""
    registry = CollectorRegistry()
    settings = StackSettings(
        redis_url=url,
        idempotency_store="redis",
        rate_limit="100000/minute",
        redis_key_prefix=f"prodkit-test:{uuid.uuid4().hex[:8]}:",
    )
    stack = Stack.recommended(
        settings,
        registry=registry,
        caller=caller_from_header("X-User-Id"),
        cache_routes={ITEM_ROUTE: CacheRule(ttl=60)},
    )
    service = Service(stack, registry)
    assert stack.redis is not None
    strict = RateLimitMiddleware(
        service,
        policy=STRICT,
        store=RedisRateLimitStore(stack.redis, key_prefix=f"{settings.redis_key_prefix}strict:"),
        caller=caller_from_header("X-User-Id"),
        on_store_error="fail_closed",
        registry=registry,
    )

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        app = strict if scope.get("path") == "/strict" else service
        await app(scope, receive, send)

    stack.build(routed)
    transport = httpx.ASGITransport(app=stack, client=("192.0.2.10", 5000))
    return service, httpx.AsyncClient(transport=transport, base_url="http://api", timeout=10)


@dataclass
class Seen:
    """Every response the load got, by kind: ``(status, code, headers, body)``."""

    responses: dict[str, list[tuple[int, str | None, httpx.Headers, Any]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )

    def add(self, kind: str, response: httpx.Response) -> httpx.Response:
        body = response.json()
        code = body.get("code") if isinstance(body, dict) else None
        self.responses[kind].append((response.status_code, code, response.headers, body))
        return response


async def load(
    client: httpx.AsyncClient, user: str, keys: Iterator[str], seen: Seen, stop: asyncio.Event
) -> None:
    """A cached read, a keyed write and two limited requests per turn until ``stop``; a key is
    sent again each turn until it is answered 201, then the next one."""
    caller = {"X-User-Id": user}
    key = next(keys)
    for turn in itertools.count():
        if stop.is_set():
            return
        item = turn % ITEMS
        seen.add(f"item {item}", await client.get(f"/items/{item}", headers=caller))
        seen.add("open", await client.get("/open", headers=caller))
        seen.add("strict", await client.get("/strict", headers=caller))
        headers = {**caller, "Idempotency-Key": key}
        answer = seen.add(f"order {key}", await client.post("/orders", json={}, headers=headers))
        if answer.status_code == 201:
            key = next(keys)
        await asyncio.sleep(0.02)


def owned_by(port: int, owner: Callable[[str], int], make: Callable[[], str]) -> Iterator[str]:
    """Values from ``make`` whose Redis key (``owner`` maps a value to its primary's port) is
    served by the primary on ``port``."""
    while True:
        value = make()
        if owner(value) == port:
            yield value


@contextlib.contextmanager
def topology_for(kind: str, tmp_path: Path) -> Iterator[Topology]:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    if kind == "cluster":
        with redis_cluster(tmp_path, node_timeout_ms=DETECTION_MS) as cluster:
            yield cluster
    else:
        with redis_sentinel(tmp_path, down_after_ms=DETECTION_MS) as group:
            yield group


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_a_primary_killed_under_load_fails_open_runs_nothing_twice_and_resumes(
    kind: str, tmp_path: Path, figures: Figures
) -> None:
    with topology_for(kind, tmp_path) as topology:
        service, client = build(topology.url)
        stack = service.stack
        assert isinstance(stack.idempotency_store, RedisIdempotencyStore)
        assert isinstance(stack.rate_limit_store, RedisRateLimitStore)
        idempotency_store, limits = stack.idempotency_store, stack.rate_limit_store
        orders = stack.get("idempotency").wrap(service)  # names the store key of a key
        assert isinstance(orders, IdempotencyMiddleware)

        # Who serves a Redis key before the kill (one primary behind Sentinel).
        owners = {} if isinstance(topology, SentinelGroup) else topology.slot_owners()

        def owner(redis_key: str) -> int:
            if isinstance(topology, SentinelGroup):
                return topology.primary
            return topology.primary_for(redis_key, owners)

        # The caller's keys in Redis all carry the hash tag {caller:<user>}: their primary is
        # the one to kill. Its idempotency keys are picked to live there too.
        user = f"user-{uuid.uuid4().hex[:8]}"
        target = owner(limits.redis_key(f"caller:{user}", STRICT))
        keys = owned_by(
            target,
            lambda key: owner(idempotency_store.redis_key(orders.storage_key(user, key))),
            lambda: uuid.uuid4().hex,
        )
        caller = {"X-User-Id": user}
        try:
            async with asyncio.timeout(120):  # bounded: a hang fails the test, not the run
                # Before: one order recorded, the cache hits, both limiters decide from Redis.
                before = next(keys)
                created = await client.post(
                    "/orders", json={}, headers={**caller, "Idempotency-Key": before}
                )
                assert created.headers["idempotency-status"] == "created"
                assert (await client.get("/items/0", headers=caller)).headers["x-cache"] == "MISS"
                assert (await client.get("/items/0", headers=caller)).headers["x-cache"] == "HIT"
                assert (await client.get("/strict", headers=caller)).status_code == 200

                seen, stop = Seen(), asyncio.Event()
                workers = [
                    asyncio.create_task(load(client, user, keys, seen, stop)) for _ in range(3)
                ]
                try:
                    await asyncio.sleep(0.5)
                    killed = time.monotonic()
                    topology.kill(target)
                    resumed = await resume(client, caller, keys, killed)
                    await asyncio.sleep(0.5)  # the load goes on a little after the failover
                finally:
                    stop.set()
                    await asyncio.gather(*workers)
                hit = await cache_hits_again(client, caller)
                replayed = await client.post(
                    "/orders", json={}, headers={**caller, "Idempotency-Key": before}
                )
                if isinstance(topology, SentinelGroup):
                    # The Sentinels promoted the replica.
                    assert topology.current_primary() == topology.replica
        finally:
            await client.aclose()
            await stack.aclose()
            collect_dropped_connections()

    # The outage reached every store: the load's keys lived on the dead primary.
    registry = service.registry
    limited = sample(
        registry, "prodkit_rate_limit_decisions_total", policy="default", decision="error"
    )
    cached = sample(registry, "prodkit_cache_requests_total", route=ITEM_ROUTE, outcome="error")
    assert limited > 0
    assert cached > 0
    assert sample(registry, "prodkit_idempotency_requests_total", outcome="error") > 0

    # The cache failed open: every read answered by the app, with its body.
    for kind_seen, answers in seen.responses.items():
        if kind_seen.startswith("item "):
            item = kind_seen.removeprefix("item ")
            assert {(status, json.dumps(body)) for status, _, _, body in answers} == {
                (200, json.dumps({"item": item}))
            }
    # The stack's limiter (fail_open) refused nothing; the fail_closed one said why it did.
    assert {status for status, *_ in seen.responses["open"]} == {200}
    strict = seen.responses["strict"]
    assert {status for status, *_ in strict} == {200, 503}
    for status, code, headers, _ in strict:
        if status == 503:
            assert (code, int(headers["retry-after"]) >= 1) == (RATE_LIMIT_UNAVAILABLE, True)
    # No handler ran twice for a key; a key answered "created" once, by the call that ran it.
    assert service.calls, "no keyed request ran"
    assert max(service.calls.values()) == 1
    assert replayed.headers["idempotency-status"] == "replayed"  # recorded before the kill
    assert replayed.json() == created.json()
    outcomes: collections.Counter[tuple[int, str | None]] = collections.Counter()
    for kind_seen, answers in seen.responses.items():
        if kind_seen.startswith("order "):
            created_here = sum(h.get("idempotency-status") == "created" for _, _, h, _ in answers)
            assert created_here == service.calls[kind_seen.removeprefix("order ")]
            outcomes.update((status, code) for status, code, _, _ in answers)
    assert set(outcomes) <= {(201, None), (409, IN_PROGRESS), (503, STORE_UNAVAILABLE)}
    assert outcomes[(503, STORE_UNAVAILABLE)] > 0
    # Service resumed once the replica took over.
    assert hit
    figures(
        "redis_failover_stack",
        topology=kind,
        detection_timeout_ms=DETECTION_MS,
        keyed_writes_resumed_seconds=round(resumed["idempotency"], 2),
        rate_limit_decisions_resumed_seconds=round(resumed["rate_limit"], 2),
    )


async def resume(
    client: httpx.AsyncClient, caller: dict[str, str], keys: Iterator[str], killed: float
) -> dict[str, float]:
    """Seconds from the kill until a new key on the dead primary's slots is created, and until
    the ``fail_closed`` limiter (whose key it held too) answers 200, each after a failure."""
    resumed: dict[str, float] = {}
    failed: set[str] = set()
    while len(resumed) < 2:
        if time.monotonic() - killed > RESUME_WITHIN:
            raise AssertionError(f"service did not resume within {RESUME_WITHIN}s: {resumed}")
        if "idempotency" not in resumed:
            headers = {**caller, "Idempotency-Key": next(keys)}
            answer = await client.post("/orders", json={}, headers=headers)
            if answer.status_code == 201 and "idempotency" in failed:
                resumed["idempotency"] = time.monotonic() - killed
            elif answer.status_code == 503:
                failed.add("idempotency")
        if "rate_limit" not in resumed:
            answer = await client.get("/strict", headers=caller)
            if answer.status_code == 200 and "rate_limit" in failed:
                resumed["rate_limit"] = time.monotonic() - killed
            elif answer.status_code == 503:
                failed.add("rate_limit")
        await asyncio.sleep(0.05)
    return resumed


async def cache_hits_again(client: httpx.AsyncClient, caller: dict[str, str]) -> bool:
    """Whether a new item, read twice, is a hit the second time within 10 s (the cache's
    breaker closes at its next probe)."""
    for attempt in range(100):
        path = f"/items/after-{attempt}"
        await client.get(path, headers=caller)
        if (await client.get(path, headers=caller)).headers.get("x-cache") == "HIT":
            return True
        await asyncio.sleep(0.1)
    return False
