"""The idempotency store protocol and the small values it speaks.

A store keeps one *record* per scoped idempotency key. A record is either *in progress* (a
request claimed the key and its handler is running; the claim carries an owner token and a
lease), *tentative* (a response written while the work's commit is still running: it answers
like an in-progress claim until it is confirmed, or until its lease is over) or *completed*
(the response to replay). Every record has an expiry that is written by
the claim itself, so an expired record is replaced in the same atomic step that claims it: there
is never a gap between "delete the old record" and "insert the new one".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from prodkit._core.types import RawHeaders


class ClaimOutcome(enum.Enum):
    """What :meth:`IdempotencyStore.claim` found."""

    #: No live record (absent, expired, or an in-progress claim whose lease ran out with the
    #: same fingerprint): the caller now owns the key and must run the handler.
    ACQUIRED = "acquired"
    #: A completed record with the same fingerprint: replay :attr:`Claim.response`.
    COMPLETED = "completed"
    #: Another request with the same fingerprint holds a live lease.
    IN_PROGRESS = "in_progress"
    #: A live record exists for a *different* request fingerprint; nothing was changed.
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as recorded for replay: status, allow-listed headers, complete body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def raw_headers(self) -> RawHeaders:
        """The headers as a fresh ASGI header list."""
        return list(self.headers)


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of :meth:`IdempotencyStore.claim`.

    Attributes:
        outcome: see :class:`ClaimOutcome`.
        response: the recorded response when ``outcome`` is ``COMPLETED``.
        retry_after: seconds left on the other request's lease when ``IN_PROGRESS``.
    """

    outcome: ClaimOutcome
    response: StoredResponse | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A live record as returned by :meth:`IdempotencyStore.get` (for inspection and tests).

    ``owner`` is the claim's owner token while in progress (or tentative), ``None`` once
    completed; ``response`` is set once completed, and while tentative; ``tentative`` is true
    while the response awaits its confirmation and its lease runs (a retry then gets 409).
    """

    fingerprint: bytes
    owner: str | None
    response: StoredResponse | None
    tentative: bool = False

    @property
    def completed(self) -> bool:
        """Whether the record holds a response to replay."""
        return self.response is not None and not self.tentative


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where :class:`~prodkit.IdempotencyMiddleware` keeps its records (a pluggable part).

    Implementations: :class:`~prodkit.idempotency.MemoryIdempotencyStore` (one process),
    :class:`~prodkit.idempotency.PostgresIdempotencyStore`,
    :class:`~prodkit.idempotency.RedisIdempotencyStore`. Every method is one atomic operation
    (a single round trip for the network stores); durations are seconds. Keys are opaque,
    already scoped and hashed by the middleware (ASCII, at most 128 chars). Driver failures
    are raised as :class:`~prodkit.BackendError`.
    """

    async def claim(
        self, key: str, fingerprint: bytes, owner: str, *, lease: float, ttl: float
    ) -> Claim:
        """Atomically claim ``key`` for ``owner`` unless a live record stands in the way.

        A record is live until its expiry (``ttl`` seconds after the claim that wrote it). The
        claim succeeds (``ACQUIRED``) when there is no live record, or when the live record is
        in progress with the same ``fingerprint`` and its lease (``lease`` seconds from its
        claim) has run out: a crashed request never leaves its key stuck. Otherwise nothing
        changes and the outcome says why (``COMPLETED``, ``IN_PROGRESS``, ``MISMATCH``). A
        tentative record (see :meth:`WithdrawingIdempotencyStore.complete_tentatively`) is
        ``IN_PROGRESS`` while its lease runs and ``COMPLETED`` after.
        """
        ...

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        """Record ``response`` if ``owner`` still holds the claim; the record lives ``ttl`` more seconds.

        Returns ``False`` (and changes nothing) when the claim was lost, e.g. a handler that
        outlived its lease after another request took the key over.
        """
        ...

    async def release(self, key: str, owner: str) -> bool:
        """Delete ``owner``'s in-progress claim so that a retry runs the handler; ``False`` if not held."""
        ...

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Return the live record for ``key``, or ``None``."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections (a store that made its own pool or client closes it)."""
        ...


