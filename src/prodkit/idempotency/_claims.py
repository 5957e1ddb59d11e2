"""The claim a keyed request holds while its handler runs, as the handler sees it.

A handler that writes to the database holding the table of a
:class:`~prodkit.idempotency.PostgresIdempotencyStore` can commit its work and the idempotency
record in one transaction with :meth:`IdempotencyClaim.complete_in`; any other handler can
record its response right after its commit with :meth:`IdempotencyClaim.complete`. See ``docs/idempotency.md`` ("Exactly once
through crashes").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from prodkit._core.exceptions import BackendError
from prodkit._core.logs import safe_logger
from prodkit._core.problems import Problem
from prodkit._core.state import REQUEST_STATE_KEY
from prodkit._core.types import Scope
from prodkit.idempotency._store import (
    IdempotencyStore,
    RetryingIdempotencyStore,
    StoredResponse,
    TransactionalIdempotencyStore,
    WithdrawingIdempotencyStore,
)

#: The problem code of :class:`ClaimLost` (the same as a retry that finds the key in progress).
IN_PROGRESS = "IDEMPOTENCY_REQUEST_IN_PROGRESS"

#: Seconds one attempt to record a response may take (the breaker's timeout does not apply:
#: the handler has run, so the record is worth waiting for).
COMPLETE_TIMEOUT = 5.0

Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]
#: What decides whether a response is recorded, and what its record is: ``(status, raw
#: headers, body) -> record``, or ``None`` when it is not to be recorded.
Recordable = Callable[[int, list[tuple[bytes, bytes]], bytes], StoredResponse | None]
T = TypeVar("T")


class ClaimLost(Problem):
    """Raised by :meth:`IdempotencyClaim.complete_in` when the request no longer owns its key.

    The handler outlived its lease and a retry took the key over (and runs, or ran, the
    handler itself). Let it propagate out of the transaction so that this request's writes
    roll back: the client gets ``409 IDEMPOTENCY_REQUEST_IN_PROGRESS`` with ``Retry-After: 1``,
    and its retry replays the other request's response.
    """

    def __init__(self) -> None:
        super().__init__(
            409,
            IN_PROGRESS,
            "This request's Idempotency-Key was taken over by a retry while it ran, so its "
            "work was rolled back; retry with the same key to get the retry's response.",
            headers={"Retry-After": "1"},
        )


class IdempotencyClaim:
    """The idempotency key a request holds while its handler runs (see :func:`current_claim`).

    :class:`~prodkit.IdempotencyMiddleware` makes one per claimed request; a handler gets it
    from :func:`current_claim`.

    Arguments:
        store: the store that holds the claim.
        store_key: the key as the store knows it.
        owner: the owner token the claim was taken with.
        ttl: seconds a record lives.
        record: ``(status, raw headers, body) -> StoredResponse``, or ``None`` when the
            middleware would not record that response (its own rules: status, headers, size).
        logger: a structlog logger (default: structlog's ``prodkit.idempotency`` logger).

    Attributes:
        completed: whether :meth:`complete_in` or :meth:`complete` recorded the response (the
            middleware then does not record it again).
        response: the response they recorded, if any.
    """

    __slots__ = ("_logger", "_owner", "_record", "_store", "_store_key", "_ttl", "response")

    def __init__(
        self,
        store: IdempotencyStore,
        store_key: str,
        owner: str,
        *,
        ttl: float,
        record: Recordable,
        logger: Any | None = None,
    ) -> None:
        self._store = store
        self._store_key = store_key
        self._owner = owner
        self._ttl = ttl
        self._record = record
        self._logger = safe_logger("prodkit.idempotency", logger)
        self.response: StoredResponse | None = None

    @property
    def completed(self) -> bool:
        """Whether the response was recorded by the handler (see :meth:`complete_in`)."""
        return self.response is not None

    def _recordable(self, status: int, headers: Headers, body: bytes) -> StoredResponse | None:
        """The record of this response, or ``None`` when the middleware would not record it."""
        if isinstance(headers, Mapping):
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        else:
            raw = [(k.lower(), v) for k, v in headers]
        return self._record(status, raw, body)

    async def complete_in(
        self, connection: Any, status: int, headers: Headers, body: bytes
    ) -> bool:
        """Record the response in ``connection``'s open transaction, before the handler commits.

        Call it after the handler's writes and before its commit, with exactly the status,
        headers and body the handler then returns: the record (status, body and the
        middleware's ``stored_headers``) commits with the writes, so a crash at any instant
        leaves either neither (a retry runs the handler) or both (a retry replays).

        Returns ``False``, doing nothing, when the store keeps its records elsewhere (memory,
        Redis), or when the middleware would not record this response (a 5xx, a 408 or 429, a
        ``Retry-After``, a body over ``max_response_bytes``): the middleware then deals with
        the response after the handler, as usual.

        Raises:
            ClaimLost: this request lost its key to a retry; let it propagate so that the
                transaction rolls back.
            ConfigurationError: ``connection`` is not inside a transaction.
        """
        store = self._store
        if not isinstance(store, TransactionalIdempotencyStore):
            return False
        response = self._recordable(status, headers, body)
        if response is None:
            return False
        if not await store.complete_in(
            connection, self._store_key, self._owner, response, ttl=self._ttl
        ):
            raise ClaimLost()
        self.response = response
        return True

    async def complete(self, status: int, headers: Headers, body: bytes) -> bool:
        """Record the response in the store now: call it right after the handler's commit.

        For work whose record cannot commit with it (a Redis store, work in another database,
        a call to another service), the middleware records the response after the handler has
        returned and its response has come back through every layer inside the middleware: a
        process that dies in between leaves the work done without its record, and a retry
        runs the handler again once the lease is over. Recording right after the commit
        shrinks that window to the commit's reply and one store round trip. Pass exactly the
        status, headers and body the handler then returns; with any store.

        Returns ``True`` when the response is on record (by this call, or by
        :meth:`complete_in` before it). Returns ``False`` without raising when the middleware
        would not record this response (a 5xx, a 408 or 429, ``Retry-After``, a body over
        ``max_response_bytes``), when this request lost its key to a retry, or when the store
        fails: the work is committed either way, so the handler goes on and the middleware
        deals with the response after it, as usual.
        """
        if self.response is not None:
            return True
        response = self._recordable(status, headers, body)
        if response is None:
            return False
        try:
            async with asyncio.timeout(COMPLETE_TIMEOUT):
                stored = await self._store.complete(
                    self._store_key, self._owner, response, ttl=self._ttl
                )
        except (BackendError, TimeoutError):
            return False  # the middleware tries again after the handler, and logs a failure
        if stored:
            self.response = response
        return stored

    async def complete_during(
        self, commit: Awaitable[T], status: int, headers: Headers, body: bytes
    ) -> T:
        """Commit, and record the response while the commit is in flight; return its result.

        ``commit`` is the handler's commit, not yet awaited (asyncpg's
        ``transaction.commit()``). It is started first, and the response is recorded
        *tentatively* while the database works on it, so that a process killed after the
        commit was sent has, in all likelihood, sent the record too: recording after the
        commit leaves the whole commit (a WAL flush, a round trip) between the work and its
        record, and a crash there makes a retry run the handler again.

        A retry that finds the tentative record gets ``409 IDEMPOTENCY_REQUEST_IN_PROGRESS``,
        as for a claim, until the outcome is known: once the commit succeeded the record is
        confirmed (retries replay it); if it failed the record is withdrawn (a retry runs the
        handler). Both happen in a task of their own, so also when this request is cancelled
        while the commit runs; a withdrawal that fails is retried in the background until the
        record's ttl (a :class:`~prodkit.idempotency.RetryingIdempotencyStore`). A tentative
        record whose lease is over counts as completed: the record of a process that died
        after its commit is replayed once the lease is over. The one case left wrong is a
        process that dies between a *failed* commit and the withdrawal of its record.

        The commit must go out in the first step of ``commit`` (asyncpg's does): the record
        is sent after that step. With a store that cannot record tentatively, this records
        after the commit, as :meth:`complete` does.
        """
        store = self._store
        response = None if self.response is not None else self._recordable(status, headers, body)
        if response is None or not isinstance(store, WithdrawingIdempotencyStore):
            result = await commit
            await self.complete(status, headers, body)
            return result
        committing = asyncio.ensure_future(commit)
        await asyncio.sleep(0)  # the commit's first step: it is on its way
        written = await self._write_tentatively(store, response)
        # Confirmed or withdrawn once the commit is over, whatever becomes of this request.
        settling = asyncio.ensure_future(self._settle(store, committing, written))
        _SETTLING.add(settling)
        settling.add_done_callback(_SETTLING.discard)
        # Shielded: a cancelled request does not cancel a commit already sent (nor what
        # follows it).
        try:
            result = await asyncio.shield(committing)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await asyncio.shield(settling)  # withdrawn before the error propagates
            raise
        if await asyncio.shield(settling):
            self.response = response
        return result

    async def _write_tentatively(
        self, store: WithdrawingIdempotencyStore, response: StoredResponse
    ) -> bool | None:
        """Write the tentative record: ``True``, ``False`` (lost claim) or ``None`` (unknown:
        the store failed or timed out, the write may have landed)."""
        try:
            async with asyncio.timeout(COMPLETE_TIMEOUT):
                return await store.complete_tentatively(
                    self._store_key, self._owner, response, ttl=self._ttl
                )
        except (BackendError, TimeoutError):
            return None

    async def _settle(
        self,
        store: WithdrawingIdempotencyStore,
        committing: asyncio.Future[Any],
        written: bool | None,
    ) -> bool:
        """Confirm the tentative record after a commit, withdraw it after a failed one;
        ``True`` when the response is on record (the middleware then does not record it)."""
        try:
            await committing
        except BaseException:
            if written is not False:  # a write that timed out may have landed: withdraw it
                await self._withdraw(store)
            return False
        if written is False:
            return False  # the claim was lost: the middleware deals with the response
        try:
            async with asyncio.timeout(COMPLETE_TIMEOUT):
                return await store.confirm(self._store_key, self._owner) or written is True
        except (BackendError, TimeoutError) as exc:
            # Still tentative: retries get 409 until the lease is over, then replay it.
            self._logger.warning(
                "idempotent response not confirmed; replayed once the lease is over",
                error=f"{type(exc).__name__}: {exc}",
            )
            return written is True

    async def _withdraw(self, store: WithdrawingIdempotencyStore) -> None:
        try:
            async with asyncio.timeout(COMPLETE_TIMEOUT):
                await store.withdraw(self._store_key, self._owner)
        except (BackendError, TimeoutError) as exc:
            retrying = False
            if isinstance(store, RetryingIdempotencyStore):
                store.retry_withdraw(self._store_key, self._owner, within=self._ttl)
                retrying = True
            self._logger.error(
                "idempotent response recorded for work that did not commit; "
                + ("withdrawing it in the background" if retrying else "it stands until its ttl"),
                error=f"{type(exc).__name__}: {exc}",
            )


#: The tasks that confirm or withdraw a tentative record: kept referenced until they end.
_SETTLING: set[asyncio.Future[bool]] = set()


def current_claim(scope: Scope) -> IdempotencyClaim | None:
    """The claim of the request ``scope`` belongs to, while its handler runs under one.

    ``None`` for a request without an ``Idempotency-Key`` (or outside the configured methods
    and routes), and for a handler run by ``fail_open`` while the store is down.
    """
    state = scope.get(REQUEST_STATE_KEY)  # the request's state holds the claim
    claim = None if state is None else state.idempotency_claim
    return claim if isinstance(claim, IdempotencyClaim) else None


__all__ = ["COMPLETE_TIMEOUT", "ClaimLost", "IdempotencyClaim", "current_claim"]
