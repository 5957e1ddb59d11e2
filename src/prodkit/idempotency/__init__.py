"""Idempotency keys: ``IdempotencyMiddleware``, the store protocol, and its backends.

The PostgreSQL and Redis backends import their drivers when they are built: importing this
package imports neither asyncpg nor redis.
"""

from __future__ import annotations

from prodkit.idempotency._claims import ClaimLost, IdempotencyClaim, current_claim
from prodkit.idempotency._memory import MemoryIdempotencyStore
from prodkit.idempotency._middleware import (
    BODY_TOO_LARGE,
    CALLER_UNKNOWN,
    DEFAULT_STORED_HEADERS,
    IN_PROGRESS,
    KEY_INVALID,
    KEY_MISSING,
    KEY_REUSED,
    STORE_UNAVAILABLE,
    IdempotencyMiddleware,
)
from prodkit.idempotency._options import IdempotencyKeywords, IdempotencyOptions
from prodkit.idempotency._postgres import PostgresIdempotencyStore, schema_sql
from prodkit.idempotency._redis import RedisIdempotencyStore
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    IdempotencyStore,
    RetryingIdempotencyStore,
    StoredResponse,
    TransactionalIdempotencyStore,
    WithdrawingIdempotencyStore,
)

__all__ = [
    "BODY_TOO_LARGE",
    "CALLER_UNKNOWN",
    "DEFAULT_STORED_HEADERS",
    "IN_PROGRESS",
    "KEY_INVALID",
    "KEY_MISSING",
    "KEY_REUSED",
    "STORE_UNAVAILABLE",
    "Claim",
    "ClaimLost",
    "ClaimOutcome",
    "IdempotencyClaim",
    "IdempotencyKeywords",
    "IdempotencyMiddleware",
    "IdempotencyOptions",
    "IdempotencyRecord",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "PostgresIdempotencyStore",
    "RedisIdempotencyStore",
    "RetryingIdempotencyStore",
    "StoredResponse",
    "TransactionalIdempotencyStore",
    "WithdrawingIdempotencyStore",
    "current_claim",
    "schema_sql",
]
