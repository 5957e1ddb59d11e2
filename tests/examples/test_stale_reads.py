"""No read that starts after a write's commit gets the data from before it, whenever the writer dies.

Issue #21, item 3. The example runs as real processes on PostgreSQL (idempotency records in it)
with a Redis cache: a *reader* worker that stays up, and *writer* workers, each killed with
SIGKILL during a ``PATCH`` or ``DELETE`` of a fund the reader has cached. Half the kills come
at a random instant of the write; the other half right after its commit: the commit waits on
a PostgreSQL advisory lock (a deferred trigger, installed for the test), the writer is frozen
(SIGSTOP) while it waits, the lock is let go so the commit completes without the writer, and
the writer is killed. A client then retries the write, with the same ``Idempotency-Key``, on
the reader's worker.

Throughout, the reader reads the fund one request after another and records every answer. A
poller on PostgreSQL notes when the write's commit is first visible; every read that *started*
after that must answer the new state (the new name, or 404 for a deleted fund): the cache's
documented bound (``docs/caching.md``) is zero such reads.

CI runs ``STALE_READS_KILLS`` kills (default 8); the figures in the docs come from
``STALE_READS_KILLS=60 python -m pytest tests/examples/test_stale_reads.py``, which prints them.
A last case, in process, retries a ``DELETE`` whose first attempt committed: its 404 must drop
the cached fund too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from examples.funds.app import create_stack, create_starlette
from examples.funds.repository import InMemoryRepository
from prodkit import StackSettings
from tests.conftest import ClientFactory
from tests.servers import ServerProcess, free_port, run_server

asyncpg = pytest.importorskip("asyncpg")

KILLS = int(os.environ.get("STALE_READS_KILLS", "8"))
#: How long the reader keeps reading after a kill before the client retries the write (the
#: idempotency lease is shorter), and after the retry.
WATCH = 1.0
USERS = "stale-"  # the gate below only holds writes of this test's callers
#: The advisory lock the commit of a gated write waits on (an arbitrary constant).
GATE = 0x5354414C  # "STAL"
APPLICATION = "prodkit-funds"  # the example's pool names itself so
FUND: dict[str, Any] = {
    "name": "Stale Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}

GATE_SQL = f"""
CREATE OR REPLACE FUNCTION stale_reads_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({GATE});
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS stale_reads_gate ON funds;
CREATE CONSTRAINT TRIGGER stale_reads_gate AFTER UPDATE ON funds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.user_id LIKE '{USERS}%')
    EXECUTE FUNCTION stale_reads_gate();
