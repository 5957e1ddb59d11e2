"""Forward-only schema migrations for the funds service.

Applied at start-up by the PostgreSQL repository, and runnable alone::

    DATABASE_URL=postgresql://... python -m examples.funds.migrate

Each ``migrations/NNNN_name.sql`` file runs once, in order, in its own transaction, recorded in
``schema_migrations``. A PostgreSQL advisory lock makes concurrent starts (several workers)
apply each migration exactly once.
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


def migration_files() -> list[Path]:
    """The migration files in the order they apply."""
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(conn: Any) -> list[str]:
    """Apply pending migrations on an asyncpg connection; return the versions applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for path in migration_files():
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)


async def _main() -> int:
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("set DATABASE_URL to the PostgreSQL DSN to migrate", file=sys.stderr)
        return 2
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
