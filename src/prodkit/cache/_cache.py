""":class:`ResponseCache`: a store behind a circuit breaker, tag invalidation, and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from prodkit._core import options as valid
from prodkit._core.breaker import CircuitBreaker
from prodkit._core.collectors import DEFAULT_PREFIX, counter, gauge
from prodkit._core.exceptions import BackendError, BackendUnavailableError, ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit.cache._memory import MemoryCacheStore
from prodkit.cache._near import NearCacheStore
from prodkit.cache._store import CacheStore, FenceChange, Lookup, fence_of

T = TypeVar("T")

_READABLE_TAG = re.compile(r"[!-~]{1,200}\Z")  # printable ASCII, no spaces, short

#: Tags that every entry of a cache whose store can fail carries, one per sixteenth of the
#: entry keys (so that, on Redis Cluster, reads of different entries spread over 16 keys).
#: Bumping all of them makes every entry stale: the answer when the record of pending
#: invalidations overflows. Their ``f:`` keys cannot collide with a tag's ``t:`` key.
FLUSH_KEYS = tuple(f"f:{digit}" for digit in "0123456789abcdef")


#: Seconds a tag version is kept after an invalidation, when nothing else is said: a day.
DEFAULT_TAG_TTL = 24 * 3600.0


def tag_key(tag: str) -> str:
    """The store key of a tag's version: readable when the tag is short and plain, else hashed."""
    if _READABLE_TAG.match(tag):
        return "t:" + tag
    return "t:#" + hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()


def fenced(versions: Sequence[str], now: float) -> bool:
    """Whether tag ``versions`` (as a read found them) say a write to one is under way at ``now``."""
    return any(version[:1] == "~" and fence_of(version, now)[1] for version in versions)


def flush_key(base: str) -> str:
    """The flush tag (one of :data:`FLUSH_KEYS`) of the entry whose hex key hash is ``base``."""
    return FLUSH_KEYS[int(base[0], 16)]


def _store_or_memory(store: CacheStore | None) -> CacheStore:
    """``store``, checked to be a :class:`CacheStore`, or a new memory store."""
    if store is None:
        return MemoryCacheStore()
    if not isinstance(store, CacheStore):
        raise ConfigurationError(
            f"store={store!r}: does not implement prodkit.cache.CacheStore (get, set, "
            "complete, bump, claim, release, aclose); write MemoryCacheStore() or "
            "RedisCacheStore(...)"
        )
    return store


def _breaker_for(
    store: CacheStore, registry: CollectorRegistry | None, metric_prefix: str
) -> CircuitBreaker | None:
    """The default breaker of a store that can fail: ``cache``, opens after 3 failures."""
    if isinstance(store, MemoryCacheStore):
        return None
    return CircuitBreaker(
        "cache", failure_threshold=3, timeout=0.25, registry=registry, metric_prefix=metric_prefix
    )


def _invalidation_metrics(
    registry: CollectorRegistry | None, metric_prefix: str
) -> tuple[Counter, Gauge]:
    invalidations = counter(
        f"{metric_prefix}cache_invalidations_total",
        "Writes of new tag versions to the response cache's store (a fenced write makes "
        "two: before and after), by outcome (ok, error).",
        ["outcome"],
        registry=registry,
    )
    pending = gauge(
        f"{metric_prefix}cache_pending_invalidations",
        "Tags whose invalidation has not reached the cache store yet (retried).",
        registry=registry,
    )
    return invalidations, pending


