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
    #: The claim's owner token, kept once completed (only it may withdraw the record).
    owner: str
    lease_until: float
    expires_at: float
    #: The ttl that set ``expires_at``: names the expiry queue that holds the record.
    ttl: float
    response: StoredResponse | None
    #: A response written before its work committed: answers 409 until confirmed or until
    #: ``lease_until``; not in the completed queue (never evicted) meanwhile.
    tentative: bool = False

    def pending(self, now: float) -> bool:
        """Whether a claim finds it in progress: no response yet, or a tentative one whose
        lease runs."""
        return self.response is None or (self.tentative and self.lease_until > now)


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
        clock: seconds, monotonic; replaceable in tests to move time. It must never go
            backwards (see below).

    Making room without scanning: besides the dict by key, every record sits in one *expiry
    queue*, the queue of the ttl that set its expiry, in the order its expiry was set; and a
    completed record also sits in the *completed queue*, in the order of completion. Records
    of one queue share a ttl, so with a clock that never goes backwards a queue is in expiry
    order and its expired records are at its head. A claim on a full store drops the expired
    head of every expiry queue (so every expired record, as a scan would), then, while still
    full, the head of the completed queue: the oldest completed record, live by then. The
    cost is one look per expiry queue plus one per record dropped (each record is dropped
    once), so ``claim``, ``complete``, ``release`` and ``get`` are amortised O(1) when the
    records hold a bounded number of distinct ttls (``IdempotencyMiddleware`` writes one).
    A caller giving each claim its own ttl gets one queue per record and the scan back.

    A clock that steps back breaks only the eviction order: an expired record may then sit
    behind a live head and survive a claim that evicts a live completed record instead.
    It is still never replayed, because every read checks the record's own expiry.
    """

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._expiry: dict[float, OrderedDict[str, _Entry]] = {}
        self._completed: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _enqueue(self, key: str, entry: _Entry) -> None:
        queue = self._expiry.get(entry.ttl)
        if queue is None:
            queue = self._expiry[entry.ttl] = OrderedDict()
        queue[key] = entry

    def _dequeue(self, key: str, entry: _Entry) -> None:
        queue = self._expiry[entry.ttl]
        del queue[key]
        if not queue:
            del self._expiry[entry.ttl]

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        self._dequeue(key, entry)
        if entry.response is not None and not entry.tentative:
            del self._completed[key]

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._drop(key, entry)
            return None
        return entry

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self.max_entries:
            return
        for queue in list(self._expiry.values()):
            while queue:
                key, entry = next(iter(queue.items()))
                if entry.expires_at > now:
                    break
                self._drop(key, entry)
        while len(self._entries) >= self.max_entries:
            if not self._completed:
                raise BackendError(
                    f"memory idempotency store is full ({self.max_entries} requests in progress)"
                )
            self._drop(*next(iter(self._completed.items())))  # the oldest completed

    async def claim(
        self, key: str, fingerprint: bytes, owner: str, *, lease: float, ttl: float
    ) -> Claim:
        """See :meth:`prodkit.idempotency.IdempotencyStore.claim`."""
        now = self._clock()
        entry = self._live(key, now)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return Claim(ClaimOutcome.MISMATCH)
            if entry.response is not None and not entry.pending(now):
                return Claim(ClaimOutcome.COMPLETED, response=entry.response)
            if entry.lease_until > now:
                return Claim(ClaimOutcome.IN_PROGRESS, retry_after=entry.lease_until - now)
            self._drop(key, entry)
        self._make_room(now)
        entry = _Entry(fingerprint, owner, now + lease, now + ttl, ttl, None)
        self._entries[key] = entry
        self._enqueue(key, entry)
        return Claim(ClaimOutcome.ACQUIRED)

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.complete`."""
        return self._complete(key, owner, response, ttl, tentative=False)

    async def complete_tentatively(
        self, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.complete_tentatively`."""
        return self._complete(key, owner, response, ttl, tentative=True)

    def _complete(
        self, key: str, owner: str, response: StoredResponse, ttl: float, *, tentative: bool
    ) -> bool:
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        if ttl == entry.ttl:
            self._expiry[ttl].move_to_end(key)
        else:
            self._dequeue(key, entry)
            entry.ttl = ttl
            self._enqueue(key, entry)
        entry.response = response  # the owner stays: it alone may withdraw the record
        entry.expires_at = now + ttl
        entry.tentative = tentative
        if not tentative:
            self._completed[key] = entry
        return True

    async def confirm(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.confirm`."""
        entry = self._live(key, self._clock())
        if entry is None or not entry.tentative or entry.owner != owner:
            return False
        entry.tentative = False
        self._completed[key] = entry
        return True

    async def release(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.release`."""
        entry = self._live(key, self._clock())
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        self._drop(key, entry)
        return True

    async def get(self, key: str) -> IdempotencyRecord | None:
        """See :meth:`prodkit.idempotency.IdempotencyStore.get`."""
        now = self._clock()
        entry = self._live(key, now)
        if entry is None:
            return None
        pending = entry.pending(now)
        owner = entry.owner if pending else None
        tentative = pending and entry.response is not None
        return IdempotencyRecord(entry.fingerprint, owner, entry.response, tentative)

    async def withdraw(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.withdraw`."""
        entry = self._live(key, self._clock())
        if entry is None or entry.response is None or entry.owner != owner:
            return False
        self._drop(key, entry)
        return True

    async def aclose(self) -> None:
        """Nothing to release: the records live in this process's memory."""


__all__ = ["MemoryIdempotencyStore"]
