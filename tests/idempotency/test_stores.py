"""One contract for every idempotency store: memory always, PostgreSQL and Redis for real (one
Redis server, a Redis Cluster and a Sentinel group).

Time is moved with the memory store's clock and the network stores' ``clock_offset``; the
stateful test moves it in steps of 10 s, so the few real milliseconds a step takes never
change an outcome.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import CollectorRegistry

from prodkit import IdempotencyMiddleware
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit.asgi import Receive, Scope, Send
from prodkit.idempotency import (
    ClaimOutcome,
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
    WithdrawingIdempotencyStore,
    schema_sql,
)
from prodkit.testing import capture_logs
from tests.conftest import REDIS_TOPOLOGIES, redis_topology_url

BACKENDS = (
    "memory",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("redis", marks=pytest.mark.redis),
    *REDIS_TOPOLOGIES,
)
RESPONSE = StoredResponse(
    201,
    ((b"content-type", b"application/json"), (b"location", b"/api/funds/\xe9")),
    b'{"id": 1}\x00\xff',
)


class FakeClock:
    """A settable monotonic clock for the memory store."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A store plus a way to move its clock forward."""

    store: Any
    advance: Callable[[float], None]
    close: Callable[[], Any] = field(default=lambda: None)


def resolve(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The service fixtures a backend needs (requested synchronously, outside any event loop)."""
    if backend == "postgres":
        return {"dsn": request.getfixturevalue("postgres_dsn")}
    if backend == "redis":
        return {
            "url": request.getfixturevalue("redis_url"),
            "prefix": request.getfixturevalue("redis_prefix"),
        }
    if backend.startswith("redis-"):
        url = redis_topology_url(request, backend)
        return {"url": url, "prefix": f"prodkit-test:{uuid.uuid4().hex}:"}
    return {}


async def build(backend: str, config: dict[str, str]) -> Harness:
    if backend == "memory":
        clock = FakeClock()

        def move(seconds: float) -> None:
            clock.now += seconds

        return Harness(MemoryIdempotencyStore(clock=clock), move)
    if backend == "postgres":
        pg = PostgresIdempotencyStore(config["dsn"], pool_options={"min_size": 1, "max_size": 4})
        await pg.ensure_schema()

        def move_pg(seconds: float) -> None:
            pg.clock_offset += seconds

        return Harness(pg, move_pg, pg.aclose)
    rd = RedisIdempotencyStore.from_url(config["url"], key_prefix=config["prefix"])

    def move_rd(seconds: float) -> None:
        rd.clock_offset += seconds

    return Harness(rd, move_rd, rd.aclose)


@pytest.fixture(params=BACKENDS)
def backend_config(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """Each backend with its service fixtures."""
    backend = str(request.param)
    return backend, resolve(backend, request)


@pytest.fixture
async def harness(backend_config: tuple[str, dict[str, str]]) -> AsyncIterator[Harness]:
    made = await build(*backend_config)
    yield made
    result = made.close()
    if asyncio.iscoroutine(result):
        await result


def new_key() -> str:
    return uuid.uuid4().hex


async def test_stores_satisfy_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.store, IdempotencyStore)
    assert isinstance(harness.store, WithdrawingIdempotencyStore)


async def test_first_claim_acquires_and_a_duplicate_is_in_progress(harness: Harness) -> None:
    store, key = harness.store, new_key()
    assert (await store.claim(key, b"fp", "a", lease=30, ttl=600)).outcome is ClaimOutcome.ACQUIRED
    second = await store.claim(key, b"fp", "b", lease=30, ttl=600)
    assert second.outcome is ClaimOutcome.IN_PROGRESS
    assert second.retry_after is not None
    assert 0 < second.retry_after <= 30
    record = await store.get(key)
    assert record is not None
    assert record.owner == "a"
    assert not record.completed


async def test_different_fingerprint_is_a_mismatch_and_changes_nothing(harness: Harness) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"fp", "a", lease=30, ttl=600)
    assert (await store.claim(key, b"other", "b", lease=30, ttl=600)).outcome is (
        ClaimOutcome.MISMATCH
    )
    assert await store.complete(key, "a", RESPONSE, ttl=600)
    assert (await store.claim(key, b"other", "c", lease=30, ttl=600)).outcome is (
        ClaimOutcome.MISMATCH
    )
    record = await store.get(key)
    assert record is not None
    assert record.fingerprint == b"fp"
    assert record.response == RESPONSE


async def test_complete_then_replay_round_trips_bytes(harness: Harness) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"\x00fp\xff", "a", lease=30, ttl=600)
    assert await store.complete(key, "a", RESPONSE, ttl=600)
    replay = await store.claim(key, b"\x00fp\xff", "b", lease=30, ttl=600)
    assert replay.outcome is ClaimOutcome.COMPLETED
    assert replay.response == RESPONSE
    assert not await store.complete(key, "a", RESPONSE, ttl=600)  # already completed


async def test_only_the_owner_completes_or_releases(harness: Harness) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"fp", "a", lease=30, ttl=600)
    assert not await store.complete(key, "intruder", RESPONSE, ttl=600)
    assert not await store.release(key, "intruder")
    assert await store.release(key, "a")
    assert await store.get(key) is None
    assert (await store.claim(key, b"fp", "b", lease=30, ttl=600)).outcome is (
        ClaimOutcome.ACQUIRED
    )


async def test_only_the_completing_owner_withdraws_a_record(harness: Harness) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"fp", "a", lease=30, ttl=600)
    assert not await store.withdraw(key, "a")  # in progress: a release's job, not this
    assert await store.complete(key, "a", RESPONSE, ttl=600)
    record = await store.get(key)
    assert record is not None
    assert record.owner is None  # completed: no owner to show
    assert not await store.withdraw(key, "intruder")
    assert await store.withdraw(key, "a")
    assert await store.get(key) is None
    assert not await store.withdraw(key, "a")
    assert (await store.claim(key, b"fp", "b", lease=30, ttl=600)).outcome is (
        ClaimOutcome.ACQUIRED
    )


async def test_a_tentative_record_is_in_progress_until_confirmed(harness: Harness) -> None:
    store, key = harness.store, new_key()
    assert isinstance(store, WithdrawingIdempotencyStore)
    await store.claim(key, b"fp", "a", lease=30, ttl=600)
    assert await store.complete_tentatively(key, "a", RESPONSE, ttl=600)
    # The work's commit is still running: a retry waits, as for a claim.
    retry = await store.claim(key, b"fp", "b", lease=30, ttl=600)
    assert retry.outcome is ClaimOutcome.IN_PROGRESS
    assert retry.retry_after is not None
    assert 0 < retry.retry_after <= 30
    record = await store.get(key)
    assert record is not None
    assert (record.owner, record.tentative, record.completed) == ("a", True, False)
    assert not await store.complete(key, "a", RESPONSE, ttl=600)  # written already
    assert not await store.release(key, "a")  # the commit may have landed: not a release
    assert not await store.confirm(key, "intruder")
    assert await store.confirm(key, "a")
    assert not await store.confirm(key, "a")  # final already
    replay = await store.claim(key, b"fp", "c", lease=30, ttl=600)
    assert replay.outcome is ClaimOutcome.COMPLETED
    assert replay.response == RESPONSE


async def test_a_tentative_record_is_withdrawn_or_replayed_once_its_lease_is_over(
    harness: Harness,
) -> None:
    store, withdrawn, crashed = harness.store, new_key(), new_key()
    assert isinstance(store, WithdrawingIdempotencyStore)
    for key in (withdrawn, crashed):
        await store.claim(key, b"fp", "a", lease=10, ttl=600)
        assert await store.complete_tentatively(key, "a", RESPONSE, ttl=600)
    # The commit failed: the record goes, and a retry runs the handler.
    assert not await store.withdraw(withdrawn, "intruder")
    assert await store.withdraw(withdrawn, "a")
    assert (await store.claim(withdrawn, b"fp", "b", lease=10, ttl=600)).outcome is (
        ClaimOutcome.ACQUIRED
    )
    # Nobody confirmed (the process died after its commit): replayed once the lease is over.
    harness.advance(20)
    replay = await store.claim(crashed, b"fp", "c", lease=10, ttl=600)
    assert replay.outcome is ClaimOutcome.COMPLETED
    assert replay.response == RESPONSE
    record = await store.get(crashed)
    assert record is not None
    assert (record.owner, record.tentative, record.completed) == (None, False, True)


async def test_expired_lease_is_taken_over_and_the_old_owner_cannot_write(
    harness: Harness,
) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"fp", "crashed", lease=10, ttl=600)
    harness.advance(20)
    assert (await store.claim(key, b"other", "x", lease=10, ttl=600)).outcome is (
        ClaimOutcome.MISMATCH
    )
    assert (await store.claim(key, b"fp", "retry", lease=10, ttl=600)).outcome is (
        ClaimOutcome.ACQUIRED
    )
    assert not await store.complete(key, "crashed", RESPONSE, ttl=600)
    assert not await store.release(key, "crashed")
    assert await store.complete(key, "retry", RESPONSE, ttl=600)


async def test_expired_record_is_replaced_in_the_claim(harness: Harness) -> None:
    store, key = harness.store, new_key()
    await store.claim(key, b"fp", "a", lease=10, ttl=100)
    await store.complete(key, "a", RESPONSE, ttl=100)
    harness.advance(110)
    assert await store.get(key) is None
    assert (await store.claim(key, b"new", "b", lease=10, ttl=100)).outcome is (
        ClaimOutcome.ACQUIRED
    )


async def test_concurrent_claims_have_exactly_one_winner(harness: Harness) -> None:
    store, key = harness.store, new_key()
    results = await asyncio.gather(
        *(store.claim(key, b"fp", f"owner-{i}", lease=30, ttl=600) for i in range(20))
    )
    outcomes = [r.outcome for r in results]
    assert outcomes.count(ClaimOutcome.ACQUIRED) == 1
    assert outcomes.count(ClaimOutcome.IN_PROGRESS) == 19


async def test_memory_store_is_bounded_and_never_evicts_a_claim() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=2, clock=clock)
    await store.claim("done", b"fp", "a", lease=10, ttl=100)
    await store.complete("done", "a", RESPONSE, ttl=100)
    await store.claim("running", b"fp", "b", lease=10, ttl=100)
    await store.claim("third", b"fp", "c", lease=10, ttl=100)  # evicts "done"
    assert len(store) == 2
    assert await store.get("done") is None
    assert (await store.get("running")) is not None
    with pytest.raises(BackendError, match="full"):
        await store.claim("fourth", b"fp", "d", lease=10, ttl=100)
    with pytest.raises(ConfigurationError):
        MemoryIdempotencyStore(max_entries=0)


@pytest.mark.postgres
async def test_postgres_schema_cleanup_and_expiry_index(
    request: pytest.FixtureRequest, postgres_dsn: str
) -> None:
    import asyncpg

    table = f"idem_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(postgres_dsn, table=table)
    try:
        await store.ensure_schema()
        await store.migrate()  # idempotent
        for index in range(5):
            await store.claim(f"k{index}", b"fp", "o", lease=1, ttl=10)
        store.clock_offset = 20
        await store.claim("fresh", b"fp", "o", lease=1, ttl=60)
        assert await store.cleanup(batch_size=2) == 5
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1  # noqa: S608
            indexes = await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE tablename = $1", table
            )
            assert any("(expires_at)" in row["indexdef"] for row in indexes)
        finally:
            await conn.close()
    finally:
        await store.aclose()


async def rows_in(dsn: str, table: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_store_deletes_expired_records_by_itself(postgres_dsn: str) -> None:
    # Issue #21, item 8: nothing called cleanup(), so expired rows stayed forever. The store
    # now sweeps on its own, started by its first use; a short interval here.
    registry = CollectorRegistry()
    table = f"idem_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(
        postgres_dsn, table=table, cleanup_interval=0.2, cleanup_batch_size=2, registry=registry
    )
    try:
        await store.ensure_schema()
        for index in range(5):
            await store.claim(f"old-{index}", b"fp", "o", lease=0.1, ttl=0.1)
        for index in range(3):
            await store.claim(f"live-{index}", b"fp", "o", lease=30, ttl=600)
        for _ in range(100):  # bounded: 10 s
            if await rows_in(postgres_dsn, table) == 3:
                break
            await asyncio.sleep(0.1)
        assert await rows_in(postgres_dsn, table) == 3
        for index in range(3):
            assert await store.get(f"live-{index}") is not None
        removed = registry.get_sample_value("prodkit_idempotency_records_removed_total")
        assert removed == 5
    finally:
        await store.aclose()


class PoolOfTheLoop:
    """A pool for whichever event loop calls it: one asyncpg connection per call."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        asyncpg = pytest.importorskip("asyncpg")
        conn = await asyncpg.connect(self.dsn)
        try:
            return await getattr(conn, method)(sql, *args)
        finally:
            await conn.close()

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._call("execute", sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchrow", sql, *args)


@pytest.mark.postgres
def test_postgres_store_sweeps_in_every_event_loop_it_serves(postgres_dsn: str) -> None:
    # The sweeper started only once: after the first loop (start-up, migrations) ended, no
    # sweep ran again, silently.
    table = f"idem_{uuid.uuid4().hex[:8]}"
    pool = PoolOfTheLoop(postgres_dsn)
    store = PostgresIdempotencyStore(
        pool, table=table, cleanup_interval=0.1, registry=CollectorRegistry()
    )

    async def start_up() -> None:
        await pool.execute(schema_sql(table))
        assert await store.get("k") is None  # the first use starts the sweeps, in this loop

    async def serve() -> int:
        try:
            await store.claim("old", b"fp", "o", lease=0.1, ttl=0.1)
            for _ in range(100):  # bounded: 10 s
                if await rows_in(postgres_dsn, table) == 0:
                    break
                await asyncio.sleep(0.1)
            return await rows_in(postgres_dsn, table)
        finally:
            await store.aclose()

    asyncio.run(start_up())
    assert asyncio.run(serve()) == 0


def test_postgres_store_sweeps_by_default() -> None:
    pytest.importorskip("asyncpg")
    assert PostgresIdempotencyStore("postgresql://db/app").cleanup_interval == 60
    assert (
        PostgresIdempotencyStore("postgresql://db/app", cleanup_interval=None).cleanup_interval
        is None
    )
    with pytest.raises(ConfigurationError, match="cleanup_interval"):
        PostgresIdempotencyStore("postgresql://db/app", cleanup_interval=0)
    with pytest.raises(ConfigurationError, match="cleanup_batch_size"):
        PostgresIdempotencyStore("postgresql://db/app", cleanup_batch_size=0)


@pytest.mark.postgres
async def test_postgres_store_sweeps_stop_at_aclose(postgres_dsn: str) -> None:
    table = f"idem_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(
        postgres_dsn, table=table, cleanup_interval=0.1, registry=CollectorRegistry()
    )
    await store.ensure_schema()
    await store.aclose()
    await asyncio.sleep(0.3)  # a sweep would have run by now, on a closed pool
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "prodkit-idempotency-cleanup"]


