"""A bounded in-process LRU :class:`~prodkit.cache.CacheStore` (entries *and* bytes capped)."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from prodkit._core.exceptions import ConfigurationError
from prodkit.cache._store import FenceChange, Lookup, fenced_version, plain_change

_OVERHEAD = 64  # bytes charged per entry on top of key and value, for the bookkeeping


class MemoryCacheStore:
    """An LRU cache store in this process's memory, bounded by entry count and by bytes.

    Least recently used entries are evicted to stay within both ``max_entries`` and
    ``max_bytes`` (the key, the value and a small fixed overhead count); a value larger than
    ``max_bytes`` on its own is not stored. Expired entries are dropped when read or evicted.

    Tag versions live apart from entries (bounded by ``max_tags``) so that caching many
    responses never evicts an invalidation. If the tag table itself is full, the oldest tag
    is dropped *and every entry with it*, because an entry stamped before that tag's last
    bump must not become fresh again.

    Every worker process has its own copy: use :class:`~prodkit.cache.RedisCacheStore` to
    share entries, invalidations and single-flight locks between workers.

    Arguments:
        max_entries: most entries kept at once.
        max_bytes: most bytes (keys + values + overhead) kept at once.
        max_tags: most tag versions kept at once.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_tags: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be at least 1 byte")
        if max_tags < 1:
            raise ConfigurationError("max_tags must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_tags = max_tags
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._tags: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}
        self._bytes = 0
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes currently charged against ``max_bytes``."""
        return self._bytes

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + _OVERHEAD

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= self._cost(key, value)

    def _version(self, tag: str, now: float) -> str:
        found = self._tags.get(tag)
        if found is None:
            return ""
        if found[1] <= now:
            del self._tags[tag]
            return ""
        return found[0]

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        """Return the entry (refreshing its recency) and the tags' versions."""
        now = self._clock()
        versions = tuple([self._version(tag, now) for tag in tags])
        found = self._entries.get(key)
        if found is None:
            return Lookup(None, versions)
        if found[1] <= now:
            self._drop(key)
            return Lookup(None, versions)
        self._entries.move_to_end(key)
        return Lookup(found[0], versions)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting least recently used entries to fit."""
        if key in self._entries:
            self._drop(key)
        cost = self._cost(key, value)
        if ttl <= 0 or cost > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + cost > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))
        self._entries[key] = (value, self._clock() + ttl)
        self._bytes += cost

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        """Store the values, then release the lock if ``token`` holds it."""
        for key, value in values:
            await self.set(key, value, ttl)
        await self.release(lock, token)

    async def bump(
        self, tags: Sequence[str], ttl: float, change: FenceChange | None = None
    ) -> None:
        """Give each tag a fresh version (a process-wide counter, never reused), its fence
        changed by ``change`` (see :class:`~prodkit.cache.FenceChange`)."""
        change = change if change is not None else plain_change()
        now = self._clock()
        expires = now + ttl
        for tag in tags:
            current = self._version(tag, now)
            self._tags.pop(tag, None)
            if len(self._tags) >= self.max_tags:
                # Forgetting a version would make older entries fresh again: forget them too.
                self._tags.popitem(last=False)
                self._entries.clear()
                self._bytes = 0
            version = fenced_version(current, change, str(next(self._counter)))
            self._tags[tag] = (version, expires)

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """Take the lock if it is free or its lease ran out."""
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return False
        if len(self._locks) >= self.max_entries:
            self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
            if len(self._locks) >= self.max_entries:
                return False
        self._locks[key] = (token, now + lease)
        return True

    async def release(self, key: str, token: str) -> bool:
        """Drop the lock if ``token`` holds it."""
        held = self._locks.get(key)
        if held is None or held[0] != token:
            return False
        del self._locks[key]
        return True

    async def aclose(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._tags.clear()
        self._locks.clear()
        self._bytes = 0


__all__ = ["MemoryCacheStore"]
