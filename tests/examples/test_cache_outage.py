"""The example through a real server process while its Redis is paused (SIGSTOP) and resumed.

``REDIS_URL=<our own redis-server> python -m examples.funds --workers 1`` (funds in memory):
a DELETE or PATCH answered while Redis was paused must never be followed by the old fund
served from the cache once Redis is back, and the server logs one line when the cache's
circuit breaker opens and one when it closes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cache.helpers import paused
from tests.servers import HOST, ServerProcess, free_port, redis_server, run_server

FUND: dict[str, Any] = {
    "name": "Outage Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}
POLL = 0.1  # seconds between two polls
CACHE_BREAKER_THRESHOLD = 3  # the default ResponseCache breaker opens after 3 failed reads
# Redis answers again -> the cache is used again: "within 1 s", as polls of 0.1 s (plus the
# time each poll takes on a loaded machine).
RECOVERY_POLLS = 15
NEAR_MAX_LAG = 0.01  # NearCacheStore's default max_lag: how long it serves without Redis

pytestmark = [pytest.mark.server, pytest.mark.redis]

Stack = tuple[ServerProcess, subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The example on a private redis-server: both stopped by their own PIDs afterwards."""
    redis_port, port = free_port(), free_port()
    env = {
        "REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "RATE_LIMIT": "1000/second",
    }
    args = ["examples.funds", "--port", str(port), "--workers", "1"]
    tmp_path: Path = tmp_path_factory.mktemp("cache-outage")
    with (
        redis_server(redis_port) as redis,
        run_server(args, port=port, tmp_path=tmp_path, env=env) as server,
    ):
        yield server, redis


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack[0].base_url, timeout=20) as client:
        for _ in range(100):  # bounded: 10 s
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(POLL)
        yield client


def caller() -> dict[str, str]:
    return {"X-User-Id": f"outage-{uuid.uuid4().hex[:10]}"}


def log_events(server: ServerProcess, since: int) -> list[dict[str, Any]]:
    """The JSON log lines the server wrote after the first ``since`` characters of output."""
    events = []
    for line in server.output()[since:].splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def breaker_lines(server: ServerProcess, since: int, name: str) -> list[str]:
    return [
        event["event"]
        for event in log_events(server, since)
        if event.get("breaker") == name and str(event.get("event", "")).startswith("circuit")
    ]


async def cached_fund(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """Create a fund and read it until it is served from the cache; its URL."""
    created = await http.post("/api/funds", json=FUND, headers=headers)
    assert created.status_code == 201
    url = f"/api/funds/{created.json()['id']}"
    assert (await http.get(url, headers=headers)).headers["x-cache"] == "MISS"
    state = ""
    for _ in range(20):  # the entry is stored just after the response went out
        state = (await http.get(url, headers=headers)).headers.get("x-cache", "")
        if state == "HIT":
            break
        await asyncio.sleep(POLL / 2)
    assert state == "HIT"
    return url


async def cache_back(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """Poll ``url`` (cached before the pause) until it is a hit again: the number of polls."""
    for polls in range(1, RECOVERY_POLLS + 1):
        if (await http.get(url, headers=headers)).headers["x-cache"] == "HIT":
            return polls
        await asyncio.sleep(POLL)
    raise AssertionError(f"the cache was not used within {RECOVERY_POLLS} polls of {POLL}s")


async def open_cache_breaker(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """With Redis paused: reads fail open (the app answers) until the cache's breaker opens, so
    the write that follows is refused by it and nothing reaches Redis (the campaign's case).

    The near cache serves what it holds for up to ``max_lag`` (10 ms) after Redis last
    answered, as it would without the pause: a read sent sooner may be a HIT from memory
    (before the rate limiter reserved its units, each read waited for a Redis round trip of its
    own, so none was that early)."""
    await asyncio.sleep(NEAR_MAX_LAG * 5)
    for _ in range(CACHE_BREAKER_THRESHOLD):
        during = await http.get(url, headers=headers)
        assert (during.status_code, during.headers["x-cache"]) == (200, "MISS")


async def test_a_delete_while_redis_is_paused_is_never_followed_by_the_deleted_fund(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    server, redis = stack
    since = len(server.output())
    headers = caller()
    url = await cached_fund(http, headers)
    control = await cached_fund(http, headers)  # a fund no write touches
    with paused(redis):
        await open_cache_breaker(http, url, headers)
        assert (await http.delete(url, headers=headers)).status_code == 204
    await cache_back(http, control, headers)
    seen = []
    for _ in range(10):  # the cache is in use again: the deleted fund must not be in it
        response = await http.get(url, headers=headers)
        seen.append(response.status_code)
        await asyncio.sleep(POLL)
    assert set(seen) == {404}, f"the deleted fund came back from the cache: {seen}"
    # One line when the cache's breaker opened, one when it closed: not one per request.
    assert breaker_lines(server, since, "cache") == [
        "circuit breaker opened",
        "circuit breaker closed",
    ]


async def test_a_patch_while_redis_is_paused_is_served_with_the_new_name(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    server, redis = stack
    since = len(server.output())
    headers = caller()
    url = await cached_fund(http, headers)
    control = await cached_fund(http, headers)
    with paused(redis):
        await open_cache_breaker(http, url, headers)
        patched = await http.patch(url, json={"name": "Renamed"}, headers=headers)
        assert (patched.status_code, patched.json()["name"]) == (200, "Renamed")
    await cache_back(http, control, headers)
    names = []
    for _ in range(10):
        response = await http.get(url, headers=headers)
        names.append((response.status_code, response.json()["name"]))
        await asyncio.sleep(POLL)
    assert set(names) == {(200, "Renamed")}, f"the old name came back from the cache: {names}"
    # Redis is used again: the renamed fund is cached and served from it.
    assert (await http.get(url, headers=headers)).headers["x-cache"] == "HIT"
    assert breaker_lines(server, since, "cache") == [
        "circuit breaker opened",
        "circuit breaker closed",
    ]
    pending = [e for e in log_events(server, since) if e["event"] == "cache invalidations pending"]
    written = [e for e in log_events(server, since) if e["event"] == "cache invalidations written"]
    assert (len(pending), len(written)) == (1, 1)
