"""Choose an idempotency store from settings, as the example service's environment does."""

from __future__ import annotations

import os
from collections.abc import Mapping

from prodkit.errors import ConfigurationError
from prodkit.idempotency._store import IdempotencyStore
from prodkit.idempotency.memory import MemoryIdempotencyStore
from prodkit.idempotency.postgres import PostgresIdempotencyStore
from prodkit.idempotency.redis import RedisIdempotencyStore

KINDS = ("memory", "postgres", "redis")


def store_from_env(environ: Mapping[str, str] | None = None) -> IdempotencyStore:
    """Build the store named by ``IDEMPOTENCY_STORE`` (``memory``, ``postgres`` or ``redis``).

    Unset, it is ``postgres`` when ``DATABASE_URL`` is set, else ``memory``. The PostgreSQL
    store connects to ``DATABASE_URL`` (pool with ``statement_cache_size=0``, so PgBouncer is
    fine; call ``await store.ensure_schema()`` at start-up), the Redis store to ``REDIS_URL``.
    Nothing connects until the first request. Raises :class:`ConfigurationError` for an
    unknown kind or a missing URL.
    """
    env = os.environ if environ is None else environ
    database_url = env.get("DATABASE_URL") or None
    kind = (env.get("IDEMPOTENCY_STORE") or ("postgres" if database_url else "memory")).lower()
    if kind == "memory":
        return MemoryIdempotencyStore()
    if kind == "postgres":
        if database_url is None:
            raise ConfigurationError("IDEMPOTENCY_STORE=postgres needs DATABASE_URL to be set")
        return PostgresIdempotencyStore(database_url)
    if kind == "redis":
        redis_url = env.get("REDIS_URL") or None
        if redis_url is None:
            raise ConfigurationError("IDEMPOTENCY_STORE=redis needs REDIS_URL to be set")
        return RedisIdempotencyStore(redis_url)
    raise ConfigurationError(
        f"IDEMPOTENCY_STORE={kind!r} is not a store; use one of {', '.join(KINDS)}"
    )


__all__ = ["store_from_env"]
