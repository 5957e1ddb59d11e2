"""Recording the response of a request that holds a fresh claim on its idempotency key.

:class:`Recorder` is what recording takes: the store and its breaker, the record's ttl and the
claim's lease, which responses and which of their headers are recorded, the logger. The
middleware builds one from its options; :class:`ClaimedResponder`, which holds a claimed
request's response back until it is recorded, and the :class:`~prodkit.idempotency.IdempotencyClaim`
a handler sees take it (or what they need of it), not the middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from prodkit._core.breaker import CircuitBreaker
from prodkit._core.exceptions import BackendError
from prodkit._core.headers import get_header, message_headers, set_header
from prodkit._core.logs import SafeLogger
from prodkit._core.problems import Problem
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.idempotency._claims import COMPLETE_TIMEOUT, IdempotencyClaim
from prodkit.idempotency._responses import (
    STATUS_HEADER,
    STORED_HEADER,
    stored_response,
    unstorable,
)
from prodkit.idempotency._store import IdempotencyStore, RetryingIdempotencyStore, StoredResponse

T = TypeVar("T")

#: Deprecated: the scope key holding ``"created"`` while the handler runs under a fresh claim.
#: Read ``request_state(scope).idempotency_status`` instead (:mod:`prodkit.asgi`).
SCOPE_KEY = "prodkit.idempotency_status"


@dataclass(frozen=True, slots=True)
class Recorder:
    """What recording a claimed request's response takes, built once from the middleware's options.

    Attributes:
        store: where records live.
        breaker: the circuit breaker around store calls (``None``: calls go straight through).
        ttl: seconds a record lives.
        lease: seconds a claim protects a running handler.
        stored_headers: lower-case names of the response headers recorded and replayed.
        store_server_errors: whether 5xx responses are recorded too.
        max_response_bytes: the largest response body recorded.
        logger: where the middleware's lines go.
    """

    store: IdempotencyStore
    breaker: CircuitBreaker | None
    ttl: float
    lease: float
    stored_headers: frozenset[bytes]
    store_server_errors: bool
    max_response_bytes: int
    logger: SafeLogger

    def record(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> StoredResponse | None:
        """The record of a complete response, or ``None`` when it is not to be recorded."""
        headers = list(headers)
        if (
            unstorable(status, headers, store_server_errors=self.store_server_errors) is not None
            or len(body) > self.max_response_bytes
        ):
            return None
        start = {"type": "http.response.start", "status": status, "headers": headers}
        return stored_response(start, body, self.stored_headers)

    async def _guarded(self, func: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is None:
            return await func()
        return await self.breaker.call(func)

    async def release(self, key: str, owner: str, lease_ends: float) -> None:
        """Give ``owner``'s claim on ``key`` back, so that a retry runs the handler; a release
        that cannot reach the store is retried in the background until ``lease_ends`` (the
        event loop's time)."""
        try:
            await self._guarded(lambda: self.store.release(key, owner))
        except BackendError as exc:
            within = lease_ends - asyncio.get_running_loop().time()
            if within > 0 and isinstance(self.store, RetryingIdempotencyStore):
                # Otherwise the key answers 409 for the rest of the lease, however soon the
                # store is back: the store retries until the release lands.
                self.store.retry_release(key, owner, within=within)
                self.logger.warning(
                    "idempotency claim not released; retrying in the background",
                    error=str(exc),
                    retry_for_seconds=round(within, 1),
                )
            else:
                # The lease still expires: the key is only blocked until then.
                self.logger.warning("idempotency claim not released", error=str(exc))

    async def complete(
        self, store_key: str, owner: str, start: Message, body: bytes
    ) -> Literal["stored", "lost", "failed"]:
        """Record the response. The handler has run, so this is not skipped for an open
        breaker (which only protects new claims): it is tried once more after a failure."""
        response = stored_response(start, body, self.stored_headers)
        stored = False
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(COMPLETE_TIMEOUT):
                    stored = await self.store.complete(store_key, owner, response, ttl=self.ttl)
                break
            except Exception as exc:
                if attempt == 2:
                    self.logger.error(
                        "idempotent response not recorded; the key stays claimed until its lease "
                        "expires, so a retry cannot run the handler again meanwhile",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return "failed"
                await asyncio.sleep(0.05)
        if not stored:
            self.logger.warning(
                "idempotency claim lost before completion",
                detail="the handler outlived its lease and another request took the key over",
            )
            return "lost"
        return "stored"


class ClaimedResponder:
    """One request whose handler runs under a fresh claim: built per request, never shared.

    The response is held back until it is complete, recorded while this request still owns the
    claim, then sent with ``Idempotency-Status: created``. A response that is not to be recorded
    (see :func:`unstorable`) is sent marked ``Idempotency-Stored: false``; a server error is held
    until the handler returns, since a framework's error layer sends a plain 500 for a
    :class:`~prodkit.Problem` before re-raising it, and the problem is what the client gets and
    what is recorded. When the handler is done the claim is released, unless the response is on
    record or may have to be: then a retry must not run the handler a second time.
    """

    __slots__ = (
        "app",
        "claim",
        "held",
        "held_size",
        "lease_ends",
        "owner",
        "recorder",
        "release_claim",
        "scope",
        "send",
        "store_key",
        "streaming",
        "unrecorded",
    )

    def __init__(
        self,
        app: ASGIApp,
        recorder: Recorder,
        scope: Scope,
        send: Send,
        claim: IdempotencyClaim,
        store_key: str,
        owner: str,
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.scope = scope
        self.send = send
        self.claim = claim  # what the handler sees of it (and what it recorded itself)
        self.store_key = store_key  # the key and owner token this request holds
        self.owner = owner
        # The event loop's time when the lease is over: taken after the claim, so not before
        # the store's own expiry of it.
        self.lease_ends = asyncio.get_running_loop().time() + recorder.lease
        self.held: list[Message] = []  # the response, kept back until complete and recorded
        self.held_size = 0
        self.streaming = False  # the response goes straight through (not recorded)
        self.unrecorded: str | None = None  # why the held response is not to be recorded
        self.release_claim = True

    async def run(self, receive: Receive) -> None:
        """Run the handler with :meth:`send_or_hold` as its ``send``; release the claim after."""
        state = request_state(self.scope)
        state.idempotency_status = "created"
        state.idempotency_claim = self.claim
        self.scope[SCOPE_KEY] = "created"  # deprecated, still there for code that reads it
        try:
            try:
                await self.app(self.scope, receive, self.send_or_hold)
            except Problem as problem:
                if self.streaming:
                    raise  # part of a response reached the client: nothing else can be sent
                # The handler's answer (what an outer ErrorMiddleware would send), recorded
                # like any response, in place of a framework's plain 500 if one was held.
                self.held.clear()
                self.held_size = 0
                self.unrecorded = None
                await problem.send(self.send_or_hold)
        except BaseException:
            self.held.clear()  # nothing reached the client: let the error handler answer cleanly
            raise
        finally:
            if self.held:  # a server error, or the app ended without finishing its response
                with contextlib.suppress(Exception):
                    await self.flush(self.unrecorded or "incomplete response")
            if self.release_claim:
                # Shielded so that a cancelled request still frees its key for the retry.
                await asyncio.shield(
                    self.recorder.release(self.store_key, self.owner, self.lease_ends)
                )

    async def send_or_hold(self, message: Message) -> None:
        """The handler's ``send``: hold the response back, or pass it through once streaming."""
        if self.streaming:
            await self.send(message)
        elif message["type"] == "http.response.start":
            await self._hold_start(message)
        elif message["type"] == "http.response.body" and self.held:
            await self._hold_body(message)
        else:
            await self.send(message)

    async def _hold_start(self, message: Message) -> None:
        # ASGI wants lower-case names, but Django's handler sends "Content-Type": what is
        # recorded and checked below must not depend on the case an app chose.
        headers = message_headers(message)
        headers[:] = [(name.lower(), value) for name, value in headers]
        set_header(headers, STATUS_HEADER, b"created")
        self.held.append(message)
        status = int(message["status"])
        recorded = self.claim.response
        if recorded is not None and recorded.status == status:
            # Recorded in the handler's own transaction, committed with its writes.
            self.release_claim = False
            await self.flush(None)
            return
        # Otherwise (no record, or a record the handler's transaction may have rolled back: a
        # framework's 500, a problem raised before the commit) the response takes the usual
        # way, and the claim is released or completed as usual: both are conditional on the
        # record still being in progress, so a committed record is never touched.
        recorder = self.recorder
        reason = unstorable(status, headers, store_server_errors=recorder.store_server_errors)
        if reason is None:
            # A declared length over the cap need not be buffered to be refused.
            length = get_header(headers, b"content-length")
            if (
                length is not None
                and length.isdigit()
                and int(length) > recorder.max_response_bytes
            ):
                reason = "response body larger than max_response_bytes"
        if reason is not None and status >= 500:
            self.unrecorded = reason  # held until the handler returns (or raises a Problem)
        elif reason is not None:
            await self.flush(reason)

    async def _hold_body(self, message: Message) -> None:
        self.held.append(message)
        self.held_size += len(message.get("body", b""))
        if self.held_size > self.recorder.max_response_bytes:
            await self.flush(self.unrecorded or "response body larger than max_response_bytes")
        elif not message.get("more_body", False) and self.unrecorded is None:
            await self._record()

    async def _record(self) -> None:
        start = self.held[0]
        body = b"".join(m.get("body", b"") for m in self.held[1:])
        # The handler's effects happened: from here on, a cancellation (client gone, shutdown
        # deadline) must not release the key for a retry to run the handler again.
        self.release_claim = False
        outcome = await self.recorder.complete(self.store_key, self.owner, start, body)
        # A record that could not be written ("failed") keeps the key claimed until the lease
        # expires rather than letting a retry run the handler again; a "lost" claim is released
        # (the store ignores it: the key has another owner by now).
        self.release_claim = outcome == "lost"
        await self.flush(None if outcome == "stored" else "the record could not be written")

    async def flush(self, reason: str | None) -> None:
        """Send what is held and pass the rest through; ``reason`` says why it is not recorded."""
        self.streaming = True
        held = self.held
        if held and reason is not None:
            set_header(message_headers(held[0]), STORED_HEADER, b"false")
            self.recorder.logger.info(
                "idempotent response not stored",
                reason=reason,
                path=self.scope.get("path"),
                status=held[0]["status"],
            )
        self.held = []
        for message in held:
            await self.send(message)


__all__ = ["SCOPE_KEY", "ClaimedResponder", "Recorder"]
