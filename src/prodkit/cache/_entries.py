"""Reading and writing one request's entries through the :class:`ResponseCache`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prodkit._core.exceptions import BackendError
from prodkit.cache._cache import ResponseCache, fenced
from prodkit.cache._entry import (
    UNSTORABLE_MARKER,
    CachedResponse,
    DecodedEntries,
    decode_vary_record,
    encode_vary_record,
    freshness_lifetime,
)
from prodkit.cache._request import CacheRequest

Values = tuple[list[tuple[str, bytes]], float]


class Entries:
    """A request's entry: looked up (variants resolved, stale ones dropped) and stored.

    Remembers the last entries it decoded (see :class:`DecodedEntries`), so a repeated hit
    neither parses nor copies the body. ``wall_clock`` dates entries and tells their age.
    """

    __slots__ = ("cache", "decoded", "wall_clock")

    def __init__(self, cache: ResponseCache, wall_clock: Callable[[], float]) -> None:
        self.cache = cache
        self.wall_clock = wall_clock
        self.decoded = DecodedEntries()

    def age(self, entry: CachedResponse) -> int:
        """Whole seconds since ``entry`` was generated (its ``Age``, RFC 9111 section 5.1)."""
        return max(0, int(self.wall_clock() - entry.stored_at))

    def usable(self, entry: CachedResponse | None, max_age: int | None) -> CachedResponse | None:
        """``entry`` unless it is older than the request's ``max-age``."""
        if entry is None or (max_age is not None and self.age(entry) > max_age):
            return None
        return entry

    async def lookup(self, request: CacheRequest) -> CachedResponse | None:
        """The fresh entry for ``request``, or ``None`` (raises ``BackendError``).

        Records the tags' current versions on ``request`` (a computed entry is stamped with
        them), whether they say a write is under way (then nothing is stored), and whether the
        last answer for the key could not be stored.
        """
        found = await self.cache.get(request.entry_key, request.tags)
        request.versions = found.versions
        entry = await self._decode(request, found.value)
        if entry is not None and entry.versions == found.versions:
            return entry
        # A miss (or an entry a write made stale): the one place that looks for a fence, as
        # only an entry computed now could be stored. A hit never carries a live fence.
        request.fenced = fenced(found.versions, self.cache.wall_clock())
        return None

    def held(self, request: CacheRequest) -> CachedResponse | None:
        """The fresh entry for ``request`` if a near cache holds it, found without suspending;
        ``None``: ask :meth:`lookup` (which also reads variants and the unstorable marker)."""
        near = self.cache._near
        if near is None or self.cache.pending_invalidations:
            return None
        found = near.held(request.entry_key, request.tags)
        value = None if found is None else found.value
        if value is None or value == UNSTORABLE_MARKER or decode_vary_record(value) is not None:
            return None
        try:
            entry = self.decoded.decode(request.entry_key, value)
        except (ValueError, KeyError, TypeError):
            return None
        if found is None or entry.versions != found.versions:
            return None  # counted by the lookup that follows, if that one answers
        near.count_hit()
        request.versions = found.versions
        return entry

    async def _decode(self, request: CacheRequest, value: bytes | None) -> CachedResponse | None:
        """The entry stored under the request's key (its variant, for a vary record)."""
        if value is None:
            return None
        if value == UNSTORABLE_MARKER:
            request.unstorable = True
            return None
        key = request.entry_key
        names = decode_vary_record(value)
        if names is not None:
            key = request.variant_key(names)
            value = (await self.cache.get(key, ())).value
            if value is None:
                return None
        try:
            return self.decoded.decode(key, value)
        except (ValueError, KeyError, TypeError):
            return None  # written by an incompatible version: treat as a miss

    async def versions_before(self, request: CacheRequest) -> tuple[str, ...]:
        """The tags' versions *before* the app runs: a write during the call leaves the entry stale."""
        if request.versions is not None:
            return request.versions
        try:
            versions = (await self.cache.get(request.entry_key, request.tags)).versions
        except BackendError:
            return unreadable_versions(request)
        request.fenced = fenced(versions, self.cache.wall_clock())
        return versions

    async def store(self, request: CacheRequest, entry: CachedResponse | None) -> None:
        """Store what the app answered (see :func:`values`); store failures are ignored."""
        stored, ttl = values(request, entry)
        with contextlib.suppress(BackendError):
            for key, value in stored:
                await self.cache.set(key, value, ttl)

    async def complete(
        self, request: CacheRequest, entry: CachedResponse | None, token: str
    ) -> None:
        """Store what the app answered and release the lease ``token`` holds, in one round trip.

        Waiters then find the entry as soon as the lease is gone. Store failures are ignored.
        """
        stored, ttl = values(request, entry)
        with contextlib.suppress(BackendError):
            await self.cache.complete(stored, ttl, request.lock_key, token)


def unreadable_versions(request: CacheRequest) -> tuple[str, ...]:
    """Tag versions for a store that did not answer: never equal to real ones, so not reusable."""
    return ("?",) * len(request.tags)


def values(request: CacheRequest, entry: CachedResponse | None) -> Values:
    """What to store for a computed response, and for how long.

    Nothing for an unstorable response, or one computed while a write to its tags was under
    way, except, briefly, a marker that tells workers waiting on this key's lease not to wait
    for an entry next time.
    """
    if entry is None or request.fenced:
        return [(request.entry_key, UNSTORABLE_MARKER)], min(request.ttl, 1.0)
    ttl = request.ttl
    # The response's own freshness (Cache-Control, else Expires) can shorten the rule's TTL,
    # never lengthen it.
    lifetime = freshness_lifetime(entry.headers, entry.stored_at)
    if lifetime is not None:
        ttl = min(ttl, lifetime)
    if ttl <= 0:
        return [], 0.0
    data = entry.encode()
    if entry.vary:
        return [
            (request.entry_key, encode_vary_record(entry.vary)),
            (request.variant_key(entry.vary), data),
        ], ttl
    return [(request.entry_key, data)], ttl


__all__ = ["Entries", "unreadable_versions", "values"]
