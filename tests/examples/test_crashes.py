"""Exactly once through crashes: the example's worker killed at each point of a keyed write.

Issue #15. The example runs as a real process (``python -m examples.funds``, one worker) on
PostgreSQL with a 2-second idempotency lease. The test holds PostgreSQL locks to stop the
worker at a chosen point (before its write commits, before the record is written, right after
the commit), kills it with SIGKILL (freezing it first with SIGSTOP where timing matters), starts
a new one and retries with the same key. What it asserts is what a client and an operator see:
the fund rows, the retry's status, ``Idempotency-Status`` and body.

With the PostgreSQL store the record commits in the handler's transaction, so every crash
leaves one fund and a replay. With a store that cannot join the transaction, a crash between
the commit and the record runs the handler again — the documented limits
(``docs/idempotency.md``): with Redis once the lease ends (409 until then), with the memory
store at once (the records died with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RUN_ID
from tests.servers import ServerProcess, free_port, redis_server, run_server

asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.server

LEASE = 2.0
FUND: dict[str, Any] = {
    "name": "Crash Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}
#: The example's pool names itself so (examples/funds/postgres.py).
APPLICATION = "prodkit-funds"


class Example:
    """Starts (and restarts) the example on ``env``; every process stopped by its PID."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.stack = contextlib.ExitStack()

    async def start(self) -> ServerProcess:
        """A new worker process, once it answers ``/readyz`` with 200."""
        port = free_port()
        args = ["examples.funds", "--port", str(port), "--workers", "1"]
        server = self.stack.enter_context(
            run_server(args, port=port, tmp_path=self.tmp_path, env=self.env)
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            for _ in range(100):  # bounded: 10 s
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return server
                await asyncio.sleep(0.1)
        raise AssertionError(f"the example did not become ready:\n{server.output()}")

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def example(postgres_dsn: str, tmp_path: Path) -> Iterator[Example]:
    env = {
        "DATABASE_URL": postgres_dsn,
        "IDEMPOTENCY_LEASE_SECONDS": str(LEASE),
        "RATE_LIMIT": "100/second",
        "LOG_LEVEL": "WARNING",
    }
    made = Example(env, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class Keyed:
    """One keyed request of a caller of its own, sent as often as a client retries it."""

    method: str
    path: str
    body: Any
    user: str = field(default_factory=lambda: f"crash-{uuid.uuid4().hex[:8]}")
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def send(self, server: ServerProcess) -> httpx.Response:
        headers = {"X-User-Id": self.user, "Idempotency-Key": self.key}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            return await client.request(self.method, self.path, json=self.body, headers=headers)

    def in_flight(self, server: ServerProcess) -> asyncio.Task[httpx.Response | None]:
        """Sent in the background; it may never be answered (the worker dies)."""

        async def attempt() -> httpx.Response | None:
            with contextlib.suppress(httpx.TransportError):
                return await self.send(server)
            return None

        return asyncio.create_task(attempt())

    async def retry_until_run(
        self, server: ServerProcess, *, conflicts: int | None = None
    ) -> httpx.Response:
        """Retry as a client would: 409 while the dead worker's lease lasts, then the answer.

        ``conflicts=1`` asserts that the first retry got a 409 (sent while the lease lasts).
        """
        started = time.monotonic()
        for attempt in range(100):  # bounded: the lease is 2 s, each 409 says how long to wait
            response = await self.send(server)
            if response.status_code != 409:
                assert conflicts is None or attempt >= conflicts, "no 409 while the lease lasted"
                return response
            assert response.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
            assert 1 <= int(response.headers["retry-after"]) <= LEASE
            await asyncio.sleep(0.2)
        raise AssertionError(f"still 409 after {time.monotonic() - started:.1f} s")


def create() -> Keyed:
    return Keyed("POST", "/api/funds", FUND)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):  # bounded: 10 s
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def waiting_on_a_lock(db: Any, statement: str) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND wait_event_type = 'Lock' AND query LIKE $2",
        APPLICATION,
        f"{statement}%",
    )
    return bool(count)


