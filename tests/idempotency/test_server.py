"""Real uvicorn processes (two workers) against real PostgreSQL and Redis stores.

The app (``tests/servers/idempotency_app.py``) writes a row per handler run, so "exactly once"
is counted in the database, not inferred from responses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.servers import ServerProcess, free_port, run_server

pytestmark = [pytest.mark.server, pytest.mark.postgres]

LEASE = 4.0


@pytest.fixture(scope="module", params=["postgres", pytest.param("redis", marks=pytest.mark.redis)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Two uvicorn workers sharing one idempotency store (PostgreSQL or Redis)."""
    dsn = request.getfixturevalue("postgres_dsn")
    env = {
        "DATABASE_URL": dsn,
        "IDEMPOTENCY_STORE": request.param,
        "IDEMPOTENCY_LEASE": str(LEASE),
    }
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
        env["IDEMPOTENCY_REDIS_PREFIX"] = f"prodkit-test:{uuid.uuid4().hex[:8]}:"
    port = free_port()
    args = [
        "uvicorn",
        "tests.servers.idempotency_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
    ]
    try:
        with run_server(args, port=port, tmp_path=tmp_path_factory.mktemp("idem"), env=env) as srv:
            yield srv
    finally:
        if request.param == "redis":
            asyncio.run(delete_redis_keys(env["REDIS_URL"], env["IDEMPOTENCY_REDIS_PREFIX"]))


async def delete_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    redis_client = redis_asyncio.Redis.from_url(url)
    try:
        async for found in redis_client.scan_iter(match=f"{prefix}*", count=500):
            await redis_client.delete(found)
    finally:
        await redis_client.aclose()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as made:
        # Both workers finish their lifespan start-up before the test's requests: wait until
        # answers have come from two different worker processes (bounded, 20 s).
        seen: set[str] = set()
        for _ in range(200):
            try:
                ready = await made.get("/ready")
                if ready.status_code == 200:
                    seen.add(ready.headers.get("x-worker-pid", ""))
                    if len(seen) >= 2:
                        break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        yield made


async def rows(dsn: str, key: str, user: str | None = None) -> list[dict[str, object]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch(
            "SELECT id, user_id, path, body, pid FROM idem_charges WHERE idem_key = $1"
            " AND ($2::text IS NULL OR user_id = $2) ORDER BY id",
            key,
            user,
        )
        return [dict(row) for row in found]
    finally:
        await conn.close()


def headers(key: str, user: str = "alice") -> dict[str, str]:
    return {"Idempotency-Key": key, "X-User-Id": user}


async def test_fifty_concurrent_posts_run_the_handler_once(
    client: httpx.AsyncClient, postgres_dsn: str
) -> None:
    key = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(
            client.post("/charges?delay=0.5", json={"amount": 100}, headers=headers(key))
            for _ in range(50)
        )
    )
    assert len(await rows(postgres_dsn, key)) == 1
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert [r.headers["idempotency-status"] for r in created].count("created") == 1
    assert len({r.content for r in created}) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
        assert int(conflict.headers["retry-after"]) >= 1
    assert len({r.headers["x-worker-pid"] for r in responses}) >= 2, "requests hit one worker"
    replay = await client.post("/charges?delay=0.5", json={"amount": 100}, headers=headers(key))
    assert replay.status_code == 201
    assert replay.headers["idempotency-status"] == "replayed"
    assert replay.content == created[0].content
    assert len(await rows(postgres_dsn, key)) == 1


async def test_a_worker_killed_mid_request_leaves_a_key_a_retry_completes(
    client: httpx.AsyncClient, postgres_dsn: str, server: ServerProcess
) -> None:
    key = uuid.uuid4().hex
    first = asyncio.create_task(client.post("/hang", json={"n": 1}, headers=headers(key)))
    for _ in range(200):
        found = await rows(postgres_dsn, key)
        if found:
            break
        await asyncio.sleep(0.05)
    assert len(found) == 1
    worker = int(str(found[0]["pid"]))
    assert worker != server.pid
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(httpx.TransportError):
        await first
    # The dead worker's claim holds until its lease runs out ...
    early = await client.post("/hang", json={"n": 1}, headers=headers(key))
    assert early.status_code == 409
    await asyncio.sleep(float(early.headers["retry-after"]))
    retried = None
    for _ in range(20):
        retried = await client.post("/hang", json={"n": 1}, headers=headers(key))
        if retried.status_code != 409:
            break
        await asyncio.sleep(0.5)
    # ... and then a retry runs the handler and completes the key.
    assert retried is not None
    assert retried.status_code == 201
    assert retried.headers["idempotency-status"] == "created"
    again = await client.post("/hang", json={"n": 1}, headers=headers(key))
    assert again.headers["idempotency-status"] == "replayed"
    assert len(await rows(postgres_dsn, key)) == 2  # the killed attempt and the retry


async def test_a_server_error_is_not_replayed(client: httpx.AsyncClient, postgres_dsn: str) -> None:
    key = uuid.uuid4().hex
    first = await client.post("/fail", json={}, headers=headers(key))
    second = await client.post("/fail", json={}, headers=headers(key))
    assert first.status_code == second.status_code == 500
    assert second.headers["idempotency-status"] == "created"
    assert first.json()["id"] != second.json()["id"]
    assert len(await rows(postgres_dsn, key)) == 2


async def test_the_same_key_from_two_users_runs_twice(
    client: httpx.AsyncClient, postgres_dsn: str
) -> None:
    key = uuid.uuid4().hex
    alice = await client.post("/charges", json={"amount": 1}, headers=headers(key, "alice"))
    bob = await client.post("/charges", json={"amount": 1}, headers=headers(key, "bob"))
    assert alice.headers["idempotency-status"] == bob.headers["idempotency-status"] == "created"
    assert alice.json()["id"] != bob.json()["id"]
    assert len(await rows(postgres_dsn, key, "alice")) == 1
    assert len(await rows(postgres_dsn, key, "bob")) == 1


async def test_a_different_body_is_422_and_the_record_is_intact(
    client: httpx.AsyncClient, postgres_dsn: str
) -> None:
    key = uuid.uuid4().hex
    first = await client.post("/charges", json={"amount": 1}, headers=headers(key))
    other = await client.post("/charges", json={"amount": 2}, headers=headers(key))
    assert other.status_code == 422
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    original = await client.post("/charges", json={"amount": 1}, headers=headers(key))
    assert original.headers["idempotency-status"] == "replayed"
    assert original.content == first.content
    assert len(await rows(postgres_dsn, key)) == 1
