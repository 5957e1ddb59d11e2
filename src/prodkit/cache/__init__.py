"""Response caching: ``CacheMiddleware`` (cache-aside), the store protocol, memory and Redis stores,
and the near cache that serves the Redis store's reads from memory.

The Redis store imports ``redis`` only when it is built.
"""

from __future__ import annotations

from prodkit.cache._cache import ResponseCache
from prodkit.cache._entries import CachedResponse, compute_etag
from prodkit.cache._memory import MemoryCacheStore
from prodkit.cache._middleware import NOT_CACHED, CacheKeywords, CacheMiddleware, CacheOptions
from prodkit.cache._near import NearCacheStore
from prodkit.cache._redis import RedisCacheStore
from prodkit.cache._rules import CacheRule
from prodkit.cache._store import CacheStore, FenceChange, Lookup

__all__ = [
    "NOT_CACHED",
    "CacheKeywords",
    "CacheMiddleware",
    "CacheOptions",
    "CacheRule",
    "CacheStore",
    "CachedResponse",
    "FenceChange",
    "Lookup",
    "MemoryCacheStore",
    "NearCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "compute_etag",
]
