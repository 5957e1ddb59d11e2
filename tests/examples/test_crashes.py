"""Exactly once through crashes: the example's worker killed at each point of a keyed write.

Issues #15 and #21. The example runs as a real process (``python -m examples.funds``, one
worker) on PostgreSQL with a 2-second idempotency lease. The test holds PostgreSQL locks to stop
the worker at a chosen point (before its write commits, before the record is written, during the
commit, right after it), kills it with SIGKILL (freezing it first with SIGSTOP where timing
matters), starts a new one and retries with the same key. What it asserts is what a client and
an operator see: the fund rows, the retry's status, ``Idempotency-Status`` and body.

With the PostgreSQL store the record commits in the handler's transaction, so every crash
leaves one fund and a replay. With Redis the record goes out while the commit is in flight
(``IdempotencyClaim.complete_during``): a worker killed during the commit leaves both. What
remains is documented (``docs/idempotency.md``) and tested here: a record that cannot reach
Redis when the work commits runs the handler again once the lease ends (409 until then); a
bounded run of random kills stays under the documented bound; with the memory store a restart
runs it again at once (the records died with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.examples.kills import Example, Keyed, create, kill_at_random
from tests.servers import ServerProcess
from tests.servers.proxy import TcpProxy

asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.server

LEASE = 2.0
#: The example's pool names itself so (examples/funds/postgres.py).
APPLICATION = "prodkit-funds"


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

    created = await request.retry_until_run(standby, lease=LEASE, conflicts=1)
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

    created = await request.retry_until_run(standby, lease=LEASE, conflicts=1)
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
    answer = await request.retry_until_run(server, lease=LEASE)
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


@pytest.fixture
def redis_store(example: Example, redis_url: str, redis_prefix: str) -> str:
    """The example on the Redis idempotency store (the shared server, a fresh prefix)."""
    example.env.update(
        {"IDEMPOTENCY_STORE": "redis", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    )
    return redis_url


#: Advisory lock that every commit of ``funds`` waits for while a test holds it.
COMMIT_GATE = 7022


@contextlib.asynccontextmanager
async def commits_held(db: Any, dsn: str) -> AsyncIterator[None]:
    """Every commit of ``funds`` waits, server-side, until the block ends: a deferred trigger
    (installed for the block) takes a shared advisory lock that the block holds."""
    await db.execute(
        f"""
        CREATE FUNCTION crash_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({COMMIT_GATE}); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER crash_commit_gate AFTER INSERT ON funds
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION crash_commit_gate();
        """
    )
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", COMMIT_GATE)
        yield
    finally:
        await holder.close()  # the lock goes with the session
        await db.execute(
            "DROP TRIGGER IF EXISTS crash_commit_gate ON funds;"
            " DROP FUNCTION IF EXISTS crash_commit_gate()"
        )


async def commit_waits(db: Any) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE 'COMMIT%'",
        APPLICATION,
    )
    return bool(count)


async def test_with_redis_a_worker_killed_while_its_commit_runs_leaves_the_record(
    example: Example, db: Any, postgres_dsn: str, redis_store: str
) -> None:
    # Issue #21, item 10: the record was written after the commit returned, so a worker
    # killed during the commit (its WAL flush, its round trip) left the fund without its
    # record, and the retry created the fund again once the lease was over.
    server = await example.start()
    standby = await example.start()
    request = create()
    async with commits_held(db, postgres_dsn):
        sent = request.in_flight(server)
        await until(lambda: commit_waits(db), "the worker's commit waits")
        kill(server)
    assert await sent is None
    await until(lambda: has_funds(db, request.user), "the dead worker's commit is done")

    # The record went out with the commit: the retry replays it, at once.
    replayed = await request.retry_until_run(standby, lease=LEASE)
    assert (replayed.status_code, replayed.headers["idempotency-status"]) == (201, "replayed")
    [fund] = await funds_of(db, request.user)
    assert replayed.json()["id"] == str(fund["id"])


async def test_with_redis_unreachable_at_the_commit_a_crash_runs_again_after_the_lease(
    example: Example, db: Any, postgres_dsn: str, redis_store: str
) -> None:
    # The limit that remains: a record that cannot reach Redis when the work commits.
    target = urlsplit(redis_store)
    with TcpProxy((target.hostname or "127.0.0.1", target.port or 6379)) as proxy:
        example.env["REDIS_URL"] = proxy.dsn(redis_store)
        server = await example.start()
        standby = await example.start()
        request = create()
        async with stopped_at(db, postgres_dsn, server, request, "INSERT INTO funds") as sent:
            proxy.cut()  # claimed in Redis; the record will not get there
            proxy.reset()
        await until(lambda: has_funds(db, request.user), "the fund is committed")
        kill(server)
        await sent
        proxy.restore()
        assert len(await funds_of(db, request.user)) == 1

        # The claim outlives the worker for the lease (409s), then the handler runs again.
        again = await request.retry_until_run(standby, lease=LEASE, conflicts=1)
        assert (again.status_code, again.headers["idempotency-status"]) == (201, "created")
        assert len(await funds_of(db, request.user)) == 2


#: Kills of the bounded run in CI, and the most double runs it accepts: docs/idempotency.md
#: gives the rates measured over 60 kills with ``python -m benchmarks.crashes`` (a few in a
#: hundred; before the record went out with the commit, one in six).
RANDOM_KILLS = 12
MOST_DOUBLE_RUNS = 3


async def test_with_redis_random_kills_rarely_run_a_handler_twice(
    example: Example, db: Any, redis_store: str
) -> None:
    example.env["IDEMPOTENCY_LEASE_SECONDS"] = "1"
    example.env["LOG_LEVEL"] = "ERROR"

    async def count(user: str) -> int:
        return len(await funds_of(db, user))

    tally = await kill_at_random(
        example, count, kills=RANDOM_KILLS, lease=1.0, rng=random.Random(RANDOM_KILLS)
    )
    print(tally.line())  # noqa: T201 - the figures, for the log of the run
    assert tally.kills == RANDOM_KILLS
    assert tally.replayed >= 1, "no kill came after a commit: the run proves nothing"
    assert tally.ran_twice <= MOST_DOUBLE_RUNS, tally.line()


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
