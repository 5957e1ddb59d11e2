"""In-process rate-limit store: exact and fast, but per process (each worker counts alone)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prodkit._core.exceptions import ConfigurationError
from prodkit.ratelimit._policy import RateLimitPolicy
from prodkit.ratelimit._store import RateLimitDecision, decision


class MemoryRateLimitStore:
    """A :class:`~prodkit.ratelimit.RateLimitStore` in a dict, with LRU eviction.

    Each key holds one float (its GCRA theoretical arrival time). :meth:`consume` never awaits,
    so it is atomic on an event loop; it is not thread-safe. Keys past ``max_keys`` are evicted
    least recently used first; an evicted key starts again with its full quota, so size
    ``max_keys`` above the number of clients active within one window.

    Arguments:
        max_keys: how many (policy, client) entries to keep (default ``100_000``).
        clock: seconds as a float, monotonic (default :func:`time.monotonic`); tests inject one.
    """

    __slots__ = ("_clock", "_entries", "max_keys")

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ConfigurationError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._entries: dict[tuple[str, str], float] = {}

    async def consume(self, key: str, policy: RateLimitPolicy, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units of ``policy`` for ``key`` if they fit (see the GCRA in ``store``)."""
        now = self._clock()
        entries = self._entries
        slot = (policy.name, key)
        tat = entries.pop(slot, None)  # re-inserted below: dict order is recency order
        debt = 0.0 if tat is None or tat <= now else tat - now
        # gcra(), inlined: this runs for every request the memory store limits.
        added = debt + cost * policy.interval
        allowed = added <= policy.ceiling
        if allowed:
            debt = added
        if debt > 0.0:
            entries[slot] = now + debt
            if len(entries) > self.max_keys:
                del entries[next(iter(entries))]
        return decision(allowed, debt, policy, cost)

    async def reset(self, key: str, policy: RateLimitPolicy) -> None:
        """Forget ``key``'s usage of ``policy``."""
        self._entries.pop((policy.name, key), None)

    async def aclose(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["MemoryRateLimitStore"]
