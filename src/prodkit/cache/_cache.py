""":class:`ResponseCache`: a store behind a circuit breaker, tag invalidation, and metrics."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry

from prodkit._core.breaker import CircuitBreaker
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit.cache._memory import MemoryCacheStore
from prodkit.cache._store import CacheStore, Lookup

T = TypeVar("T")

_READABLE_TAG = re.compile(r"[!-~]{1,200}\Z")  # printable ASCII, no spaces, short


def tag_key(tag: str) -> str:
    """The store key of a tag's version: readable when the tag is short and plain, else hashed."""
    if _READABLE_TAG.match(tag):
        return "t:" + tag
    return "t:#" + hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """The shared part of response caching: a store, its circuit breaker, and invalidation.

    Build one per application, pass it to :class:`~prodkit.cache.CacheMiddleware` and keep a
    reference where the app writes data, to invalidate programmatically::

        cache = ResponseCache(RedisCacheStore("redis://localhost:6379/0"))
        app = CacheMiddleware(app, cache=cache, routes={...})
        ...
        await cache.invalidate_tags([f"fund:{fund_id}"])

    Every store call goes through ``breaker``: after a few consecutive failures (a refused or
    black-holed Redis) calls fail at once, the cache *fails open* (requests are served by the
    app) and a half-open probe checks for recovery every ``recovery_time`` seconds.

    Arguments:
        store: where entries live (default: a :class:`~prodkit.cache.MemoryCacheStore`).
        breaker: the circuit breaker for store calls (default: named ``"cache"``, opens after 3
            consecutive failures, 0.25 s per call, probes again after 5 s; none for the
            in-process memory store, which cannot fail or hang).
        tag_ttl: seconds a tag version is kept after an invalidation. It must be at least the
            longest entry TTL (checked by the middleware).
        registry: the Prometheus registry of the ``{metric_prefix}cache_*`` metrics.
        metric_prefix: put in front of those metric names.
        logger: a structlog logger (default ``structlog.get_logger("prodkit.cache")``).
    """

    def __init__(
        self,
        store: CacheStore | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        tag_ttl: float = 24 * 3600.0,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        logger: object | None = None,
    ) -> None:
        if tag_ttl <= 0:
            raise ConfigurationError("tag_ttl must be a positive number of seconds")
        if store is not None and not isinstance(store, CacheStore):
            raise ConfigurationError(
                "store must implement prodkit.cache.CacheStore "
                "(get, set, complete, bump, claim, release, aclose)"
            )
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        #: Bumped by every invalidation in this process (see ``CacheMiddleware``'s flights).
        self.generation = 0
        self.breaker: CircuitBreaker | None = breaker
        if breaker is None and not isinstance(self.store, MemoryCacheStore):
            self.breaker = CircuitBreaker(
                "cache",
                failure_threshold=3,
                recovery_time=5.0,
                timeout=0.25,
                registry=registry,
                metric_prefix=metric_prefix,
            )
        self.tag_ttl = tag_ttl
        self.registry = registry
        self.metric_prefix = metric_prefix
        self.logger: structlog.typing.FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger("prodkit.cache")  # type: ignore[assignment]
        )
        self._invalidations = counter(
            f"{metric_prefix}cache_invalidations_total",
            "Tag invalidations of the response cache, by outcome (ok, error).",
            ["outcome"],
            registry=registry,
        )

    async def _call(self, func: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is None:  # an in-process store cannot be down or slow
            return await func()
        return await self.breaker.call(func)

    async def get(self, key: str, tags: Sequence[str]) -> Lookup:
        """Read ``key`` and tag versions through the breaker (raises ``BackendError``)."""
        if self.breaker is None:  # every hit comes here: no closure, no extra frame
            return await self.store.get(key, tags=tags)
        return await self.breaker.call(lambda: self.store.get(key, tags=tags))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Write through the breaker (raises ``BackendError``)."""
        await self._call(lambda: self.store.set(key, value, ttl))

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        """Store values and release a lease in one round trip (raises ``BackendError``)."""
        await self._call(lambda: self.store.complete(values, ttl, lock, token))

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """Take a single-flight lease through the breaker (raises ``BackendError``)."""
        return await self._call(lambda: self.store.claim(key, token, lease))

    async def release(self, key: str, token: str) -> None:
        """Give a lease back; failures are ignored (the lease runs out by itself)."""
        with contextlib.suppress(BackendError):
            await self._call(lambda: self.store.release(key, token))

    async def invalidate_tags(self, tags: Iterable[str]) -> bool:
        """Make every entry carrying one of ``tags`` stale, in every process sharing the store.

        One pipelined write of new tag versions; no ``KEYS``, no ``SCAN``, no per-entry work.
        Returns ``False`` (and logs ``cache invalidation failed``) when the store is unreachable:
        entries then live until their TTL, which bounds how stale they can get.
        """
        keys = sorted({tag_key(tag) for tag in tags})
        if not keys:
            return True
        # In-process single flights that started before this write must not be joined after it.
        self.generation += 1
        try:
            await self._call(lambda: self.store.bump(keys, self.tag_ttl))
        except BackendError as exc:
            self._invalidations.labels("error").inc()
            self.logger.warning("cache invalidation failed", tags=keys, error=str(exc))
            return False
        self._invalidations.labels("ok").inc()
        return True

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


__all__ = ["ResponseCache", "tag_key"]
