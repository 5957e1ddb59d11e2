"""The PostgreSQL repository: asyncpg pool, keyset pagination, full-text search, summaries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from examples.funds.migrate import MIGRATION_TIMEOUT_MS, migrate
from examples.funds.model import MODEL_VERSION, Stage, irr
from examples.funds.repository import (
    BeforeCommit,
    CommitWith,
    Fund,
    Page,
    Summary,
    decode_cursor,
    encode_cursor,
    search_text,
)
from prodkit import MissingDependencyError

T = TypeVar("T")
log = logging.getLogger("examples.funds.postgres")

COLUMNS = "id, user_id, name, description, size, stages, irr, model_version, created_at, updated_at, deleted_at"
#: Arbitrary constant naming the summary-refresh lock, so that one worker refreshes at a time.
REFRESH_LOCK_ID = 0x73756D6D  # "summ"
#: Seconds to open a connection (TCP, TLS, authentication). asyncpg's default is 60: with the
#: database unreachable, a request waiting for a new connection would hang that long before
#: its 503.
CONNECT_TIMEOUT = 2.0
#: The server's bound on every statement (``statement_timeout``, milliseconds). The queries
#: here are indexed look-ups and small writes; 2 s is far above what they take.
STATEMENT_TIMEOUT_MS = 2000
#: The client gives up on a command this long after the server's own bound
#: (``command_timeout``): then the server, not the network, was too slow to answer. Over a
#: dead connection asyncpg then waits up to ``command_timeout`` again for its cancel request,
#: so a request fails within about twice that.
COMMAND_TIMEOUT_MARGIN = 0.5
#: The most one repository call may take, waiting for a pool connection included: whatever
#: the database or the network does (a cancel request that cannot get through, a rollback on
#: a silent connection), a request gets its 503 by then.
CALL_TIMEOUT = 6.0


def database_unavailable_errors() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the database cannot be reached, or a connection to it is lost
    or cut mid-call (the server, or a PgBouncer in front of it, stopped, restarted, full, or
    dropping its connections): an outage, answered 503, not a bug.

    ``InternalClientError`` is among them: a connection that PgBouncer closed while it sat in
    the pool raises it on its next statement ("cannot switch to state …; another operation is
    in progress"), before asyncpg has noticed that the connection is gone.
    """
    import asyncpg

    return (
        *_broken_connection(),
        asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError among them
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.TooManyConnectionsError,
        TimeoutError,  # the bounded waits: connect, command, CALL_TIMEOUT
    )


def _broken_connection() -> tuple[type[BaseException], ...]:
    """One connection lost or cut, the database perhaps still there: a read may retry."""
    import asyncpg

    return (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError, OSError)


