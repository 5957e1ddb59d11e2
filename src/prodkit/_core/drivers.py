"""Optional drivers, imported only when a backend that needs them is built."""

from __future__ import annotations

import importlib
from typing import Any

from prodkit._core.exceptions import MissingDependencyError


def require(module: str, extra: str) -> Any:
    """Import an optional driver lazily, or raise :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra) from exc


def redis_client(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 0.5,
    connect_timeout: float | None = None,
) -> Any:
    """A redis-py asyncio client for ``url`` with short timeouts and no retries of its own.

    Requests beyond ``max_connections`` wait (up to ``socket_timeout``) for a pooled connection
    instead of failing. A failed call fails fast: each store's circuit breaker decides when to
    try again. ``url`` is ``redis://``, ``rediss://`` or ``unix://``.
    """
    redis_asyncio = require("redis.asyncio", "redis")
    retry = require("redis.asyncio.retry", "redis")
    backoff = require("redis.backoff", "redis")
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout if connect_timeout is None else connect_timeout,
        retry=retry.Retry(backoff.NoBackoff(), 0),
    )
    return redis_asyncio.Redis.from_pool(pool)


__all__ = ["redis_client", "require"]