@pytest.mark.postgres
async def test_a_missing_table_says_which_call_creates_it(postgres_dsn: str) -> None:
    # Issue #22, item 6: without ensure_schema() the store failed with PostgreSQL's bare
    # 'relation "…" does not exist'.
    table = f"idem_missing_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(postgres_dsn, table=table, registry=CollectorRegistry())
    try:
        with pytest.raises(BackendError) as raised:
            await store.claim("k", b"fp", "o", lease=1, ttl=2)
        message = str(raised.value)
        assert f"the table {table} does not exist" in message
        assert "await store.ensure_schema()" in message

        # What an operator sees: a 503 for the client, the hint in the log line.
        app = IdempotencyMiddleware(ok_app, store=store, registry=CollectorRegistry())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with capture_logs() as logs:
                response = await client.post(
                    "/", headers={"Idempotency-Key": "k1", "Authorization": "Bearer alice"}
                )
        assert response.status_code == 503
        assert response.json()["code"] == "IDEMPOTENCY_STORE_UNAVAILABLE"
        [line] = [e for e in logs if e["event"] == "idempotency store unavailable"]
        assert "await store.ensure_schema()" in line["error"]
        assert table in line["error"]
    finally:
        await store.aclose()


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"made"})


@pytest.mark.postgres
async def test_postgres_works_with_statement_cache_off_pool(postgres_dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(postgres_dsn, statement_cache_size=0, min_size=1, max_size=2)
    try:
        store = PostgresIdempotencyStore(pool)
        await store.ensure_schema()
        key = new_key()
        assert (await store.claim(key, b"fp", "a", lease=5, ttl=60)).outcome is (
            ClaimOutcome.ACQUIRED
        )
        assert await store.complete(key, "a", RESPONSE, ttl=60)
    finally:
        await pool.close()


def test_schema_sql_rejects_unsafe_table_names() -> None:
    assert "CREATE TABLE IF NOT EXISTS app.idem" in schema_sql("app.idem")
    with pytest.raises(ConfigurationError):
        schema_sql("idem; DROP TABLE funds")


@pytest.mark.redis
async def test_redis_keys_carry_a_hash_tag_and_a_ttl(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    store = RedisIdempotencyStore.from_url(redis_url, key_prefix=redis_prefix)
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        key = new_key()
        await store.claim(key, b"fp", "a", lease=5, ttl=60)
        redis_key = store.redis_key(key)
        assert redis_key == f"{redis_prefix}{{{key}}}"
        assert 0 < await client.pttl(redis_key) <= 60_000
        await store.complete(key, "a", RESPONSE, ttl=120)
        assert 60_000 < await client.pttl(redis_key) <= 120_000
    finally:
        await client.aclose()
        await store.aclose()
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisIdempotencyStore(redis_asyncio.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ConfigurationError, match=r"RedisIdempotencyStore\.from_url\(url\)"):
        RedisIdempotencyStore(redis_url)


async def test_unreachable_stores_raise_backend_error() -> None:
    pytest.importorskip("asyncpg")
    pg = PostgresIdempotencyStore(
        "postgresql://nobody@127.0.0.1:1/none", pool_options={"timeout": 1}
    )
    with pytest.raises(BackendError):
        await pg.claim("k", b"fp", "o", lease=1, ttl=2)
    rd = RedisIdempotencyStore.from_url("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BackendError):
            await rd.claim("k", b"fp", "o", lease=1, ttl=2)
    finally:
        await rd.aclose()


# -- stateful contract -----------------------------------------------------------------------


@dataclass
class ModelEntry:
    fingerprint: bytes
    owner: str  # the claim's token, kept once completed (it alone may withdraw the record)
    lease_until: float
    expires_at: float
    response: StoredResponse | None = None
    tentative: bool = False

    def pending(self, now: float) -> bool:
        """In progress, or tentative with its lease running: a claim gets IN_PROGRESS."""
        return self.response is None or (self.tentative and self.lease_until > now)


class StoreMachine(RuleBasedStateMachine):
    """Claims, completions, releases and time against a dict model of the contract."""

    backend = "memory"
    config: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.harness = self.runner.run(build(self.backend, self.config))
        self.prefix = uuid.uuid4().hex[:8]
        self.now = 0.0
        self.model: dict[str, ModelEntry] = {}
        self.owners: list[str] = []

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def key(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def live(self, key: str) -> ModelEntry | None:
        entry = self.model.get(key)
        if entry is not None and entry.expires_at <= self.now:
            del self.model[key]
            return None
        return entry

    @initialize()
    def start(self) -> None:
        self.owners.append("never-claimed")

    @rule(
        index=st.integers(0, 1),
        fp=st.sampled_from([b"fp-a", b"fp-b"]),
        lease=st.sampled_from([10.0, 100.0]),
        ttl=st.sampled_from([200.0, 1000.0]),
    )
    def claim(self, index: int, fp: bytes, lease: float, ttl: float) -> None:
        key = self.key(index)
        owner = uuid.uuid4().hex
        result = self.run(self.harness.store.claim(key, fp, owner, lease=lease, ttl=ttl))
        entry = self.live(key)
        if entry is not None and entry.fingerprint != fp:
            assert result.outcome is ClaimOutcome.MISMATCH
        elif entry is not None and not entry.pending(self.now):
            assert result.outcome is ClaimOutcome.COMPLETED
            assert result.response == entry.response
        elif entry is not None and entry.lease_until > self.now:
            assert result.outcome is ClaimOutcome.IN_PROGRESS
            assert result.retry_after is not None
            assert 0 < result.retry_after <= entry.lease_until - self.now
        else:
            assert result.outcome is ClaimOutcome.ACQUIRED
            self.model[key] = ModelEntry(fp, owner, self.now + lease, self.now + ttl)
            self.owners.append(owner)

    @rule(
        index=st.integers(0, 1),
        owner_index=st.integers(0, 20),
        status=st.sampled_from([200, 201, 409]),
        ttl=st.sampled_from([200.0, 1000.0]),
        tentative=st.booleans(),
    )
    def complete(
        self, index: int, owner_index: int, status: int, ttl: float, tentative: bool
    ) -> None:
        key = self.key(index)
        owner = self.owners[owner_index % len(self.owners)]
        response = StoredResponse(status, ((b"content-type", b"text/plain"),), f"{owner}".encode())
        store = self.harness.store
        assert isinstance(store, WithdrawingIdempotencyStore)
        write = store.complete_tentatively if tentative else store.complete
        done = self.run(write(key, owner, response, ttl=ttl))
        entry = self.live(key)
        expected = entry is not None and entry.response is None and entry.owner == owner
        assert done is expected
        if entry is not None and expected:
            entry.response = response
            entry.tentative = tentative
            entry.expires_at = self.now + ttl

    @rule(index=st.integers(0, 1), owner_index=st.integers(0, 20))
    def confirm(self, index: int, owner_index: int) -> None:
        key = self.key(index)
        owner = self.owners[owner_index % len(self.owners)]
        store = self.harness.store
        assert isinstance(store, WithdrawingIdempotencyStore)
        confirmed = self.run(store.confirm(key, owner))
        entry = self.live(key)
        expected = entry is not None and entry.tentative and entry.owner == owner
        assert confirmed is expected
        if entry is not None and expected:
            entry.tentative = False

    @rule(index=st.integers(0, 1), owner_index=st.integers(0, 20))
    def release(self, index: int, owner_index: int) -> None:
        key = self.key(index)
        owner = self.owners[owner_index % len(self.owners)]
        released = self.run(self.harness.store.release(key, owner))
        entry = self.live(key)
        expected = entry is not None and entry.response is None and entry.owner == owner
        assert released is expected
        if expected:
            del self.model[key]

    @rule(index=st.integers(0, 1), owner_index=st.integers(0, 20))
    def withdraw(self, index: int, owner_index: int) -> None:
        key = self.key(index)
        owner = self.owners[owner_index % len(self.owners)]
        withdrawn = self.run(self.harness.store.withdraw(key, owner))
        entry = self.live(key)
        expected = entry is not None and entry.response is not None and entry.owner == owner
        assert withdrawn is expected
        if expected:
            del self.model[key]

    @rule(seconds=st.sampled_from([10.0, 50.0, 300.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.harness.advance(seconds)

    @invariant()
    def records_match_the_model(self) -> None:
        if not hasattr(self, "harness"):
            return
        for index in (0, 1):
            key = self.key(index)
            record = self.run(self.harness.store.get(key))
            entry = self.live(key)
            if entry is None:
                assert record is None
            else:
                assert record is not None
                assert record.fingerprint == entry.fingerprint
                pending = entry.pending(self.now)
                assert record.owner == (entry.owner if pending else None)
                assert record.response == entry.response
                assert record.tentative is (pending and entry.response is not None)

    def teardown(self) -> None:
        try:
            result = self.harness.close()
            if asyncio.iscoroutine(result):
                self.run(result)
        finally:
            self.runner.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_contract(backend: str, request: pytest.FixtureRequest) -> None:
    config = resolve(backend, request)
    machine = type(
        f"StoreMachine_{backend}", (StoreMachine,), {"backend": backend, "config": config}
    )
    examples = 60 if backend == "memory" else 12
    run_state_machine_as_test(
        machine, settings=settings(max_examples=examples, stateful_step_count=12, deadline=None)
    )


async def test_a_store_made_from_a_dsn_gives_up_on_a_silent_server() -> None:
    # A listening socket that never answers: the TCP connect succeeds, PostgreSQL's start-up
    # never does. asyncpg's default would wait 60 s; the store's pool gives up after 2 s.
    pytest.importorskip("asyncpg")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        store = PostgresIdempotencyStore(f"postgresql://postgres@127.0.0.1:{port}/test")
        try:
            async with asyncio.timeout(10):  # bounded: a hang fails the test, not the run
                with pytest.raises(BackendError, match="cannot connect"):
                    await store.claim("k", b"f", "owner", lease=5, ttl=10)
        finally:
            await store.aclose()