def _fund(row: Any) -> Fund:
    stages = row["stages"]
    if isinstance(stages, str):
        stages = json.loads(stages)
    return Fund(
        id=str(row["id"]),
        user_id=row["user_id"],
        name=row["name"],
        description=row["description"],
        size=row["size"],
        stages=tuple(Stage(**stage) for stage in stages),
        irr=row["irr"],
        model_version=row["model_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
    )


def _stages_json(stages: tuple[Stage, ...]) -> str:
    return json.dumps([stage.to_json() for stage in stages])


def _uuid(value: str) -> uuid.UUID | None:
    """The fund id, only in its canonical spelling: PostgreSQL would also accept upper case,
    braces or ``urn:uuid:``, and each spelling would be a separate cache entry that a write to
    the canonical URL never invalidates."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


class PostgresRepository:
    """Funds in PostgreSQL.

    * One asyncpg pool with size limits; every statement bounded by ``statement_timeout`` on the
      server and ``command_timeout`` on the client.
    * Reads are retried once on a broken connection (safe: they change nothing); writes never
      are, so a timeout can never insert a fund twice.
    * ``GET /api/summary`` reads the ``fund_summaries`` materialized view. Writes mark it dirty;
      a background task refreshes it CONCURRENTLY at most every ``summary_interval`` seconds,
      so a summary is at most about ``summary_interval`` + one refresh stale.
    """

    def __init__(self, pool: Any, *, summary_interval: float = 1.0) -> None:
        self.pool = pool
        self.summary_interval = summary_interval
        self._dirty = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
        connect_timeout: float = CONNECT_TIMEOUT,
        summary_interval: float = 1.0,
        apply_migrations: bool = True,
    ) -> PostgresRepository:
        """Open the pool, apply migrations and start the summary refresher.

        Every wait on the database is bounded, so that an unreachable database costs a request
        seconds, not minutes: opening a connection by ``connect_timeout``, a statement by
        ``statement_timeout_ms`` on the server and that plus ``COMMAND_TIMEOUT_MARGIN`` on the
        client. The errors asyncpg raises then (``TimeoutError``, ``OSError``, its connection
        errors) are the ones the service answers with 503 ``DEPENDENCY_UNAVAILABLE``.
        """
        try:
            import asyncpg
        except ImportError as exc:
            raise MissingDependencyError("asyncpg", "postgres") from exc
        if apply_migrations:
            # A connection of its own, with the client's bound for schema work rather than for
            # requests; the server's is set in the migration's transaction.
            conn = await asyncpg.connect(
                dsn,
                timeout=connect_timeout,
                command_timeout=MIGRATION_TIMEOUT_MS / 1000 + COMMAND_TIMEOUT_MARGIN,
                statement_cache_size=0,
                server_settings={"application_name": "prodkit-funds-migrate"},
            )
            try:
                applied = await migrate(conn)
            finally:
                await conn.close()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=statement_timeout_ms / 1000 + COMMAND_TIMEOUT_MARGIN,
            # Nothing may stay on a server connection between transactions, which PgBouncer's
            # transaction pooling hands to other clients: no named prepared statements (asyncpg
            # then sends each statement's Parse with its Bind and Execute, in one message).
            statement_cache_size=0,
            # Sent when the connection opens. Behind PgBouncer, which refuses startup
            # parameters it does not know, list statement_timeout in its
            # ignore_startup_parameters and set the bound on the role instead (docs/scale.md);
            # command_timeout above still bounds every wait.
            server_settings={
                "statement_timeout": str(statement_timeout_ms),
                "application_name": "prodkit-funds",
            },
        )
        repository = cls(pool, summary_interval=summary_interval)
        repository.start()
        return repository

    def start(self) -> None:
        """Start the debounced summary refresher (idempotent)."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="fund-summaries")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pool connection for at most ``CALL_TIMEOUT`` seconds."""
        async with (
            asyncio.timeout(CALL_TIMEOUT),
            self.pool.acquire() as conn,  # the wait for it included in the bound above
        ):
            yield conn

    async def _read(self, func: Callable[[Any], Awaitable[T]]) -> T:
        import asyncpg

        for attempt in (1, 2):
            try:
                async with self._connection() as conn:
                    return await func(conn)
            except TimeoutError:
                raise  # the database is slow or unreachable, not one connection broken
            except (*_broken_connection(), asyncpg.InterfaceError):
                if attempt == 2:
                    raise
                log.warning("read failed on a broken connection; retrying once")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(
        self,
        sql: str,
        args: list[Any],
        before_commit: BeforeCommit | None,
        commit_with: CommitWith | None,
    ) -> Fund | None:
        """Run one ``… RETURNING`` write and ``before_commit`` in one transaction, and commit
        it with ``commit_with`` (or plainly)."""
        import asyncpg

        async with (
            asyncio.timeout(CALL_TIMEOUT),
            self.pool.acquire() as conn,  # the wait for it included in the bound above
        ):
            transaction = conn.transaction()
            await transaction.start()
            try:
                row = await conn.fetchrow(sql, *args)
                fund = None if row is None else _fund(row)
                if fund is not None and before_commit is not None:
                    await before_commit(conn, fund)
            except BaseException:
                # A connection cut mid-statement cannot roll back either: the error that stopped
                # the write is the one to report (an outage is a 503), not the rollback's.
                with contextlib.suppress(
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,
                    asyncpg.PostgresError,
                    OSError,
                ):
                    await transaction.rollback()
                raise
            if fund is not None and commit_with is not None:
                await commit_with(transaction.commit(), fund)
            else:
                await transaction.commit()
        if fund is not None:
            self._dirty.set()
        return fund

    async def create(
        self,
        user_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund:
        stages: tuple[Stage, ...] = fields["stages"]
        fund = await self._write(
            f"INSERT INTO funds (id, user_id, name, description, size, stages, irr, model_version)"
            f" VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) RETURNING {COLUMNS}",
            [
                uuid.uuid4(),
                user_id,
                fields["name"],
                fields.get("description", ""),
                fields["size"],
                _stages_json(stages),
                irr(stages),
                MODEL_VERSION,
            ],
            before_commit,
            commit_with,
        )
        assert fund is not None  # an INSERT … RETURNING returns its row
        return fund

    async def get(self, user_id: str, fund_id: str) -> Fund | None:
        key = _uuid(fund_id)
        if key is None:
            return None
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {COLUMNS} FROM funds WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
                key,
                user_id,
            )
        )
        return None if row is None else _fund(row)

    async def update(
        self,
        user_id: str,
        fund_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund | None:
        key = _uuid(fund_id)
        if key is None:
            return None
        assignments: list[str] = []
        values: list[Any] = [key, user_id]
        for column in ("name", "description", "size"):
            if column in fields:
                values.append(fields[column])
                assignments.append(f"{column} = ${len(values)}")
        if "stages" in fields:
            values.append(_stages_json(fields["stages"]))
            assignments.append(f"stages = ${len(values)}::jsonb")
            values.append(irr(fields["stages"]))
            assignments.append(f"irr = ${len(values)}")
            values.append(MODEL_VERSION)
            assignments.append(f"model_version = ${len(values)}")
        assignments.append("updated_at = now()")
        return await self._write(
            f"UPDATE funds SET {', '.join(assignments)}"
            f" WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL RETURNING {COLUMNS}",
            values,
            before_commit,
            commit_with,
        )

    async def delete(self, user_id: str, fund_id: str) -> bool:
        key = _uuid(fund_id)
        if key is None:
            return False
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE funds SET deleted_at = now(), updated_at = now()"
                " WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
                key,
                user_id,
            )
        deleted = bool(status == "UPDATE 1")
        if deleted:
            self._dirty.set()
        return deleted

    async def list(self, user_id: str, *, q: str | None, limit: int, cursor: str | None) -> Page:
        sql, args = list_query(user_id, q=q, limit=limit, cursor=cursor)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        items = [_fund(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if more and items else None
        return Page(items, next_cursor)

    async def summary(self, user_id: str) -> Summary:
        row = await self._read(
            lambda conn: conn.fetchrow(
                "SELECT total_funds, total_aum, avg_irr, last_activity FROM fund_summaries WHERE user_id = $1",
                user_id,
            )
        )
        if row is None:
            return Summary(0, 0.0, None, None)
        last: datetime | None = row["last_activity"]
        return Summary(
            int(row["total_funds"]), round(float(row["total_aum"]), 2), row["avg_irr"], last
        )

    async def refresh_summaries(self, *, wait: bool = False) -> bool:
        """Refresh ``fund_summaries`` now; return whether it ran.

        Unless ``wait``, it gives up at once when another process is refreshing (that refresh
        may predate the latest writes, so the caller marks the view dirty again).
        """
        # A transaction-level advisory lock: released at commit, safe behind PgBouncer.
        async with self.pool.acquire() as conn, conn.transaction():
            if wait:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_ID)
            elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REFRESH_LOCK_ID):
                return False
            await conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY fund_summaries")
        return True

    async def _refresh_loop(self) -> None:
        failing = False  # one warning when refreshing starts failing, one when it works again
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                if not await self.refresh_summaries():
                    self._dirty.set()  # someone else is refreshing: try again next round
                elif failing:
                    failing = False
                    log.warning("fund_summaries refreshed again")
            except Exception:
                if not failing:
                    failing = True
                    log.warning(
                        "refreshing fund_summaries failed; retrying every %s s",
                        self.summary_interval,
                        exc_info=True,
                    )
                self._dirty.set()
            await asyncio.sleep(self.summary_interval)

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.pool.close()


def list_query(
    user_id: str, *, q: str | None, limit: int, cursor: str | None
) -> tuple[str, list[Any]]:
    """The listing statement: newest first, keyset after ``cursor``, full-text ``q`` (blank: none).

    Fetches ``limit + 1`` rows so the caller knows whether there is a next page.
    """
    where = ["user_id = $1", "deleted_at IS NULL"]
    args: list[Any] = [user_id]
    q = search_text(q)
    if q:
        args.append(q)
        where.append(f"search @@ plainto_tsquery('simple', ${len(args)})")
    if cursor:
        created_at, fund_id = decode_cursor(cursor)
        args.extend([created_at, uuid.UUID(fund_id)])
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (
        f"SELECT {COLUMNS} FROM funds WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    )
    return sql, args
