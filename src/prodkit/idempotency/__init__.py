"""Idempotency stores: the protocol, and memory, PostgreSQL and Redis backends.

The backends import their drivers lazily: importing this package imports neither asyncpg nor
redis. The middleware is :class:`prodkit.middleware.idempotency.IdempotencyMiddleware`.
"""

from __future__ import annotations

from prodkit.idempotency._factory import store_from_env
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    IdempotencyStore,
    StoredResponse,
)
from prodkit.idempotency.memory import MemoryIdempotencyStore
from prodkit.idempotency.postgres import PostgresIdempotencyStore, schema_sql
from prodkit.idempotency.redis import RedisIdempotencyStore

__all__ = [
    "Claim",
    "ClaimOutcome",
    "IdempotencyRecord",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "PostgresIdempotencyStore",
    "RedisIdempotencyStore",
    "StoredResponse",
    "schema_sql",
    "store_from_env",
]
