"""Two example processes on PostgreSQL + Redis: a write through one is never followed by the old
fund from the other's near cache.

The example serves its cached ``GET /api/funds/{id}`` from each process's memory when
``REDIS_URL`` is set (``NEAR_CACHE`` defaults to on). Two real server processes on loopback
ports share the database and Redis, as two hosts behind a load balancer do; a client renames a
fund through one and, once the ``PATCH`` has answered, reads it through the other. Every such
read must show the new name, in every round, whichever process wrote; and the reads before
each write must have been answered from memory (the near cache's metric), or the test would
prove nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServerProcess, free_port, run_server

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.redis]

ROUNDS = 60
FUND: dict[str, Any] = {
    "name": "Near Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}
NEAR_HITS = re.compile(r'^prodkit_cache_near_reads_total\{outcome="hit"\} (\S+)$', re.M)


@pytest.fixture
def processes(
    postgres_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    env = {
        "DATABASE_URL": postgres_dsn,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "RATE_LIMIT": "100000/second",
        "LOG_LEVEL": "WARNING",
    }
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(2):
            port = free_port()
            args = ["examples.funds", "--port", str(port), "--workers", "1"]
            servers.append(
                stack.enter_context(run_server(args, port=port, tmp_path=tmp_path, env=env))
            )
        yield servers


@pytest.fixture
async def clients(processes: list[ServerProcess]) -> AsyncIterator[list[httpx.AsyncClient]]:
    made = [httpx.AsyncClient(base_url=server.base_url, timeout=10) for server in processes]
    try:
        for client in made:
            for _ in range(200):  # bounded: 20 s
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield made
    finally:
        for client in made:
            await client.aclose()


async def near_hits(client: httpx.AsyncClient) -> float:
    """The process's ``prodkit_cache_near_reads_total{outcome="hit"}`` (0 before the first)."""
    found = NEAR_HITS.search((await client.get("/metrics")).text)
    return float(found.group(1)) if found else 0.0


async def test_a_patch_through_one_process_is_never_followed_by_the_old_fund_from_the_other(
    clients: list[httpx.AsyncClient],
) -> None:
    user = {"X-User-Id": f"near-{uuid.uuid4().hex[:10]}"}
    created = await clients[0].post("/api/funds", json=FUND, headers=user)
    assert created.status_code == 201
    path = f"/api/funds/{created.json()['id']}"
    from_memory = 0
    for round_ in range(ROUNDS):
        writer, reader = clients[round_ % 2], clients[(round_ + 1) % 2]
        # The reader holds the fund: a miss, a hit read from Redis, then hits from memory. A
        # read more than max_lag (10 ms) after the tracking connection last answered goes to
        # Redis instead (and pings it), which a loaded machine makes common: read in short
        # bursts, bounded, until one has come from memory.
        before = await near_hits(reader)
        for _ in range(5):
            for _ in range(3):
                cached = await reader.get(path, headers=user)
                assert cached.status_code == 200
            if await near_hits(reader) > before:
                from_memory += 1
                break
        name = f"Near Fund, round {round_}"
        patched = await writer.patch(path, json={"name": name}, headers=user)
        assert patched.status_code == 200
        # The PATCH has answered: the other process must not serve the fund from before it.
        after = await reader.get(path, headers=user)
        assert (after.status_code, after.json()["name"]) == (200, name), f"round {round_}"
    # Nearly every round had the old fund in the reader's memory when the write came.
    assert from_memory >= ROUNDS * 3 // 4
