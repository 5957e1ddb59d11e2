"""The example through real server processes: the whole stack on PostgreSQL and Redis.

``DATABASE_URL=... REDIS_URL=... python -m examples.funds --workers 2`` must serve every
endpoint with idempotency, caching, rate limiting, CORS, health and graceful shutdown intact.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RUN_ID, run_sync
from tests.servers import ROOT, ServerProcess, free_port, run_server, server_env

FUND: dict[str, Any] = {
    "name": "Stack Fund",
    "size": 5_000_000,
    "stages": [
        {"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1},
        {"name": "a", "months": 24, "graduate": 0.5, "exit": 0.2},
    ],
}
HEALTH_KEY = "health-key-for-tests-0123456789"

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(
    postgres_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        "DATABASE_URL": postgres_dsn,
        "REDIS_URL": redis_url,
        "RATE_LIMIT": "40/second",
        # The rate-limit test speaks for a client address of its own (X-Forwarded-For), so the
        # bucket it empties is no other test's.
        "TRUSTED_PROXIES": "127.0.0.1",
        "CORS_ORIGINS": "https://app.example.com,https://*.example.com",
        "HEALTH_KEY": HEALTH_KEY,
        "SHUTDOWN_DRAIN_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        # This run's keys only, deleted when the module is done (the cache's tags live 24 h).
        "REDIS_KEY_PREFIX": f"prodkit-test:{RUN_ID}:funds:",
    }
    args = ["examples.funds", "--port", str(port), "--workers", "2"]
    try:
        with run_server(
            args, port=port, tmp_path=tmp_path_factory.mktemp("funds"), env=env
        ) as running:
            yield running
    finally:
        run_sync(lambda: delete_keys(redis_url, env["REDIS_KEY_PREFIX"]))


async def delete_keys(url: str, prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
        for _ in range(100):  # both workers up (bounded: 10 s)
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield client


def user() -> dict[str, str]:
    return {"X-User-Id": f"stack-{uuid.uuid4().hex[:10]}"}


async def rows_named(dsn: str, user_id: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM funds WHERE user_id = $1", user_id))
    finally:
        await conn.close()


async def test_idempotent_create_runs_once_across_workers(
    http: httpx.AsyncClient, postgres_dsn: str
) -> None:
    caller = user()
    headers = {**caller, "Idempotency-Key": uuid.uuid4().hex}
    first = await http.post("/api/funds", json=FUND, headers=headers)
    assert first.status_code == 201
    assert first.headers["idempotency-status"] == "created"
    replays = await asyncio.gather(
        *(http.post("/api/funds", json=FUND, headers=headers) for _ in range(6))
    )
    for replay in replays:
        assert replay.status_code == 201
        assert replay.headers["idempotency-status"] == "replayed"
        assert replay.json() == first.json()
        assert replay.headers["location"] == first.headers["location"]
    assert await rows_named(postgres_dsn, caller["X-User-Id"]) == 1
    changed = await http.post("/api/funds", json={**FUND, "size": 1}, headers=headers)
    assert (changed.status_code, changed.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert await rows_named(postgres_dsn, caller["X-User-Id"]) == 1


async def cache_state(http: httpx.AsyncClient, url: str, headers: dict[str, str], want: str) -> str:
    """GET until ``X-Cache`` is ``want`` (2 s at most): an entry is stored just after its response
    went out, so a request racing that write may still miss."""
    state = ""
    for _ in range(40):
        state = (await http.get(url, headers=headers)).headers.get("x-cache", "")
        if state == want:
            break
        await asyncio.sleep(0.05)
    return state


async def test_reads_are_cached_and_writes_invalidate(http: httpx.AsyncClient) -> None:
    caller = user()
    fund = (await http.post("/api/funds", json=FUND, headers=caller)).json()
    url = f"/api/funds/{fund['id']}"
    assert (await http.get(url, headers=caller)).headers["x-cache"] == "MISS"
    assert await cache_state(http, url, caller, "HIT") == "HIT"
    hit = await http.get(url, headers=caller)
    assert hit.headers["x-cache"] == "HIT"
    assert "age" in hit.headers
    etag = hit.headers["etag"]
    assert (await http.get(url, headers={**caller, "If-None-Match": etag})).status_code == 304
    other = await http.get(url, headers=user())
    assert other.status_code == 404  # per-user entries: never another caller's cached fund
    projection = f"{url}/projection?simulations=20000&seed=3"
    assert (await http.get(projection, headers=caller)).headers["x-cache"] == "MISS"
    assert await cache_state(http, projection, caller, "HIT") == "HIT"
    patched = await http.patch(url, json={"name": "Renamed"}, headers=caller)
    assert patched.status_code == 200
    after = await http.get(url, headers=caller)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["name"] == "Renamed"
    assert (await http.get(projection, headers=caller)).headers["x-cache"] == "MISS"


def own_address() -> dict[str, str]:
    """An ``X-Forwarded-For`` no other test (or run) uses: a fresh rate-limit bucket."""
    prefix = uuid.uuid4().hex[:8]
    return {"X-Forwarded-For": f"2001:db8:{prefix[:4]}:{prefix[4:]}::1"}


async def test_rate_limit_answers_429_with_ietf_headers(http: httpx.AsyncClient) -> None:
    caller = {**user(), **own_address()}
    responses = await asyncio.gather(
        *(http.get("/api/summary", headers=caller) for _ in range(120))
    )
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "120 requests at once must exceed 40/second"
    sample = limited[0]
    assert sample.headers["content-type"] == "application/problem+json"
    assert sample.json()["code"] == "RATE_LIMITED"
    # 40/second: the next request is allowed within 1/40 s, and Retry-After is whole seconds.
    assert sample.headers["retry-after"] == "1"
    assert sample.headers["ratelimit-policy"].startswith('"default";q=40;w=1')
    assert "ratelimit" in sample.headers
    assert sample.headers["x-request-id"]
    ok = next(r for r in responses if r.status_code == 200)
    assert "ratelimit" in ok.headers
    # Another client's bucket is untouched.
    assert (await http.get("/api/summary", headers={**user(), **own_address()})).status_code == 200


async def test_cors_preflight_and_error_responses(http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        "/api/funds",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-user-id, idempotency-key",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    evil = await http.options(
        "/api/funds",
        headers={
            "Origin": "https://app.example.com.evil.io",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert evil.status_code == 403
    assert "access-control-allow-origin" not in evil.headers
    unauthenticated = await http.get("/api/summary", headers={"Origin": "https://b.example.com"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == "https://b.example.com"
    assert "X-Request-ID" in unauthenticated.headers["access-control-expose-headers"]


async def test_health_and_metrics(http: httpx.AsyncClient) -> None:
    assert (await http.get("/livez")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200
    summary = (await http.get("/healthz")).json()
    assert "checks" not in summary or all("error" not in c for c in summary.get("checks", []))
    detailed = await http.get("/healthz", headers={"X-Health-Key": HEALTH_KEY})
    assert detailed.status_code == 200
    assert "postgres" in detailed.text
    caller = user()
    await http.post(
        "/api/funds", json=FUND, headers={**caller, "Idempotency-Key": uuid.uuid4().hex}
    )
    text = ""
    for _ in range(20):  # both workers' samples are merged; the scrape may land on either
        text = (await http.get("/metrics")).text
        if "fund_creations_total" in text:
            break
    assert "http_request_duration_seconds_bucket{" in text
    assert 'route="/api/funds/{fund_id}"' in text or 'route="/api/funds"' in text
    assert (
        'fund_creations_total{idempotency_status="created",model_version="stage-model-1",status="201"}'
        in text
    )


async def _slow_projection(client: httpx.AsyncClient, fund_url: str, caller: dict[str, str]) -> int:
    response = await client.get(f"{fund_url}/projection?simulations=200000&seed=9", headers=caller)
    return response.status_code


async def test_sigterm_drains_without_dropping_requests(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SHUTDOWN_DRAIN_SECONDS": "1.5",
        "SHUTDOWN_TIMEOUT_SECONDS": "20",
        "LOG_LEVEL": "WARNING",
        # Two workers on memory storage: the test accepts that each has its own funds.
        "ALLOW_PER_WORKER_DATA": "1",
    }
    with run_server(
        ["examples.funds", "--port", str(port), "--workers", "2"],
        port=port,
        tmp_path=tmp_path,
        env=env,
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            caller = user()
            fund = (await client.post("/api/funds", json=FUND, headers=caller)).json()
            # Memory storage is per worker: find the fund through the worker that has it by
            # asking often enough; the slow requests below only need some fund to exist.
            fund_url = f"/api/funds/{fund['id']}"
            slow = [
                asyncio.create_task(_slow_projection(client, fund_url, caller)) for _ in range(4)
            ]
            await asyncio.sleep(0.3)
            server.signal(signal.SIGTERM)
            started = time.monotonic()
            ready = None
            while time.monotonic() - started < 1.0:
                ready = await client.get("/readyz")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert ready is not None
            assert ready.status_code == 503
            assert (await client.get("/livez")).status_code == 200  # still serving in the drain
            statuses = await asyncio.gather(*slow)
        assert all(status in (200, 404) for status in statuses), statuses
        assert server.wait(timeout=30) == 0


# -- starts that must fail (issue #16) -------------------------------------------------------


def start_example(tmp_path: Path, env: dict[str, str], workers: int = 2) -> tuple[int, str]:
    """Run ``python -m examples.funds`` until it exits (bounded); its status and its stderr.

    ``TMPDIR`` is the test's own folder, so whatever the start leaves there is this test's to see.
    """
    port = free_port()
    completed = subprocess.run(
        [sys.executable, "-m", "examples.funds", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=server_env({"TMPDIR": str(tmp_path), "LOG_LEVEL": "WARNING", **env}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return completed.returncode, completed.stderr.decode(errors="replace")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        # Several workers on memory storage would split the data between them.
        ({}, "DATABASE_URL"),
        (
            {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "IDEMPOTENCY_STORE": "memory"},
            "IDEMPOTENCY_STORE",
        ),
        ({"DATABASE_URL": "db.example.com:5432/funds"}, "DATABASE_URL"),
        ({"ALLOW_PER_WORKER_DATA": "1", "RATE_LIMIT": "plenty"}, "RATE_LIMIT"),
        ({"ALLOW_PER_WORKER_DATA": "1", "REDIS_URL": "cache:6379"}, "REDIS_URL"),
        ({"ALLOW_PER_WORKER_DATA": "1", "MAX_CONCURRENCY": "many"}, "MAX_CONCURRENCY"),
    ],
)
def test_a_wrong_configuration_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    status, stderr = start_example(tmp_path, env)
    assert status != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert variable in lines[0]
    assert "Traceback" not in stderr
    assert not list(tmp_path.iterdir())  # no metrics folder made for a start that failed


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_fails_its_start_up_makes_the_start_fail(
    tmp_path: Path, workers: int
) -> None:
    # A well-formed DATABASE_URL whose server is not there: only the worker's start-up finds out.
    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/absent",
        "REDIS_URL": "redis://127.0.0.1:9/0",  # shared stores, so that the workers do start
    }
    status, _ = start_example(tmp_path, env, workers=workers)
    assert status != 0
    assert not list(tmp_path.glob("prodkit-metrics-*"))  # removed at exit


def test_several_workers_remove_their_metrics_folder_at_exit(
    tmp_path: Path, postgres_dsn: str
) -> None:
    port = free_port()
    env = {"DATABASE_URL": postgres_dsn, "TMPDIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    env["ALLOW_PER_WORKER_DATA"] = "1"  # no Redis: each worker its own cache
    args = ["examples.funds", "--port", str(port), "--workers", "2"]
    logs = tmp_path / "logs"
    logs.mkdir()
    with run_server(args, port=port, tmp_path=logs, env=env) as server:
        assert httpx.get(f"{server.base_url}/livez", timeout=20).status_code == 200
        assert len(list(tmp_path.glob("prodkit-metrics-*"))) == 1
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert not list(tmp_path.glob("prodkit-metrics-*"))


# -- hostile clients against the example's server configuration (issue #16) -----------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker on memory storage, 5 requests a minute, no trusted proxy."""
    port = free_port()
    env = {"RATE_LIMIT": "5/minute", "TRUSTED_PROXIES": "", "LOG_LEVEL": "WARNING"}
    args = ["examples.funds", "--port", str(port)]
    with run_server(
        args, port=port, tmp_path=tmp_path_factory.mktemp("limited"), env=env
    ) as running:
        yield running


async def test_rotating_forwarded_for_from_loopback_is_still_rate_limited(
    limited: ServerProcess,
) -> None:
    # TRUSTED_PROXIES is empty, so no forwarding header may pick the client address: not
    # prodkit's resolver, and not uvicorn's own proxy-header handling (off in the example).
    caller = user()
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=20) as client:
        statuses = [
            (
                await client.get(
                    "/api/summary", headers={**caller, "X-Forwarded-For": f"203.0.113.{n}"}
                )
            ).status_code
            for n in range(1, 11)
        ]
    assert statuses.count(200) <= 5
    assert statuses.count(429) >= 5


async def test_an_oversized_request_head_is_refused_before_the_app(limited: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=20) as client:
        try:
            status = (await client.get("/livez", headers={"X-Big": "a" * 200_000})).status_code
        except httpx.TransportError:  # the server may close before the client finished sending
            status = 0
        assert status in (0, 400, 431)
        assert (await client.get("/livez")).status_code == 200  # and the server still serves
