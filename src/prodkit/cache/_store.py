"""The response cache's storage contract: a :class:`CacheStore` protocol and what it speaks.

Stores deal in bytes and two small dataclasses, never in a framework's response. Every
operation is one round trip and its name says what it guarantees:

* :meth:`CacheStore.get` reads a value *and* the current versions of some tags, together, so a
  hit costs one round trip while an entry stamped with an older tag version reads as stale;
* :meth:`CacheStore.set` writes a value with an explicit TTL (``SET … PX`` in Redis, never
  ``SET`` then ``EXPIRE``);
* :meth:`CacheStore.bump` gives tags new, never-repeating versions (invalidation without
  ``KEYS`` or ``SCAN``), and keeps the count of the writes under way on each (its *fence*,
  see :class:`FenceChange`);
* :meth:`CacheStore.claim` / :meth:`CacheStore.release` are a lease lock with an owner token
  (``SET NX PX`` and a compare-and-delete), for single-flight across processes, and
  :meth:`CacheStore.complete` stores a computed entry and releases its lease together.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

_FENCED = re.compile(r"~(\d{1,16})\.(\d{1,9})\.")


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


@dataclass(frozen=True, slots=True)
class FenceChange:
    """What :meth:`CacheStore.bump` does to the *fence* of each tag it gives a new version.

    A tag is fenced while writes to the data it stands for are under way: the cache then
    neither stores nor serves entries carrying it. The fence lives in the tag's version,
    ``~<until, epoch milliseconds>.<writes>.<unique part>`` (a plain version is the unique part
    alone), so a read learns of it in the round trip that reads the versions anyway. A fence
    ends when its count of writes falls to 0 or at ``until``, whichever comes first, so a
    write whose process died holds it until ``until`` at most.

    A bump computes, per tag: ``writes = max(writes + self.writers, self.at_least)`` and
    ``until = max(until, self.until)``, from the tag's current fence (none, or one that ended
    by ``now``: 0 writes, until 0); the new version is fenced when ``writes > 0`` and
    ``until > now``, plain otherwise. :func:`fenced_version` and :func:`fence_of` spell and read
    versions.

    Attributes:
        now: the writer's wall clock, seconds since the epoch.
        until: keep the fence at least until then (seconds since the epoch; default ``0.0``:
            no change).
        writers: added to the count of writes (1: a write begins, -1: it ends; default
            ``0``: neither).
        at_least: the count afterwards is at least this (1: a write renewing its fence;
            default ``0``: no minimum).
    """

    now: float
    until: float = 0.0
    writers: int = 0
    at_least: int = 0


def fence_of(version: str, now: float) -> tuple[int, int]:
    """The fence of a tag version at ``now``: ``(until in epoch milliseconds, writes)``, or
    ``(0, 0)`` for a plain version or a fence that has ended."""
    found = _FENCED.match(version)
    if found is None:
        return 0, 0
    until, writes = int(found[1]), int(found[2])
    if until <= now * 1000 or writes <= 0:
        return 0, 0
    return until, writes


def fenced_version(current: str | None, change: FenceChange, unique: str) -> str:
    """The version that ``change`` makes of a tag whose version is ``current`` (``None``:
    none yet); ``unique`` must be a value no earlier version of the tag had."""
    until, writes = fence_of(current or "", change.now)
    writes = max(writes + change.writers, change.at_least)
    until = max(until, int(change.until * 1000))
    if writes > 0 and until > change.now * 1000:
        return f"~{until}.{writes}.{unique}"
    return unique


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

    async def bump(
        self, tags: Sequence[str], ttl: float, change: FenceChange | None = None
    ) -> None:
        """Give every tag a new version that no earlier version equals, kept ``ttl`` seconds.

        ``ttl`` must be at least the longest entry TTL: once a version expires, the tag reads
        as ``""`` again, which is only safe when every entry stamped before the first bump is
        gone too. Each tag's new version carries its fence as ``change`` makes it (see
        :class:`FenceChange`; ``None``: no change, at the store's own clock), computed from
        the current version atomically (:func:`fenced_version`), in one round trip.
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


def plain_change() -> FenceChange:
    """A bump that changes no fence, at this host's clock."""
    return FenceChange(now=time.time())


__all__ = ["CacheStore", "FenceChange", "Lookup", "fence_of", "fenced_version", "plain_change"]
