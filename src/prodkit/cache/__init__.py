"""Response caching: cache-aside middleware, a store protocol, memory and Redis stores.

Import from here (or from :mod:`prodkit`)::

    from prodkit.cache import CacheMiddleware, CacheRule, ResponseCache, RedisCacheStore

The Redis store imports ``redis`` only when it is constructed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prodkit.cache._cache import ResponseCache
from prodkit.cache._entry import CachedResponse, compute_etag
from prodkit.cache._store import CacheStore, Lookup
from prodkit.cache.memory import MemoryCacheStore
from prodkit.cache.middleware import NOT_CACHED, CacheMiddleware, CacheRule, header_user_key

if TYPE_CHECKING:
    from prodkit.cache.redis import RedisCacheStore


def __getattr__(name: str) -> Any:
    if name == "RedisCacheStore":
        from prodkit.cache.redis import RedisCacheStore

        return RedisCacheStore
    raise AttributeError(f"module 'prodkit.cache' has no attribute {name!r}")


__all__ = [
    "NOT_CACHED",
    "CacheMiddleware",
    "CacheRule",
    "CacheStore",
    "CachedResponse",
    "Lookup",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "compute_etag",
    "header_user_key",
]
