"""An in-process idempotency store: one worker process only, bounded, with an injectable clock."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    StoredResponse,
)


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    owner: str | None
    lease_until: float
    expires_at: float
    response: StoredResponse | None


class MemoryIdempotencyStore:
    """Keep idempotency records in a dict: for tests, development and single-process services.

    Records are not shared between worker processes (``--workers 2`` gives each its own store,
    so a retry landing on the other worker runs again): use PostgreSQL or Redis there.
    Operations are atomic because they never await.

    Arguments:
        max_entries: bound on the number of records. When full, expired records go first,
            then the oldest *completed* ones; in-progress claims are never evicted (if all
            records are in progress a claim fails with :class:`~prodkit.BackendError`,
            which the middleware answers per its failure policy).
        clock: seconds, monotonic; replaceable in tests to move time.
    """

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self.max_entries:
            return
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            victim = next((k for k, e in self._entries.items() if e.response is not None), None)
            if victim is None:
                raise BackendError(
                    f"memory idempotency store is full ({self.max_entries} requests in progress)"
                )
            del self._entries[victim]

    async def claim(
        self, key: str, fingerprint: bytes, owner: str, *, lease: float, ttl: float
    ) -> Claim:
        """See :meth:`IdempotencyStore.claim`."""
        now = self._clock()
        entry = self._live(key, now)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return Claim(ClaimOutcome.MISMATCH)
            if entry.response is not None:
                return Claim(ClaimOutcome.COMPLETED, response=entry.response)
            if entry.lease_until > now:
                return Claim(ClaimOutcome.IN_PROGRESS, retry_after=entry.lease_until - now)
            del self._entries[key]
        self._make_room(now)
        self._entries[key] = _Entry(fingerprint, owner, now + lease, now + ttl, None)
        return Claim(ClaimOutcome.ACQUIRED)

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        """See :meth:`IdempotencyStore.complete`."""
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        entry.owner = None
        entry.response = response
        entry.expires_at = now + ttl
        self._entries.move_to_end(key)
        return True

    async def release(self, key: str, owner: str) -> bool:
        """See :meth:`IdempotencyStore.release`."""
        entry = self._live(key, self._clock())
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        del self._entries[key]
        return True

    async def get(self, key: str) -> IdempotencyRecord | None:
        """See :meth:`IdempotencyStore.get`."""
        entry = self._live(key, self._clock())
        if entry is None:
            return None
        return IdempotencyRecord(entry.fingerprint, entry.owner, entry.response)

    async def aclose(self) -> None:
        """Nothing to release: the records live in this process's memory."""


__all__ = ["MemoryIdempotencyStore"]