@runtime_checkable
class TransactionalIdempotencyStore(IdempotencyStore, Protocol):
    """A store whose records can be completed inside the application's own database transaction.

    :class:`~prodkit.idempotency.PostgresIdempotencyStore` is one: :meth:`complete_in` writes
    the record on a connection the handler passes (the same database as the store's table), so
    the handler's work and the record commit together or not at all. Used through
    :meth:`IdempotencyClaim.complete_in() <prodkit.idempotency.IdempotencyClaim.complete_in>`.
    """

    async def complete_in(
        self, connection: Any, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """Like :meth:`IdempotencyStore.complete`, as one statement on ``connection``.

        ``connection`` must be inside a transaction; nothing is committed here. Returns
        ``False`` when ``owner`` no longer holds the claim (the caller must then roll back).
        """
        ...


@runtime_checkable
class RetryingIdempotencyStore(IdempotencyStore, Protocol):
    """A store that keeps trying a release that failed, so that a key is not stuck after an outage.

    :class:`~prodkit.idempotency.PostgresIdempotencyStore` and
    :class:`~prodkit.idempotency.RedisIdempotencyStore` are ones. When
    :meth:`IdempotencyStore.release` fails, the middleware hands the release to
    :meth:`retry_release`; ``aclose()`` tries what is still pending once more.
    """

    def retry_release(self, key: str, owner: str, *, within: float) -> None:
        """Retry :meth:`IdempotencyStore.release` in the background, with a bounded backoff,
        until it lands or ``within`` seconds pass (when the claim's lease is over and a retry
        may take the key over anyway). Returns at once."""
        ...

    def retry_withdraw(self, key: str, owner: str, *, within: float) -> None:
        """Retry :meth:`WithdrawingIdempotencyStore.withdraw` in the background, like
        :meth:`retry_release`, until it lands or ``within`` seconds pass (the record's ttl).
        Returns at once."""
        ...


@runtime_checkable
class WithdrawingIdempotencyStore(IdempotencyStore, Protocol):
    """A store that can record a response before its work has committed, then confirm or
    take it back.

    Every store of prodkit is one. Used by
    :meth:`IdempotencyClaim.complete_during() <prodkit.idempotency.IdempotencyClaim.complete_during>`,
    which records a response while the handler's commit is still in flight: tentatively
    (:meth:`complete_tentatively`), confirmed (:meth:`confirm`) once the commit succeeded,
    withdrawn (:meth:`withdraw`) when it failed.
    """

    async def complete_tentatively(
        self, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """Like :meth:`IdempotencyStore.complete`, but the record stays *tentative*.

        A claim that finds it answers ``IN_PROGRESS`` while the claim's lease runs (the
        work's outcome is not known yet), and ``COMPLETED`` once the lease is over: a process
        that died after its commit leaves a record that is replayed then. The lease is the
        claim's (not renewed); the record lives ``ttl`` more seconds.
        """
        ...

    async def confirm(self, key: str, owner: str) -> bool:
        """Make ``owner``'s tentative record final (replayed at once); ``False`` if there is none."""
        ...

    async def withdraw(self, key: str, owner: str) -> bool:
        """Delete the record ``owner`` completed (tentative or final); ``False`` (nothing
        changed) if there is none.

        For a response recorded before the outcome of its work was known: the work did not
        commit, so a retry must run the handler again rather than replay it.
        """
        ...


__all__ = [
    "Claim",
    "ClaimOutcome",
    "IdempotencyRecord",
    "IdempotencyStore",
    "RetryingIdempotencyStore",
    "StoredResponse",
    "TransactionalIdempotencyStore",
    "WithdrawingIdempotencyStore",
]