@contextlib.asynccontextmanager
async def locked(dsn: str, sql: str) -> AsyncIterator[None]:
    """Hold the lock ``sql`` takes, in a transaction of its own, until the block ends."""
    conn = await asyncpg.connect(dsn)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(sql)
        yield
    finally:
        await transaction.rollback()
        await conn.close()


@contextlib.asynccontextmanager
async def stopped_at(
    db: Any, dsn: str, server: ServerProcess, request: Keyed, statement: str
) -> AsyncIterator[asyncio.Task[httpx.Response | None]]:
    """Send ``request`` while ``funds`` is locked; the block runs once the worker's
    ``statement`` waits for that lock, which is released when the block ends."""
    async with locked(dsn, "LOCK TABLE funds IN EXCLUSIVE MODE"):
        sent = request.in_flight(server)
        await until(lambda: waiting_on_a_lock(db, statement), f"{statement} waits")
        yield sent


def kill(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    server.wait(timeout=10)


async def has_funds(db: Any, user: str) -> bool:
    return bool(await funds_of(db, user))


async def funds_of(db: Any, user: str) -> list[Any]:
    return list(await db.fetch("SELECT id, name, updated_at FROM funds WHERE user_id = $1", user))


# -- POST /api/funds on the PostgreSQL store -----------------------------------------------------


@pytest.fixture(params=["postgres", "redis"])
def store(request: pytest.FixtureRequest, example: Example) -> str:
    """The idempotency store the example runs on (Redis: the shared server, a fresh prefix)."""
    if request.param == "redis":
        example.env.update(
            {
                "IDEMPOTENCY_STORE": "redis",
                "REDIS_URL": request.getfixturevalue("redis_url"),
                "REDIS_KEY_PREFIX": request.getfixturevalue("redis_prefix"),
            }
        )
    return str(request.param)


@pytest.mark.parametrize("freeze", [False, True], ids=["killed", "frozen-then-killed"])
async def test_killed_before_the_commit_the_retry_creates_one_fund(
    example: Example, db: Any, postgres_dsn: str, freeze: bool, store: str
) -> None:
    server = await example.start()
    standby = await example.start()  # another worker, where the client's retries land
    request = create()
    async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
        if freeze:
            # The sequence: frozen, the lock released (the INSERT runs server-side),
            # then killed. The commit would need the frozen worker to send it.
            server.signal(signal.SIGSTOP)
        else:
            kill(server)
    if freeze:
        await asyncio.sleep(0.2)
        kill(server)
    assert await sent is None
    assert await funds_of(db, request.user) == []

    created = await request.retry_until_run(standby, conflicts=1)
    assert created.status_code == 201
    assert created.headers["idempotency-status"] == "created"
    [fund] = await funds_of(db, request.user)
    assert created.json()["id"] == str(fund["id"])
    replayed = await request.send(standby)
    assert replayed.headers["idempotency-status"] == "replayed"
    assert replayed.content == created.content
    assert len(await funds_of(db, request.user)) == 1


async def test_killed_while_recording_the_retry_creates_one_fund(
    example: Example, db: Any, postgres_dsn: str
) -> None:
    server = await example.start()
    standby = await example.start()
    request = create()
    # The claim is written before the INSERT waits: then its row is held and the INSERT let
    # go, so that the worker stops at the record's completion, its fund not committed.
    records = locked(
        postgres_dsn, "SELECT 1 FROM prodkit_idempotency WHERE status IS NULL FOR UPDATE"
    )
    async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
        await records.__aenter__()
    try:
        await until(lambda: waiting_on_a_lock(db, "UPDATE prodkit_idempotency"), "the record waits")
        kill(server)
    finally:
        await records.__aexit__(None, None, None)
    assert await sent is None
    await until(lambda: no_transaction_left(db), "the dead worker's transaction is gone")
    assert await funds_of(db, request.user) == []

    created = await request.retry_until_run(standby, conflicts=1)
    assert (created.status_code, created.headers["idempotency-status"]) == (201, "created")
    replayed = await request.send(standby)
    assert replayed.content == created.content
    assert len(await funds_of(db, request.user)) == 1


async def no_transaction_left(db: Any) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND state = 'idle in transaction'",
        APPLICATION,
    )
    return not count