"""


@dataclass
class Read:
    """One read of the fund: when it started, and what it answered."""

    started: float
    status: int
    name: str | None
    cache: str


@dataclass
class Round:
    """One killed write and what the reader saw around it."""

    kind: str  # "random" or "after-commit"
    method: str
    committed_at: float | None = None  # when the poller first saw the commit
    by_writer: bool = False  # the killed writer's commit, not the retry's
    reads: list[Read] = field(default_factory=list)

    def after_commit(self) -> list[Read]:
        """The reads that started after the commit was visible."""
        at = self.committed_at
        return [] if at is None else [read for read in self.reads if read.started > at]

    def stale(self) -> list[Read]:
        """Reads that started after the commit and answered the state from before it."""
        if self.method == "DELETE":
            return [read for read in self.after_commit() if read.status == 200]
        return [
            read for read in self.after_commit() if read.status == 200 and read.name == FUND["name"]
        ]


class Example:
    """The reader's worker, and writer workers started one after another."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.stack = contextlib.ExitStack()

    async def start(self) -> ServerProcess:
        port = free_port()
        args = ["examples.funds", "--port", str(port), "--workers", "1"]
        server = self.stack.enter_context(
            run_server(args, port=port, tmp_path=self.tmp_path, env=self.env)
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            for _ in range(200):  # bounded: 20 s
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return server
                await asyncio.sleep(0.1)
        raise AssertionError(f"the example did not become ready:\n{server.output()}")

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def example(
    postgres_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[Example]:
    env = {
        "DATABASE_URL": postgres_dsn,
        "IDEMPOTENCY_STORE": "postgres",
        "IDEMPOTENCY_LEASE_SECONDS": "1",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "RATE_LIMIT": "1000/second",
        "LOG_LEVEL": "WARNING",
    }
    made = Example(env, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def db(postgres_dsn: str, example: Example) -> AsyncIterator[Any]:
    """A connection to the example's database; the test's gate is dropped afterwards."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("DROP TRIGGER IF EXISTS stale_reads_gate ON funds")
        await conn.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str, polls: int = 400) -> None:
    for _ in range(polls):  # bounded: polls x 25 ms
        if await condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting until {what}")


async def committed(db: Any, method: str, fund_id: str, new_name: str) -> bool:
    row = await db.fetchrow("SELECT name, deleted_at FROM funds WHERE id = $1", uuid.UUID(fund_id))
    if method == "DELETE":
        return row["deleted_at"] is not None
    return bool(row["name"] == new_name)


async def waiting_at_the_gate(db: Any) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database() AND wait_event_type = 'Lock'"
        " AND wait_event = 'advisory'",
        APPLICATION,
    )
    return bool(count)


def kill(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    server.wait(timeout=10)


async def read_until_stopped(
    reader: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    round_: Round,
    stop: asyncio.Event,
) -> None:
    """Read ``path`` one request after another until ``stop``, recording every answer."""
    while not stop.is_set():
        started = time.monotonic()
        response = await reader.get(path, headers=headers)
        name = response.json().get("name") if response.status_code == 200 else None
        round_.reads.append(
            Read(started, response.status_code, name, response.headers.get("x-cache", ""))
        )


async def watch_commit(
    dsn: str, method: str, fund_id: str, new_name: str, round_: Round, stop: asyncio.Event
) -> None:
    """Note when the write's commit is first visible (a few milliseconds late at most)."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            if await committed(conn, method, fund_id, new_name):
                round_.committed_at = time.monotonic()
                return
            await asyncio.sleep(0.002)
    finally:
        await conn.close()


async def cached_fund(reader: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """A new fund of the caller's, read through the reader until it is a cache hit; its path."""
    created = await reader.post("/api/funds", json=FUND, headers=headers)
    assert created.status_code == 201, created.text
    path = f"/api/funds/{created.json()['id']}"
    for _ in range(50):  # bounded: the entry is stored just after the first read's answer
        if (await reader.get(path, headers=headers)).headers.get("x-cache") == "HIT":
            return path
        await asyncio.sleep(0.02)
    raise AssertionError("the fund was never served from the cache")


async def one_round(
    example: Example,
    writer: ServerProcess,
    survivor: ServerProcess,
    reader: httpx.AsyncClient,
    db: Any,
    kind: str,
    method: str,
) -> Round:
    """Write the fund on ``writer`` and kill it (``kind``: at a random instant, or right after
    the commit); retry on the ``survivor``."""
    user = f"{USERS}{uuid.uuid4().hex[:10]}"
    headers = {"X-User-Id": user}
    path = await cached_fund(reader, headers)
    fund_id = path.rsplit("/", 1)[-1]
    new_name = f"Renamed {uuid.uuid4().hex[:6]}"
    body = {"name": new_name} if method == "PATCH" else None
    keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    round_ = Round(kind, method)
    stop = asyncio.Event()
    reading = asyncio.create_task(read_until_stopped(reader, path, headers, round_, stop))
    dsn = example.env["DATABASE_URL"]
    watching = asyncio.create_task(watch_commit(dsn, method, fund_id, new_name, round_, stop))
    await asyncio.sleep(0.05)  # reads before the write, too

    async def write(client: httpx.AsyncClient) -> httpx.Response | None:
        with contextlib.suppress(httpx.TransportError):
            return await client.request(method, path, json=body, headers=keyed)
        return None

    # The client is made first (it builds an SSL context, which takes milliseconds), so that
    # the request goes out as soon as it is sent.
    async with httpx.AsyncClient(base_url=writer.base_url, timeout=30) as client:
        if kind == "after-commit":
            gate = await asyncpg.connect(dsn)
            try:
                await gate.execute("SELECT pg_advisory_lock($1)", GATE)
                sent = asyncio.create_task(write(client))
                await until(lambda: waiting_at_the_gate(db), "the write's commit waits at the gate")
                writer.signal(signal.SIGSTOP)  # it cannot run a line past its commit
                await gate.execute("SELECT pg_advisory_unlock($1)", GATE)
                await until(lambda: committed(db, method, fund_id, new_name), "the commit")
                kill(writer)
            finally:
                await gate.close()
        else:
            # Within as long as the writer took for the same request just before: some kills
            # come before the write reached the database, some after its commit.
            window = await write_duration(client)
            sent = asyncio.create_task(write(client))
            await asyncio.sleep(random.uniform(0, window))
            kill(writer)
        await sent
    await asyncio.sleep(WATCH)
    round_.by_writer = round_.committed_at is not None
    # The client retries on the surviving worker: replayed, run again, or a 404 for a DELETE
    # that had committed; 409 while the dead writer's claim lasts.
    async with httpx.AsyncClient(base_url=survivor.base_url, timeout=30) as client:
        retried = await write(client)
        for _ in range(100):  # bounded: the lease is 1 s
            if retried is None or retried.status_code != 409:
                break
            await asyncio.sleep(0.1)
            retried = await write(client)
    assert retried is not None
    assert retried.status_code in (200, 204, 404), retried.text
    await until(lambda: committed(db, method, fund_id, new_name), "the write is applied")
    await asyncio.sleep(WATCH / 3)
    stop.set()
    await asyncio.gather(reading, watching)
    return round_


@pytest.mark.server
@pytest.mark.postgres
@pytest.mark.redis
async def test_no_read_after_the_commit_gets_the_old_fund_whenever_the_writer_dies(
    example: Example, db: Any, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    reader_server = await example.start()
    await db.execute(GATE_SQL)
    rounds: list[Round] = []
    stale: list[tuple[Round, Read]] = []
    async with httpx.AsyncClient(base_url=reader_server.base_url, timeout=30) as reader:
        next_writer = asyncio.create_task(example.start())
        for index in range(KILLS):
            writer = await next_writer
            if index + 1 < KILLS:  # the next writer starts while this round runs
                next_writer = asyncio.create_task(example.start())
            kind = "after-commit" if index % 2 else "random"
            method = "DELETE" if index % 4 in (2, 3) else "PATCH"
            round_ = await one_round(example, writer, reader_server, reader, db, kind, method)
            rounds.append(round_)
            stale += [(round_, read) for read in round_.stale()]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():  # the figures docs/caching.md reports
            reporter.write_line(summary(rounds, stale))
    assert all(round_.committed_at is not None for round_ in rounds)
    assert any(round_.after_commit() for round_ in rounds)
    assert stale == [], summary(rounds, stale)


async def write_duration(client: httpx.AsyncClient) -> float:
    """Seconds a keyed ``PATCH`` takes, from sending to the answer, on a warm worker."""
    headers = {"X-User-Id": f"{USERS}{uuid.uuid4().hex[:10]}"}
    created = await client.post("/api/funds", json=FUND, headers=headers)
    path = f"/api/funds/{created.json()['id']}"
    started = time.monotonic()
    keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    patched = await client.patch(path, json={"name": "Timed"}, headers=keyed)
    assert patched.status_code == 200
    return time.monotonic() - started


def summary(rounds: list[Round], stale: list[tuple[Round, Read]]) -> str:
    """The run in one line: kills, reads after a commit, stale ones and how late the last was."""
    random_kills = [round_ for round_ in rounds if round_.kind == "random"]
    line = (
        f"stale reads: {len(rounds)} kills ({len(random_kills)} at a random instant, of which "
        f"{sum(round_.by_writer for round_ in random_kills)} after the writer's commit; "
        f"{len(rounds) - len(random_kills)} right after the commit), "
        f"{sum(len(round_.after_commit()) for round_ in rounds)} reads started after a "
        f"commit, {len(stale)} of them stale"
    )
    if stale:
        late = max(read.started - (round_.committed_at or 0) for round_, read in stale)
        kinds = sorted({f"{round_.kind} {round_.method}" for round_, _ in stale})
        served = sorted({read.cache for _, read in stale})
        line += (
            f", the last {late:.2f} s after the commit ({', '.join(kinds)};"
            f" X-Cache {', '.join(served)})"
        )
    return line


async def test_a_delete_retried_after_its_first_attempt_committed_invalidates(
    make_client: ClientFactory,
) -> None:
    # In process: the first DELETE committed and its worker died before the cache heard of
    # it; the client's retry finds no fund (404) and must still drop the cached one.
    repository = InMemoryRepository()
    settings = StackSettings()
    app = create_stack(settings, registry=CollectorRegistry()).build(
        create_starlette(settings, repository)
    )
    client = make_client(app)
    caller = {"X-User-Id": f"{USERS}{uuid.uuid4().hex[:10]}"}
    fund = (await client.post("/api/funds", json=FUND, headers=caller)).json()
    path = f"/api/funds/{fund['id']}"
    await client.get(path, headers=caller)
    assert (await client.get(path, headers=caller)).headers["x-cache"] == "HIT"
    assert await repository.delete(caller["X-User-Id"], fund["id"])  # the dead worker's commit
    retried = await client.delete(path, headers={**caller, "Idempotency-Key": uuid.uuid4().hex})
    assert retried.status_code == 404
    assert (await client.get(path, headers=caller)).status_code == 404  # not the cached 200
