"""Three app hosts behind HAProxy, sharing PostgreSQL (through PgBouncer) and a Redis Cluster.

What one process cannot show: hosts that start together on an empty database and migrate it
once, a rate limit that holds for all hosts together, one fund for 40 concurrent POSTs with one
``Idempotency-Key`` spread over the hosts, one computation for 40 concurrent reads of an
uncached projection, and no failed request while a Redis Cluster primary fails over under
them. See ``tests/scale/conftest.py`` for the site.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.funds.migrate import migration_files
from prodkit._core.drivers import redis_client
from tests.conftest import Figures
from tests.scale.conftest import RATE_LIMIT_PER_MINUTE, Site
from tests.scale.load import Load

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.server]

FUND = {
    "name": "Scale Fund I",
    "size": 50_000_000,
    "stages": [
        {"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1},
        {"name": "series-a", "months": 24, "graduate": 0.5, "exit": 0.2},
    ],
}


def sample_total(site: Site, name: str, labels: Mapping[str, str]) -> float:
    """The sum over every host of the samples ``name`` whose labels include ``labels``."""
    total = 0.0
    with httpx.Client(timeout=10.0) as client:
        for server in site.hosts:
            page = client.get(f"{server.url}/metrics")
            assert page.status_code == 200
            for family in text_string_to_metric_families(page.text):
                for sample in family.samples:
                    if sample.name == name and labels.items() <= sample.labels.items():
                        total += sample.value
    return total


def served_by(responses: list[httpx.Response]) -> set[str]:
    return {r.headers["x-served-by"] for r in responses}


async def test_the_hosts_started_together_migrate_the_database_once(site: Site) -> None:
    # Six workers on three hosts started together on an empty database, through PgBouncer:
    # one applied every migration, in one transaction; the others waited for its lock and
    # found them applied.
    applied = [
        line
        for server in site.hosts
        for line in server.output().splitlines()
        if "applied migrations" in line
    ]
    versions = [path.stem for path in migration_files()]
    assert len(applied) == 1, applied
    assert json.loads(applied[0])["event"] == f"applied migrations: {', '.join(versions)}"
    conn = await asyncpg.connect(site.database_dsn)
    try:
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [row["version"] for row in recorded] == versions


async def test_one_rate_limit_holds_for_all_hosts_together(site: Site) -> None:
    # No X-User-Id: the limit is per client address, which each host reads from HAProxy's
    # X-Forwarded-For (TRUSTED_PROXIES names HAProxy). The X-Forwarded-For half the requests
    # bring themselves is ignored: HAProxy appends the real address, the rightmost untrusted.
    # The client connects from an address of its own in 127.0.0.0/8, unused by other tests.
    quota = RATE_LIMIT_PER_MINUTE
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    transport = httpx.AsyncHTTPTransport(local_address=address)
    gate = asyncio.Semaphore(12)

    async def one(client: httpx.AsyncClient, index: int) -> httpx.Response:
        spoofed = {"X-Forwarded-For": f"203.0.113.{index % 200}"} if index % 2 else {}
        async with gate:
            return await client.get("/openapi.json", headers=spoofed)

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=site.url, timeout=30.0, transport=transport) as client:
        responses = await asyncio.gather(*(one(client, i) for i in range(3 * quota)))
    elapsed = time.monotonic() - started

    assert {r.status_code for r in responses} == {200, 429}
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    # GCRA: the quota at once, then one more every 60/quota seconds, whichever host answers.
    # Limited per host, the three hosts would have let up to 3 x quota through.
    refill = math.floor(elapsed * quota / 60) + 1
    assert quota <= len(allowed) <= quota + refill, (len(allowed), elapsed)
    assert served_by(allowed) == served_by(limited) == site.names
    problem = limited[0].json()
    assert problem["code"] == "RATE_LIMITED"
    assert int(limited[0].headers["retry-after"]) >= 1


async def test_forty_concurrent_posts_with_one_key_create_one_fund(site: Site) -> None:
    user, key = f"scale-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    headers = {"X-User-Id": user, "Idempotency-Key": key}
    async with httpx.AsyncClient(base_url=site.url, timeout=30.0) as client:
        responses = await asyncio.gather(
            *(client.post("/api/funds", json=FUND, headers=headers) for _ in range(40))
        )
        # Once it is done, every host replays it.
        retries = [await client.post("/api/funds", json=FUND, headers=headers) for _ in range(3)]

    outcomes = sorted(
        (r.status_code, r.headers.get("idempotency-status") or r.json()["code"]) for r in responses
    )
    assert set(outcomes) <= {
        (201, "created"),
        (201, "replayed"),
        (409, "IDEMPOTENCY_REQUEST_IN_PROGRESS"),
    }, outcomes
    assert outcomes.count((201, "created")) == 1
    assert served_by(responses) == site.names
    assert served_by(retries) == site.names
    created = {r.json()["id"] for r in responses + retries if r.status_code == 201}
    assert len(created) == 1
    assert {r.headers["idempotency-status"] for r in retries} == {"replayed"}

    conn = await asyncpg.connect(site.database_dsn)
    try:
        rows = await conn.fetch("SELECT id::text FROM funds WHERE user_id = $1", user)
    finally:
        await conn.close()
    assert [row["id"] for row in rows] == list(created)


async def test_forty_concurrent_reads_of_a_projection_compute_it_once(site: Site) -> None:
    user = f"scale-{uuid.uuid4().hex[:8]}"
    route = {"route": "/api/funds/{fund_id}/projection"}
    async with httpx.AsyncClient(base_url=site.url, timeout=60.0) as client:
        created = await client.post("/api/funds", json=FUND, headers={"X-User-Id": user})
        assert created.status_code == 201
        path = f"{created.headers['location']}/projection?simulations=200000&seed=7"
        before = {
            outcome: sample_total(
                site, "prodkit_cache_requests_total", {**route, "outcome": outcome}
            )
            for outcome in ("miss", "error", "coalesced", "hit")
        }
        responses = await asyncio.gather(
            *(client.get(path, headers={"X-User-Id": user}) for _ in range(40))
        )
    after = {
        outcome: sample_total(site, "prodkit_cache_requests_total", {**route, "outcome": outcome})
        for outcome in before
    }

    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert served_by(responses) == site.names
    # Reads that waited for the computation are marked MISS too (a fresh answer); reads that
    # came after it was stored are hits.
    assert {r.headers["x-cache"] for r in responses} <= {"MISS", "HIT"}
    # A computation is a miss (or a read that found the store failing): one in all.
    delta = {outcome: after[outcome] - before[outcome] for outcome in before}
    assert delta["miss"] + delta["error"] == 1, delta
    assert delta["coalesced"] + delta["hit"] == 39, delta


async def _primary_of(client: Any, hash_tag: str) -> int:
    """The port of the Cluster primary that owns ``{hash_tag}``."""
    slot = await client.cluster_keyslot(f"{{{hash_tag}}}")
    nodes = await client.cluster_nodes()
    return next(
        int(address.split(":")[1].split("@")[0])
        for address, node in nodes.items()
        if "master" in node["flags"] and any(int(a) <= slot <= int(b) for a, b in node["slots"])
    )


async def test_a_cluster_failover_under_the_hosts_fails_no_request(
    site: Site, figures: Figures
) -> None:
    # Callers whose rate-limit counters live on one primary; that primary is killed while
    # they send 20 requests a second through HAProxy. The rate limiter fails open (each
    # worker decides alone for a moment) and the database still answers: nothing fails.
    # Last test of the file: the Cluster keeps running with one replica fewer.
    client = redis_client(site.cluster.url)
    try:
        victim = await _primary_of(client, "caller:scale-0")
        users: list[str] = []
        for index in range(1000):
            if len(users) == 40:
                break
            name = f"scale-{uuid.uuid4().hex[:6]}-{index}"
            if await _primary_of(client, f"caller:{name}") == victim:
                users.append(name)
    finally:
        await client.aclose()
    assert len(users) == 40
    errors = {"policy": "default", "decision": "error"}
    load = Load(
        url=lambda index: f"{site.url}/api/funds?limit=1",
        headers=lambda index: {"X-User-Id": users[index % len(users)]},
    )
    async with load.running(max_seconds=60):
        await asyncio.sleep(3)
        before = await asyncio.to_thread(
            sample_total, site, "prodkit_rate_limit_decisions_total", errors
        )
        killed = time.monotonic()
        await asyncio.to_thread(site.cluster.kill, victim)
        # Until the store's errors have stopped for 5 s: the replica took over.
        last_change, count = killed, before
        while time.monotonic() - last_change < 5 and time.monotonic() - killed < 45:
            await asyncio.sleep(0.25)
            now = await asyncio.to_thread(
                sample_total, site, "prodkit_rate_limit_decisions_total", errors
            )
            if now != count:
                last_change, count = time.monotonic(), now
    assert count > before, "the rate limiter never noticed the dead primary"
    assert time.monotonic() - last_change >= 5, "the rate limiter kept failing"
    assert set(load.statuses) == {200}, load.bodies
    figures(
        "redis_failover_under_hosts",
        topology="cluster",
        detection_timeout_ms=1000,
        seconds_of_store_errors=round(last_change - killed, 1),
        requests=len(load.statuses),
        failed=0,
        store_errors=count - before,
    )
