"""Forward-only schema migrations for the funds service.

Applied at start-up by the PostgreSQL repository, and runnable alone::

    DATABASE_URL=postgresql://... python -m examples.funds.migrate

Each ``migrations/NNNN_name.sql`` file runs once, in order, recorded in ``schema_migrations``.
Every pending file applies in ONE transaction that first takes a transaction-level advisory
lock (``pg_advisory_xact_lock``): several workers or hosts starting together queue on the lock,
the first applies the migrations, and the others find them recorded when their turn comes. The
lock and the statement bound are the transaction's own and end with it, so nothing stays on the
server connection: this works behind PgBouncer in transaction pooling, where a session-level
lock or ``SET`` would be left on a connection that other clients get next. A migration that
fails rolls back every file of the run, so a start either applies them all or none.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Arbitrary constant naming this service's migration lock.
LOCK_ID = 0x66756E6473  # "funds"
#: The bound on the migration transaction's statements (milliseconds), waiting for another
#: worker's lock included: building an index on a large table takes longer than a request may.
MIGRATION_TIMEOUT_MS = 300_000


def migration_files() -> list[Path]:
    """The migration files in the order they apply."""
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(conn: Any, *, statement_timeout_ms: int = MIGRATION_TIMEOUT_MS) -> list[str]:
    """Apply pending migrations on an asyncpg connection, in one transaction; return the
    versions applied (none when another process applied them first)."""
    applied: list[str] = []
    async with conn.transaction():
        # SET LOCAL, as a function so that the value can be a parameter: it ends with the
        # transaction (a startup parameter may not reach the server through PgBouncer).
        await conn.execute(
            "SELECT set_config('statement_timeout', $1, true)", str(statement_timeout_ms)
        )
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # Read after the lock: each statement of a READ COMMITTED transaction sees what the
        # lock's previous holder committed.
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in migration_files():
            version = path.stem
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    return applied


async def _main() -> int:
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("set DATABASE_URL to the PostgreSQL DSN to migrate", file=sys.stderr)
        return 2
    import asyncpg

    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
