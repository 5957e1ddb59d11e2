"""The claim a keyed request holds while its handler runs, as the handler sees it.

A handler that writes to the database holding a :class:`PostgresIdempotencyStore`'s table can
commit its work and the idempotency record in one transaction with
:meth:`IdempotencyClaim.complete_in`; any other handler can record its response right after its
commit with :meth:`IdempotencyClaim.complete`. See ``docs/idempotency.md`` ("Exactly once
through crashes").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prodkit._core.exceptions import BackendError
from prodkit._core.problems import Problem
from prodkit._core.types import Scope
from prodkit.idempotency._responses import stored_response, unstorable
from prodkit.idempotency._store import StoredResponse, TransactionalIdempotencyStore

if TYPE_CHECKING:
    from prodkit.idempotency._middleware import IdempotencyMiddleware

#: Scope key holding the request's :class:`IdempotencyClaim` while its handler runs.
CLAIM_SCOPE_KEY = "prodkit.idempotency_claim"

#: The problem code of :class:`ClaimLost` (the same as a retry that finds the key in progress).
IN_PROGRESS = "IDEMPOTENCY_REQUEST_IN_PROGRESS"

#: Seconds one attempt to record a response may take (the breaker's timeout does not apply:
#: the handler has run, so the record is worth waiting for).
COMPLETE_TIMEOUT = 5.0

Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]


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

    Attributes:
        completed: whether :meth:`complete_in` or :meth:`complete` recorded the response (the
            middleware then does not record it again).
        response: the response they recorded, if any.
    """

    __slots__ = ("_lease_ends", "_middleware", "_owner", "_store_key", "response")

    def __init__(self, middleware: IdempotencyMiddleware, store_key: str, owner: str) -> None:
        # The store, the ttl and what is recorded are the middleware's: read from it, not copied.
        self._middleware = middleware
        self._store_key = store_key
        self._owner = owner
        # The event loop's time when the lease is over: taken after the claim, so not before
        # the store's own expiry of it.
        self._lease_ends = asyncio.get_running_loop().time() + middleware.lease
        self.response: StoredResponse | None = None

    @property
    def completed(self) -> bool:
        """Whether the response was recorded by the handler (see :meth:`complete_in`)."""
        return self.response is not None

    def _recordable(self, status: int, headers: Headers, body: bytes) -> StoredResponse | None:
        """The record of this response, or ``None`` when the middleware would not record it."""
        middleware = self._middleware
        if isinstance(headers, Mapping):
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        else:
            raw = [(k.lower(), v) for k, v in headers]
        if (
            unstorable(status, raw, store_server_errors=middleware.store_server_errors) is not None
            or len(body) > middleware.max_response_bytes
        ):
            return None
        start = {"type": "http.response.start", "status": status, "headers": raw}
        return stored_response(start, body, middleware._stored_headers)

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
        middleware = self._middleware
        store = middleware.store
        if not isinstance(store, TransactionalIdempotencyStore):
            return False
        response = self._recordable(status, headers, body)
        if response is None:
            return False
        if not await store.complete_in(
            connection, self._store_key, self._owner, response, ttl=middleware.ttl
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
        middleware = self._middleware
        response = self._recordable(status, headers, body)
        if response is None:
            return False
        try:
            async with asyncio.timeout(COMPLETE_TIMEOUT):
                stored = await middleware.store.complete(
                    self._store_key, self._owner, response, ttl=middleware.ttl
                )
        except (BackendError, TimeoutError):
            return False  # the middleware tries again after the handler, and logs a failure
        if stored:
            self.response = response
        return stored


def current_claim(scope: Scope) -> IdempotencyClaim | None:
    """The claim of the request ``scope`` belongs to, while its handler runs under one.

    ``None`` for a request without an ``Idempotency-Key`` (or outside the configured methods
    and routes), and for a handler run by ``fail_open`` while the store is down.
    """
    claim = scope.get(CLAIM_SCOPE_KEY)
    return claim if isinstance(claim, IdempotencyClaim) else None


__all__ = ["CLAIM_SCOPE_KEY", "COMPLETE_TIMEOUT", "ClaimLost", "IdempotencyClaim", "current_claim"]