async def test_killed_right_after_the_commit_the_retry_replays(
    example: Example, db: Any, postgres_dsn: str
) -> None:
    server = await example.start()
    request = create()
    async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
        pass
    await until(lambda: has_funds(db, request.user), "the fund is committed")
    server.signal(signal.SIGSTOP)  # the worker may or may not have answered yet
    kill(server)
    await sent  # answered or not: the outcome below is the same

    server = await example.start()
    replayed = await request.send(server)
    assert replayed.status_code == 201
    assert replayed.headers["idempotency-status"] == "replayed"
    [fund] = await funds_of(db, request.user)
    assert replayed.json()["id"] == str(fund["id"])


# -- PATCH /api/funds/{id} on the PostgreSQL store -----------------------------------------------


@pytest.mark.parametrize("point", ["before-the-commit", "after-the-commit"])
async def test_a_killed_patch_is_applied_once_and_replayed(
    example: Example, db: Any, postgres_dsn: str, point: str
) -> None:
    server = await example.start()
    creation = create()
    created = await creation.send(server)
    assert created.status_code == 201
    path = f"/api/funds/{created.json()['id']}"
    request = Keyed("PATCH", path, {"name": "Renamed Fund"}, user=creation.user)
    async with stopped_at(db, postgres_dsn, server, request, "UPDATE funds") as sent:
        if point == "before-the-commit":
            kill(server)
    if point == "after-the-commit":

        async def renamed() -> bool:
            return bool((await funds_of(db, request.user))[0]["name"] == "Renamed Fund")

        await until(renamed, "the rename is committed")
        kill(server)
    await sent
    [before] = await funds_of(db, request.user)
    assert before["name"] == ("Crash Fund" if point == "before-the-commit" else "Renamed Fund")

    server = await example.start()
    answer = await request.retry_until_run(server)
    assert answer.status_code == 200
    expected = "created" if point == "before-the-commit" else "replayed"
    assert answer.headers["idempotency-status"] == expected
    [after] = await funds_of(db, request.user)
    assert after["name"] == answer.json()["name"] == "Renamed Fund"
    # Applied once: the row's last update is the one the (replayed) response describes.
    assert answer.json()["updated_at"] == after["updated_at"].isoformat()
    again = await request.send(server)
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == answer.content


# -- stores that cannot join the transaction ---------------------------------------------------


async def test_with_redis_a_crash_between_commit_and_record_runs_again_after_the_lease(
    example: Example, db: Any, postgres_dsn: str
) -> None:
    port = free_port()
    with redis_server(port) as redis:
        example.env.update(
            {
                "IDEMPOTENCY_STORE": "redis",
                "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "REDIS_KEY_PREFIX": f"prodkit-test:{RUN_ID}:crash:",
            }
        )
        server = await example.start()
        standby = await example.start()
        request = create()
        async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
            redis.send_signal(signal.SIGSTOP)  # claimed in Redis; the record will wait
        try:
            await until(lambda: has_funds(db, request.user), "the fund is committed")
            kill(server)
        finally:
            redis.send_signal(signal.SIGCONT)
        await sent
        assert len(await funds_of(db, request.user)) == 1

        # The claim outlives the worker for the lease (409s), then the handler runs again.
        again = await request.retry_until_run(standby, conflicts=1)
        assert again.status_code == 201
        assert again.headers["idempotency-status"] == "created"
        assert len(await funds_of(db, request.user)) == 2


async def test_with_the_memory_store_a_restart_forgets_every_key(
    example: Example, db: Any, postgres_dsn: str
) -> None:
    example.env["IDEMPOTENCY_STORE"] = "memory"
    server = await example.start()
    request = create()
    async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
        pass
    await until(lambda: has_funds(db, request.user), "the fund is committed")
    kill(server)
    await sent

    server = await example.start()
    # The records died with the process: no 409, the retry runs the handler again at once.
    again = await request.send(server)
    assert (again.status_code, again.headers["idempotency-status"]) == (201, "created")
    assert len(await funds_of(db, request.user)) == 2
