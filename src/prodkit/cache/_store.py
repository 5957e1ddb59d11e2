"""The response cache's storage contract: a :class:`CacheStore` protocol and what it speaks.

Stores deal in bytes and two small dataclasses, never in a framework's response. Every
operation is one round trip and its name says what it guarantees:

* :meth:`CacheStore.get` reads a value *and* the current versions of some tags, together, so a
  hit costs one round trip while an entry stamped with an older tag version reads as stale;
* :meth:`CacheStore.set` writes a value with an explicit TTL (``SET … PX`` in Redis, never
  ``SET`` then ``EXPIRE``);
* :meth:`CacheStore.bump` gives tags new, never-repeating versions (invalidation without
  ``KEYS`` or ``SCAN``);
* :meth:`CacheStore.claim` / :meth:`CacheStore.release` are a lease lock with an owner token
  (``SET NX PX`` and a compare-and-delete), for single-flight across processes, and
  :meth:`CacheStore.complete` stores a computed entry and releases its lease together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Lookup:
    """What :meth:`CacheStore.get` found.

    Attributes:
        value: the stored bytes, or ``None`` when the key is missing or expired.
        versions: the current version of each tag asked for, in order; ``""`` for a tag that
            was never invalidated (or whose version expired, see :meth:`CacheStore.bump`).
    """

    value: bytes | None
    versions: tuple[str, ...] = ()


@runtime_checkable
class CacheStore(Protocol):
    """Storage behind :class:`~prodkit.cache.ResponseCache`; implement it for another backend.

    Keys are short ASCII strings built by the cache (the store may add its own prefix). TTLs
    are seconds (floats); a store must never keep a value past its TTL. Failures raise any
    exception: the cache wraps calls in a circuit breaker and fails open.
    """

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        """Return the value under ``key`` and the current versions of ``tags``, atomically enough
        that both come from one round trip."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds, replacing what was there."""
        ...

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        """Store every ``(key, value)`` for ``ttl`` seconds, then :meth:`release` ``lock`` if
        ``token`` holds it, in one round trip (the end of a single-flight computation)."""
        ...

    async def bump(self, tags: Sequence[str], ttl: float) -> None:
        """Give every tag a new version that no earlier version equals, kept ``ttl`` seconds.

        ``ttl`` must be at least the longest entry TTL: once a version expires, the tag reads
        as ``""`` again, which is only safe when every entry stamped before the first bump is
        gone too.
        """
        ...

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """Take the lock ``key`` for ``lease`` seconds if nobody holds it; ``True`` if taken."""
        ...

    async def release(self, key: str, token: str) -> bool:
        """Drop the lock ``key`` only if ``token`` still holds it; ``True`` if it did."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


__all__ = ["CacheStore", "Lookup"]
