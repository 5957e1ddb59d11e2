"""PostgreSQL idempotency store on an asyncpg pool; every operation is one statement.

Works behind PgBouncer in transaction pooling mode: no session state (no ``SET``, no temporary
tables, no session advisory locks), no named prepared statements. Create the pool with
``statement_cache_size=0`` there (asyncpg then uses only unnamed statements)::

    pool = await asyncpg.create_pool(dsn, statement_cache_size=0)
    store = PostgresIdempotencyStore(pool)
    await store.ensure_schema()
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from importlib import resources
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.drivers import require
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit.idempotency._releases import PendingReleases
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    StoredResponse,
)

#: ``asyncpg.create_pool`` options of a pool the store makes from a DSN (``pool_options``
#: override them): no named prepared statements (PgBouncer), and bounded waits — asyncpg's
#: defaults wait 60 s to connect and forever for a command, and a call the circuit breaker
#: gave up on still holds its connection until the driver lets go of it.
DEFAULT_POOL_OPTIONS: dict[str, Any] = {
    "statement_cache_size": 0,
    "timeout": 2.0,
    "command_timeout": 5.0,
}

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}(\.[a-z_][a-z0-9_]{0,40})?\Z")


def schema_sql(table: str = "prodkit_idempotency") -> str:
    """Return the DDL (table and expiry index) for ``table``; safe to run more than once."""
    if not _IDENTIFIER.match(table):
        raise ConfigurationError(
            f"table {table!r} must be a lower-case SQL identifier, optionally schema-qualified"
        )
    text = resources.files("prodkit.idempotency").joinpath("schema.sql").read_text("utf-8")
    index_prefix = table.rpartition(".")[2]
    return text.replace("{table}_expires_at_idx", f"{index_prefix}_expires_at_idx").replace(
        "{table}", table
    )


def _unavailable(asyncpg: Any) -> tuple[type[BaseException], ...]:
    """What a call raises when PostgreSQL (or a PgBouncer in front of it) cannot answer: the
    socket's errors, the bounded waits running out, the server's errors, a connection that is
    gone, and asyncpg's InternalClientError, which a pooled connection that PgBouncer closed
    meanwhile raises on its next statement."""
    return (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )


def _encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    return json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers])


def _decode_headers(raw: str | None) -> tuple[tuple[bytes, bytes], ...]:
    if not raw:
        return ()
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(raw))


class _Statements(NamedTuple):
    """The store's SQL, written once per table (a validated identifier)."""

    claim: str
    complete: str
    complete_tentatively: str
    confirm: str
    release: str
    get: str
    withdraw: str
    cleanup: str


def _statements(table: str) -> _Statements:
    now = "(statement_timestamp() + make_interval(secs => $6))"
    take = (
        f"(r.expires_at <= {now} OR (r.status IS NULL AND r.locked_until <= {now}"
        " AND r.fingerprint = EXCLUDED.fingerprint))"
    )

    def col(name: str) -> str:
        return f"{name} = CASE WHEN {take} THEN EXCLUDED.{name} ELSE r.{name} END"

    claim = (
        f"INSERT INTO {table} AS r"  # noqa: S608 - table is a validated identifier
        " (key, fingerprint, owner, locked_until, expires_at, status, headers, body)"
        f" VALUES ($1, $2, $3, {now} + make_interval(secs => $4),"
        f" {now} + make_interval(secs => $5), NULL, NULL, NULL)"
        " ON CONFLICT (key) DO UPDATE SET "
        + ", ".join(
            col(c)
            for c in (
                "fingerprint",
                "owner",
                "locked_until",
                "expires_at",
                "status",
                "headers",
                "body",
            )
        )
        + " RETURNING r.owner IS NOT DISTINCT FROM $3 AS acquired, r.fingerprint, r.status,"
        f" r.headers::text AS headers, r.body,"
        f" extract(epoch FROM r.locked_until - {now})::float8 AS lease_left"
    )
    now3 = "(statement_timestamp() + make_interval(secs => $3))"
    now4 = "(statement_timestamp() + make_interval(secs => $4))"

    def complete(lease: str) -> str:
        return (
            # The owner stays, so that it alone can withdraw the record (see withdraw()).
            f"UPDATE {table} SET status = $5, headers = $6::jsonb, body = $7,"  # noqa: S608 - table is a validated identifier
            f"{lease} expires_at = {now4} + make_interval(secs => $3)"
            f" WHERE key = $1 AND owner = $2 AND status IS NULL AND expires_at > {now4}"
        )

    completed = complete(" locked_until = NULL,")
    # A tentative record keeps its claim's lease (locked_until): a completed row whose
    # lease still runs answers like a claim in progress (see complete_tentatively()).
    tentative = complete("")
    confirm = (
        f"UPDATE {table} SET locked_until = NULL"  # noqa: S608 - table is a validated identifier
        " WHERE key = $1 AND owner = $2 AND status IS NOT NULL AND locked_until IS NOT NULL"
        f" AND expires_at > {now3}"
    )
    release = (
        f"DELETE FROM {table}"  # noqa: S608 - table is a validated identifier
        f" WHERE key = $1 AND owner = $2 AND status IS NULL AND expires_at > {now3}"
    )
    now2 = "(statement_timestamp() + make_interval(secs => $2))"
    pending = f"(status IS NULL OR locked_until > {now2})"
    get = (
        f"SELECT fingerprint, CASE WHEN {pending} THEN owner END AS owner, status,"  # noqa: S608 - table is a validated identifier
        f" headers::text AS headers, body, status IS NOT NULL AND {pending} AS tentative"
        f" FROM {table}"
        f" WHERE key = $1 AND expires_at > {now2}"
    )
    withdraw = (
        f"DELETE FROM {table}"  # noqa: S608 - table is a validated identifier
        " WHERE key = $1 AND owner = $2 AND status IS NOT NULL"
    )
    cleanup = (
        f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table}"  # noqa: S608 - table is a validated identifier
        f" WHERE expires_at <= {now2} LIMIT $1 FOR UPDATE SKIP LOCKED)"
    )
    return _Statements(claim, completed, tentative, confirm, release, get, withdraw, cleanup)