class ResponseCache:
    """The shared part of response caching: a store, its circuit breaker, and invalidation.

    Build one per application, pass it to :class:`~prodkit.cache.CacheMiddleware` and keep a
    reference where the app writes data, to invalidate programmatically::

        cache = ResponseCache(RedisCacheStore.from_url("redis://localhost:6379/0"))
        app = CacheMiddleware(app, cache=cache, routes={...})
        ...
        await cache.invalidate_tags([f"fund:{fund_id}"])

    Every store call goes through ``breaker``: after a few consecutive failures (a refused or
    black-holed Redis) calls fail at once, the cache *fails open* (requests are served by the
    app) and a half-open probe checks for recovery every ``recovery_time`` seconds.

    Writes are *fenced* (:meth:`invalidating`): before a write runs, its tags get new versions
    that say a write is under way, and until it ends no entry carrying them is stored or served
    by any process; after it, they get new versions again. A process that dies in between
    leaves the fence in the store for at most ``write_fence`` seconds: a live writer renews it
    every third of that, so it never runs out under a write however long, and one that died
    after its commit left the data as every later read finds it.

    An invalidation that cannot reach the store is not dropped: its tags are kept *pending* in
    this process and written again every ``retry_interval`` seconds in the background (even
    while the breaker is open, as a probe that no request waits for). While any are pending,
    this process reads nothing from the store (every read fails open to the app), so it never
    serves an entry that a pending invalidation covers; the first read that finds the store
    reachable again writes them first. At most ``max_pending`` tags are kept: beyond that the
    record is replaced by a *flush* that makes every entry stale once written.

    Arguments:
        store: where entries live (default: a :class:`~prodkit.cache.MemoryCacheStore`).
        breaker: the circuit breaker for store calls (default: named ``"cache"``, opens after 3
            consecutive failures, 0.25 s per call, probes again after 0.5 s; none for the
            in-process memory store, which cannot fail or hang).
        tag_ttl: seconds a tag version is kept after an invalidation (default ``86400.0``, a
            day). It must be at least the longest entry TTL (checked by the middleware).
        retry_interval: seconds between two background attempts to write pending
            invalidations (and a fence that could not be written) (default ``0.1``).
        max_pending: most tags kept pending in this process before the record is replaced by
            a flush of every entry (default ``10_000``).
        write_fence: seconds a write's fence outlives the process running it (renewed every
            third of that while the write runs): after a worker dies mid-write, the tags it
            was writing are not cached for at most this long (default ``10.0``). Hosts'
            clocks must agree to well within two thirds of it (a fence's end is a wall-clock
            time).
        wall_clock: seconds since the epoch (default :func:`time.time`), for fences.
        registry: the Prometheus registry of the ``{metric_prefix}cache_*`` metrics
            (default: prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of those metric names (default ``"prodkit_"``).
        logger: a structlog logger (default: structlog's ``prodkit.cache`` logger).
    """

    def __init__(
        self,
        store: CacheStore | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        tag_ttl: float = DEFAULT_TAG_TTL,
        retry_interval: float = 0.1,
        max_pending: int = 10_000,
        write_fence: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        logger: object | None = None,
    ) -> None:
        valid.positive_seconds("tag_ttl", tag_ttl, example=86400)
        valid.positive_seconds("retry_interval", retry_interval, example=0.1)
        valid.positive_int("max_pending", max_pending, example=10_000)
        valid.positive_seconds("write_fence", write_fence, example=10)
        self.store: CacheStore = _store_or_memory(store)
        #: Bumped by every invalidation in this process (see ``CacheMiddleware``'s flights).
        self.generation = 0
        self._near = self.store if isinstance(self.store, NearCacheStore) else None  # no breaker
        # None for the in-process memory store, which cannot fail or hang.
        self.breaker = (
            breaker if breaker is not None else _breaker_for(self.store, registry, metric_prefix)
        )
        self.tag_ttl, self.retry_interval = tag_ttl, retry_interval
        self.max_pending, self.write_fence = max_pending, write_fence
        self.wall_clock = wall_clock
        self.registry, self.metric_prefix = registry, metric_prefix
        self.logger = safe_logger("prodkit.cache", logger)
        self._invalidations, self._pending_gauge = _invalidation_metrics(registry, metric_prefix)
        # Tag keys whose new version has not reached the store, each with the number of the
        # failed invalidation that last wanted it (a replay that started before a later
        # failure must not clear that one).
        self._pending: dict[str, int] = {}
        self._failed_writes = 0
        self._flushing = False  # the record overflowed: FLUSH_KEYS stand for every tag
        self._replaying = False  # one replay at a time
        self._retrier: asyncio.Task[None] | None = None

    @property
    def flushable(self) -> bool:
        """Whether entries carry a flush tag: the store can fail, so invalidations can pend."""
        return self.breaker is not None

    @property
    def pending_invalidations(self) -> int:
        """How many tag keys this process still has to write to the store (0 normally)."""
        return len(self._pending)

    async def _call(self, func: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is None:  # an in-process store cannot be down or slow
            return await func()
        return await self.breaker.call(func)

    async def get(self, key: str, tags: Sequence[str]) -> Lookup:
        """Read ``key`` and tag versions through the breaker (raises ``BackendError``).

        While invalidations are pending, writes them first, or raises
        ``BackendUnavailableError`` rather than read what they would have made stale.
        """
        if self._pending:  # an outage left invalidations behind: nothing to read before them
            await self._settle()
        if self.breaker is None:  # every hit comes here: no closure, no extra frame
            return await self.store.get(key, tags=tags)
        if self._near is not None:
            found = self._near.peek(key, tags)
            if found is not None:
                return found
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

    def invalidating(self, tags: Iterable[str]) -> AbstractAsyncContextManager[bool]:
        """Fence ``tags`` around a write: ``async with cache.invalidating(["fund:42"]): ...``.

        Entering gives the tags new versions that say a write is under way (entries carrying
        the old ones are stale); from then until the block ends, no process stores or serves
        an entry carrying them, so a read that starts after the write's commit finds the new
        data whatever happens after the commit. Leaving gives them new versions again, with
        the fence lifted (or kept for other writes still under way). It enters ``True``, or
        ``False`` when the store could not be reached: the write should go ahead, and the
        tags are then invalidated as :meth:`invalidate_tags` does through an outage (kept
        pending, written again every ``retry_interval``, and so is the fence).

        Commit inside the block. A process that dies inside it leaves the fence for at most
        ``write_fence`` seconds; a write that outlasts that has its fence renewed.
        ``CacheMiddleware`` fences every write to a cached path this way.
        """
        return _Write(self, sorted({tag_key(tag) for tag in tags}))

    async def invalidate_tags(self, tags: Iterable[str]) -> bool:
        """Make every entry carrying one of ``tags`` stale, in every process sharing the store.

        One pipelined write of new tag versions; no ``KEYS``, no ``SCAN``, no per-entry work.
        Returns ``False`` when the store is unreachable: the tags are then kept pending and
        written in the background as soon as it answers (see the class docstring), and this
        process serves nothing from the store until they are. Fences of writes under way are
        kept (see :meth:`invalidating`).
        """
        keys = sorted({tag_key(tag) for tag in tags})
        return await self._bump(keys, FenceChange(now=self.wall_clock()))

    async def _bump(self, keys: list[str], change: FenceChange) -> bool:
        """New versions for tag ``keys``, or keep them pending; ``False`` if the store failed."""
        if not keys:
            return True
        # In-process single flights that started before this write must not be joined after it.
        self.generation += 1
        try:
            await self._call(lambda: self.store.bump(keys, self.tag_ttl, change))
        except BackendError as exc:
            self._invalidations.labels("error").inc()
            self._defer(keys, exc)
            return False
        self._invalidations.labels("ok").inc()
        return True

    async def _renew(self, keys: list[str], *, held: bool) -> bool:
        """Renew a live write's fence on ``keys`` (take it, if it never reached the store)."""
        now = self.wall_clock()
        change = FenceChange(
            now=now, until=now + self.write_fence, writers=0 if held else 1, at_least=1
        )
        try:
            await self._call(lambda: self.store.bump(keys, self.tag_ttl, change))
        except BackendError:
            return False  # the write's end, or the retries of pending tags, invalidate later
        return True

    def _defer(self, keys: list[str], error: BackendError) -> None:
        """Keep ``keys`` pending (or the flush, past ``max_pending``) and make sure of a retrier."""
        self._failed_writes += 1
        before = len(self._pending)
        targets: Sequence[str] = keys
        if self._flushing:
            targets = FLUSH_KEYS  # a flush is pending already: it covers these tags too
        elif before + sum(1 for key in keys if key not in self._pending) > self.max_pending:
            self._flushing = True
            self._pending.clear()
            targets = FLUSH_KEYS
            self.logger.error(
                "cache invalidations overflowed",
                pending=before + len(keys),
                max_pending=self.max_pending,
                detail="every cached entry will be made stale once the store answers",
            )
        for key in targets:
            self._pending[key] = self._failed_writes
        self._pending_gauge.inc(len(self._pending) - before)
        if not before:
            self.logger.warning(
                "cache invalidations pending",
                tags=keys,
                error=str(error),
                retry_interval=self.retry_interval,
            )
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(self._retry())

    async def _settle(self) -> None:
        """Before a read while invalidations are pending: write them, or fail the read open."""
        if self._replaying or not await self._replay(probe=False):
            raise BackendUnavailableError(
                "cache: invalidations are pending; reading now could serve stale entries"
            )

    async def _retry(self) -> None:
        """Write pending invalidations every ``retry_interval`` until none is left."""
        while self._pending:
            await asyncio.sleep(self.retry_interval)
            if self._replaying or not self._pending:  # a read is at it, or has done it
                continue
            try:
                await self._replay(probe=True)
            except Exception:  # a bug must not end the retries; BackendError is handled
                self.logger.exception("cache invalidation retry failed")

    async def _replay(self, *, probe: bool) -> bool:
        """Write every pending tag key in one pipeline; ``True`` when none is left.

        ``probe``: go to the store even while the breaker is open (a background attempt).
        """
        written = dict(self._pending)
        if not written:
            return True
        keys = sorted(written)

        async def bump() -> None:
            await self.store.bump(keys, self.tag_ttl, FenceChange(now=self.wall_clock()))

        self._replaying = True
        try:
            if probe and self.breaker is not None:
                await self.breaker.probe(bump)
            else:
                await self._call(bump)
        except BackendError:
            return False
        finally:
            self._replaying = False
        before = len(self._pending)
        for key, number in written.items():
            if self._pending.get(key) == number:  # not wanted again by a later failure
                del self._pending[key]
        self._pending_gauge.dec(before - len(self._pending))
        if self._flushing and not any(key in self._pending for key in FLUSH_KEYS):
            self._flushing = False
        if self._pending:
            return False
        self.logger.warning("cache invalidations written", count=len(keys))
        return True

    async def aclose(self) -> None:
        """Stop the retries, try pending invalidations once more, then close the store.

        Invalidations still pending then are lost (entries they cover live until their TTL):
        logged as ``cache invalidations lost``.
        """
        retrier, self._retrier = self._retrier, None
        if retrier is not None and not retrier.done():
            retrier.cancel()
            if retrier.get_loop() is asyncio.get_running_loop():
                await asyncio.wait({retrier})
        if self._pending and not self._replaying:
            try:
                await self._replay(probe=True)
            except Exception:  # not a store failure (those are handled): still close the store
                self.logger.exception("cache invalidation retry failed")
        if self._pending:
            self.logger.error(
                "cache invalidations lost",
                count=len(self._pending),
                tags=sorted(self._pending)[:20],
                detail="entries they cover live until their TTL",
            )
        await self.store.aclose()


class _Write:
    """One write's fence on its tag keys: :meth:`ResponseCache.invalidating`'s context."""

    __slots__ = ("cache", "ended", "held", "keys", "renewal", "timer")

    def __init__(self, cache: ResponseCache, keys: list[str]) -> None:
        self.cache = cache
        self.keys = keys
        self.held = False  # this write is counted in the fence in the store
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None
        self.renewal: asyncio.Task[None] | None = None

    async def __aenter__(self) -> bool:
        if not self.keys:
            return True
        cache = self.cache
        now = cache.wall_clock()
        change = FenceChange(now=now, until=now + cache.write_fence, writers=1, at_least=1)
        self.held = await cache._bump(self.keys, change)
        self._schedule()
        return self.held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        if self.renewal is not None and not self.renewal.done():
            # A renewal landing after the end would fence the tags again until it ran out.
            await asyncio.wait({self.renewal})
        if self.keys:
            now = self.cache.wall_clock()
            await self.cache._bump(self.keys, FenceChange(now=now, writers=-1 if self.held else 0))

    def _schedule(self) -> None:
        # A fence that did not reach the store is tried again as often as pending tags are.
        cache = self.cache
        delay = cache.write_fence / 3 if self.held else cache.retry_interval
        self.timer = asyncio.get_running_loop().call_later(delay, self._start_renewal)

    def _start_renewal(self) -> None:
        if not self.ended:
            self.renewal = asyncio.get_running_loop().create_task(self._renewal())

    async def _renewal(self) -> None:
        try:
            if await self.cache._renew(self.keys, held=self.held):
                self.held = True
        except Exception:  # a bug must not end the renewals; BackendError is handled
            self.cache.logger.exception("cache write fence renewal failed")
        if not self.ended:
            self._schedule()


__all__ = ["DEFAULT_TAG_TTL", "FLUSH_KEYS", "ResponseCache", "fenced", "flush_key", "tag_key"]
