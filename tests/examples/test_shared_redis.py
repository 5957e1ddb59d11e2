"""Two example processes sharing a Redis Cluster, or a Sentinel-managed primary.

``REDIS_URL=redis+cluster://… IDEMPOTENCY_STORE=redis python -m examples.funds`` twice, on two
loopback ports (and the same with ``redis+sentinel://…/prodkit``), funds in each process's
memory: what one process records, the other uses. A keyed POST answered by one is replayed by
the other; a fund read through one is a cache hit through the other (the cache key includes
the host, so both are asked under one ``Host``, as a load balancer would); a caller's rate limit
is one quota across both.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServerProcess, free_port, run_server

pytestmark = [pytest.mark.server, pytest.mark.redis]

FUND: dict[str, Any] = {
    "name": "Shared Fund",
    "size": 2_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}
QUOTA = 20  # RATE_LIMIT per minute, per caller, for both processes together
HOST = {"Host": "funds.example.test"}


@contextlib.contextmanager
def two_examples(url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "REDIS_URL": url,
        "IDEMPOTENCY_STORE": "redis",
        "RATE_LIMIT": f"{QUOTA}/minute",
        "REDIS_KEY_PREFIX": f"prodkit-test:{uuid.uuid4().hex[:8]}:",
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_DRAIN_SECONDS": "0",
    }
    with contextlib.ExitStack() as servers:
        started = []
        for _ in range(2):
            port = free_port()
            args = ["examples.funds", "--port", str(port), "--workers", "1"]
            started.append(
                servers.enter_context(run_server(args, port=port, tmp_path=tmp_path, env=env))
            )
        yield started[0], started[1]


@pytest.mark.parametrize("topology", ["shared_redis_cluster", "shared_redis_sentinel"])
async def test_two_processes_share_records_cache_entries_and_one_rate_limit(
    topology: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(topology).url
    with two_examples(url, tmp_path) as (one, two):
        async with (
            httpx.AsyncClient(base_url=one.base_url, headers=HOST, timeout=20) as a,
            httpx.AsyncClient(base_url=two.base_url, headers=HOST, timeout=20) as b,
        ):
            assert (await a.get("/readyz")).status_code == 200
            assert (await b.get("/readyz")).status_code == 200

            # One process answers a keyed POST; the other replays it.
            owner = {"X-User-Id": f"shared-{uuid.uuid4().hex[:8]}"}
            keyed = {**owner, "Idempotency-Key": uuid.uuid4().hex}
            created = await a.post("/api/funds", json=FUND, headers=keyed)
            replayed = await b.post("/api/funds", json=FUND, headers=keyed)
            assert (created.status_code, created.headers["idempotency-status"]) == (201, "created")
            assert (replayed.status_code, replayed.headers["idempotency-status"]) == (
                201,
                "replayed",
            )
            assert replayed.json() == created.json()
            assert replayed.headers["location"] == created.headers["location"]

            # One process caches the fund; the other serves that entry (it has no such fund
            # in its own memory: only the shared cache can answer).
            location = created.headers["location"]
            first = await a.get(location, headers=owner)
            assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
            for _ in range(50):  # the entry is stored after the response went (bounded: 5 s)
                if (await a.get(location, headers=owner)).headers.get("x-cache") == "HIT":
                    break
                await asyncio.sleep(0.1)
            shared = await b.get(location, headers=owner)
            assert (shared.status_code, shared.headers["x-cache"]) == (200, "HIT")
            assert shared.json() == first.json() == created.json()

            # One quota for a caller, whichever process it calls.
            caller = {"X-User-Id": f"limited-{uuid.uuid4().hex[:8]}"}
            statuses = [
                (await (a if turn % 2 else b).get("/api/summary", headers=caller)).status_code
                for turn in range(QUOTA + 2)
            ]
            assert statuses == [200] * QUOTA + [429, 429]