class PostgresIdempotencyStore:
    """Keep idempotency records in a PostgreSQL table (see :func:`schema_sql`).

    The claim is one ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` whose update takes the row
    over only when the old record has expired, or is an in-progress claim with the same
    fingerprint whose lease ran out; otherwise it rewrites the row unchanged (locking it) so
    that the statement always returns the current record. Time is the database's
    (``statement_timestamp()``), so worker clocks do not matter.

    Arguments:
        pool: an ``asyncpg`` pool (or anything with ``fetchrow``/``fetch``/``execute`` and
            ``acquire``), or a DSN string: a pool is then created on first use (with
            ``statement_cache_size=0``, a 2 s connect timeout and a 5 s command timeout, unless
            ``pool_options`` say otherwise) and closed by :meth:`aclose`.
        table: the table name (``schema.table`` allowed), created by :meth:`ensure_schema`.
        pool_options: keyword arguments for ``asyncpg.create_pool`` when ``pool`` is a DSN.
        cleanup_interval: seconds between two sweeps that delete expired records (see
            :meth:`cleanup`), in a background task started on first use and stopped by
            :meth:`aclose`; each wait is drawn between half and one and a half times this,
            so that workers sharing the table do not sweep together. ``None``: no sweeps
            (call :meth:`cleanup` yourself).
        cleanup_batch_size: rows one delete statement of a sweep removes at most, so that a
            sweep never holds many row locks for long.
        clock_offset: seconds added to the database clock; for tests that need time to pass.
        registry: the Prometheus registry of ``{metric_prefix}idempotency_records_removed_total``.
        metric_prefix: put in front of that metric name.
        logger: a structlog logger its lines go to, redacted first (default: the
            ``prodkit.idempotency`` logger).

    A release that fails (the database restarting, a network partition) is retried in the
    background until it lands or the claim's lease is over: see :meth:`retry_release`.
    """

    def __init__(
        self,
        pool: Any,
        *,
        table: str = "prodkit_idempotency",
        pool_options: dict[str, Any] | None = None,
        cleanup_interval: float | None = 60.0,
        cleanup_batch_size: int = 1000,
        clock_offset: float = 0.0,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        logger: Any | None = None,
    ) -> None:
        if cleanup_interval is not None:
            valid.positive_seconds("cleanup_interval", cleanup_interval, example=60)
        valid.positive_int("cleanup_batch_size", cleanup_batch_size, example=1000)
        self._ddl = schema_sql(table)
        self._sql = _statements(table)
        self.table = table
        self.cleanup_interval = cleanup_interval
        self.cleanup_batch_size = cleanup_batch_size
        self.clock_offset = clock_offset
        self.logger = safe_logger("prodkit.idempotency", logger)
        self._removed = counter(
            f"{metric_prefix}idempotency_records_removed_total",
            "Expired idempotency records deleted from the PostgreSQL table.",
            registry=registry,
        )
        self._releases = PendingReleases(self.release, self.logger)
        self._withdrawals = PendingReleases(
            self.withdraw, self.logger, what="withdrawal", done="withdrawn"
        )
        self._sweeper: asyncio.Task[None] | None = None
        if isinstance(pool, str):
            require("asyncpg", "postgres")  # a missing extra is told at start-up
        # A DSN: a pool of the store's own, created on first use and closed by aclose().
        self._dsn: str | None = pool if isinstance(pool, str) else None
        self._pool: Any = None if self._dsn is not None else pool
        self._pool_options = {**DEFAULT_POOL_OPTIONS, **(pool_options or {})} if self._dsn else {}
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        sweeper, loop = self._sweeper, asyncio.get_running_loop()
        # Restarted when its loop is over (a start-up loop, then the serving one): the task
        # of a finished loop is done, or never runs again.
        if self.cleanup_interval is not None and (
            sweeper is None or sweeper.done() or sweeper.get_loop() is not loop
        ):
            self._sweeper = loop.create_task(
                self._sweep(self.cleanup_interval), name="prodkit-idempotency-cleanup"
            )
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                asyncpg: Any = require("asyncpg", "postgres")
                try:
                    self._pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
                except _unavailable(asyncpg) as exc:
                    raise BackendError(f"cannot connect to PostgreSQL: {exc}") from exc
        return self._pool

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        pool = await self._get_pool()
        asyncpg: Any = require("asyncpg", "postgres")
        try:
            return await getattr(pool, method)(sql, *args)
        except asyncpg.UndefinedTableError as exc:
            raise BackendError(
                f"PostgreSQL idempotency store: the table {self.table} does not exist; create "
                "it at start-up with `await store.ensure_schema()` (or apply "
                f"schema_sql({self.table!r}) with your migration tool)"
            ) from exc
        except _unavailable(asyncpg) as exc:
            raise BackendError(f"PostgreSQL idempotency store: {exc}") from exc

    async def ensure_schema(self) -> None:
        """Create the table and its expiry index if missing (safe from several processes at once).

        The DDL runs in one transaction under a transaction-scoped advisory lock, so two workers
        starting together do not race (and PgBouncer transaction pooling is fine).
        """
        pool = await self._get_pool()
        asyncpg: Any = require("asyncpg", "postgres")
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.table)
                await conn.execute(self._ddl)
        except _unavailable(asyncpg) as exc:
            raise BackendError(f"cannot create idempotency table: {exc}") from exc

    migrate = ensure_schema

    async def claim(
        self, key: str, fingerprint: bytes, owner: str, *, lease: float, ttl: float
    ) -> Claim:
        """See :meth:`prodkit.idempotency.IdempotencyStore.claim`."""
        row = await self._run(
            "fetchrow",
            self._sql.claim,
            key,
            fingerprint,
            owner,
            float(lease),
            float(ttl),
            float(self.clock_offset),
        )
        if row["acquired"]:
            return Claim(ClaimOutcome.ACQUIRED)
        if bytes(row["fingerprint"]) != fingerprint:
            return Claim(ClaimOutcome.MISMATCH)
        lease_left = row["lease_left"]
        if row["status"] is not None and (lease_left is None or lease_left <= 0):
            response = StoredResponse(
                int(row["status"]), _decode_headers(row["headers"]), bytes(row["body"] or b"")
            )
            return Claim(ClaimOutcome.COMPLETED, response=response)
        # In progress, or tentative (completed while its lease runs).
        return Claim(ClaimOutcome.IN_PROGRESS, retry_after=max(0.0, float(lease_left)))

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.complete`."""
        result = await self._run(
            "execute", self._sql.complete, *self._complete_args(key, owner, response, ttl)
        )
        return str(result).endswith(" 1")

    async def complete_tentatively(
        self, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.complete_tentatively`."""
        result = await self._run(
            "execute",
            self._sql.complete_tentatively,
            *self._complete_args(key, owner, response, ttl),
        )
        return str(result).endswith(" 1")

    async def confirm(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.confirm`."""
        result = await self._run("execute", self._sql.confirm, key, owner, float(self.clock_offset))
        return str(result).endswith(" 1")

    def _complete_args(
        self, key: str, owner: str, response: StoredResponse, ttl: float
    ) -> tuple[Any, ...]:
        """The parameters of the completion statement, in its order."""
        return (
            key,
            owner,
            float(ttl),
            float(self.clock_offset),
            response.status,
            _encode_headers(response.headers),
            response.body,
        )

    async def complete_in(
        self, connection: Any, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """Record ``response`` on ``connection``, inside the transaction the caller holds there.

        The record commits with the caller's own writes, or not at all: a process that dies
        before the commit leaves the claim in progress (a retry runs the handler once the lease
        ends, and finds none of its writes), one that dies after leaves the record (a retry
        replays it). ``connection`` is an asyncpg connection to the database that holds
        :attr:`table`. Returns ``False`` when ``owner`` lost the claim (its lease ran out and
        another request took the key over): the caller must then roll back. Database errors
        are the caller's transaction's and propagate unchanged.
        """
        if not connection.is_in_transaction():
            raise ConfigurationError(
                "complete_in needs a connection inside a transaction "
                "(async with connection.transaction(): ...)"
            )
        result = await connection.execute(
            self._sql.complete, *self._complete_args(key, owner, response, ttl)
        )
        return str(result).endswith(" 1")

    async def release(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.release`."""
        result = await self._run("execute", self._sql.release, key, owner, float(self.clock_offset))
        return str(result).endswith(" 1")

    async def withdraw(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.withdraw`."""
        result = await self._run("execute", self._sql.withdraw, key, owner)
        return str(result).endswith(" 1")

    def retry_release(self, key: str, owner: str, *, within: float) -> None:
        """See :meth:`prodkit.idempotency.RetryingIdempotencyStore.retry_release`."""
        self._releases.add(key, owner, within=within)

    def retry_withdraw(self, key: str, owner: str, *, within: float) -> None:
        """See :meth:`prodkit.idempotency.RetryingIdempotencyStore.retry_withdraw`."""
        self._withdrawals.add(key, owner, within=within)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """See :meth:`prodkit.idempotency.IdempotencyStore.get`."""
        row = await self._run("fetchrow", self._sql.get, key, float(self.clock_offset))
        if row is None:
            return None
        response = None
        if row["status"] is not None:
            response = StoredResponse(
                int(row["status"]), _decode_headers(row["headers"]), bytes(row["body"] or b"")
            )
        return IdempotencyRecord(
            bytes(row["fingerprint"]), row["owner"], response, bool(row["tentative"])
        )

    async def cleanup(self, batch_size: int | None = None) -> int:
        """Delete expired records, ``batch_size`` rows per statement; return how many went.

        Expired records are already ignored and replaced by claims; deleting them only keeps
        the table small. The store does it every ``cleanup_interval`` seconds by itself; call
        this to sweep now. Each statement is a transaction of its own that finds its rows by
        the expiry index and skips rows another sweep has locked. Every deleted row counts in
        ``{metric_prefix}idempotency_records_removed_total``.
        """
        size = self.cleanup_batch_size if batch_size is None else batch_size
        total = 0
        while True:
            result = await self._run("execute", self._sql.cleanup, size, float(self.clock_offset))
            deleted = int(str(result).rpartition(" ")[2] or 0)
            self._removed.inc(deleted)
            total += deleted
            if deleted < size:
                return total

    async def _sweep(self, interval: float) -> None:
        """Call :meth:`cleanup` every ``interval`` seconds (jittered) until cancelled."""
        failing = False  # one line when sweeps start failing, one when they work again
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            try:
                await self.cleanup()
            except BackendError as exc:
                if not failing:
                    self.logger.warning(
                        "idempotency records cleanup failed; retrying at the next sweep",
                        error=str(exc),
                    )
                failing = True
            except Exception:  # a bug must not end the sweeps
                self.logger.exception("idempotency records cleanup failed")
            else:
                if failing:
                    self.logger.info("idempotency records cleanup works again")
                failing = False

    async def aclose(self) -> None:
        """Stop the sweeps, try pending releases once more, then close the pool if this store
        created it (from a DSN)."""
        await self._releases.aclose()
        await self._withdrawals.aclose()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and not sweeper.done():
            sweeper.cancel()
            if sweeper.get_loop() is asyncio.get_running_loop():
                await asyncio.wait({sweeper})
        if self._dsn is not None and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


__all__ = ["PostgresIdempotencyStore", "schema_sql"]
