"""Exactly-once ``POST``/``PATCH`` with the ``Idempotency-Key`` request header.

Follows the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header): the key is a structured-field string, a missing
required key is a 400, a key reused with a different request is a 422, and a retry that arrives
while the first request still runs is a 409. See ``docs/idempotency.md`` for the full semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry

from prodkit._core.body import read_body, replay_receive
from prodkit._core.breaker import CircuitBreaker
from prodkit._core.callers import Caller, caller_from_authorization
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.headers import get_header, message_headers, set_header
from prodkit._core.logs import safe_logger
from prodkit._core.problems import Problem, send_problem
from prodkit._core.routing import RouteTable
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.idempotency._claims import (
    COMPLETE_TIMEOUT,
    IN_PROGRESS,
    IdempotencyClaim,
)
from prodkit.idempotency._keys import parse_idempotency_key, request_fingerprint, storage_key
from prodkit.idempotency._memory import MemoryIdempotencyStore
from prodkit.idempotency._responses import (
    DEFAULT_STORED_HEADERS,
    NEVER_STORED,
    STATUS_HEADER,
    STORED_HEADER,
    replay,
    stored_response,
    unstorable,
)
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyStore,
    RetryingIdempotencyStore,
    check_durations,
)

T = TypeVar("T")

# Problem codes (docs/idempotency.md).
KEY_MISSING = "IDEMPOTENCY_KEY_MISSING"
KEY_INVALID = "IDEMPOTENCY_KEY_INVALID"
BODY_TOO_LARGE = "IDEMPOTENCY_BODY_TOO_LARGE"
KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
CALLER_UNKNOWN = "IDEMPOTENCY_CALLER_UNKNOWN"
STORE_UNAVAILABLE = "IDEMPOTENCY_STORE_UNAVAILABLE"

#: Deprecated: the scope key holding ``"created"`` while the handler runs under a fresh claim.
#: Read ``request_state(scope).idempotency_status`` instead (:mod:`prodkit.asgi`).
SCOPE_KEY = "prodkit.idempotency_status"

#: The outcomes counted in ``{metric_prefix}idempotency_requests_total``.
OUTCOMES = (
    "created",
    "replayed",
    "mismatch",
    "in_progress",
    "error",
    "invalid",
    "caller_unknown",
)

#: What ``unknown_caller`` may say to do with a keyed request whose caller is unknown.
UnknownCaller = Literal["refuse", "ignore_key"]


class IdempotencyMiddleware:
    """Run a ``POST``/``PATCH`` handler at most once per idempotency key, and replay its response.

    For a request with an ``Idempotency-Key`` (on a configured method and route), the middleware
    validates the key, reads the body (the app still receives it unchanged), computes a
    fingerprint of method, path, query and body, and *claims* the key in the store in one
    atomic step, with an owner token and a lease. Then:

    * claimed: the app runs; a complete response is buffered (up to ``max_response_bytes``),
      recorded if its owner still holds the claim, and sent with ``Idempotency-Status:
      created``. A :class:`~prodkit.Problem` the app raises is rendered here and recorded like
      any response (4xx included). A 5xx, a 401 or 403, a 408 or 429, a response with
      ``Retry-After``, any other exception or an oversize body is not recorded and the claim
      is released, so a retry runs again (``Idempotency-Stored: false`` says so). A handler
      that writes to the store's PostgreSQL database can record its response in its own
      transaction (:func:`~prodkit.idempotency.current_claim`,
      :meth:`IdempotencyClaim.complete_in`);
    * completed with the same fingerprint: the recorded status, allow-listed headers and body
      are replayed with ``Idempotency-Status: replayed``; the app does not run;
    * in progress: 409 ``IDEMPOTENCY_REQUEST_IN_PROGRESS`` with ``Retry-After`` (or, with
      ``wait_timeout``, wait for the first request and replay its response);
    * a different fingerprint: 422 ``IDEMPOTENCY_KEY_REUSED``; nothing changes.

    Keys are scoped by ``caller(scope)`` (and ``namespace``), so one caller's key never
    reaches another caller's response. A keyed request whose caller is unknown (``caller``
    returns ``None`` or ``""``) is refused with 400 ``IDEMPOTENCY_CALLER_UNKNOWN`` before
    anything is stored or run: it has no scope of its own, and a scope shared by every unknown
    caller would hand one client another's response.

    Example::

        import asyncio
        import itertools
        import uuid

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import IdempotencyMiddleware
        from prodkit.idempotency import MemoryIdempotencyStore

        payment_ids = itertools.count(1)

        async def pay(request):
            payment = {"id": next(payment_ids), **await request.json()}  # charged here, once
            return JSONResponse(payment, status_code=201)

        app = IdempotencyMiddleware(
            Starlette(routes=[Route("/payments", pay, methods=["POST"])]),
            store=MemoryIdempotencyStore(),  # one process; PostgreSQL or Redis for several
            registry=CollectorRegistry(),  # or leave it out: prometheus-client's global one
        )

        async def main():
            key = {"Idempotency-Key": str(uuid.uuid4())}  # one per payment, sent on each retry
            alice = {"Authorization": "Bearer alice-token"}  # keys are scoped by the caller
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                first = await client.post("/payments", json={"cents": 1250}, headers=alice | key)
                retry = await client.post("/payments", json={"cents": 1250}, headers=alice | key)
                reused = await client.post("/payments", json={"cents": 99}, headers=alice | key)
                anonymous = await client.post("/payments", json={"cents": 1250}, headers=key)
            assert first.status_code == retry.status_code == 201
            assert first.headers["Idempotency-Status"] == "created"
            assert retry.headers["Idempotency-Status"] == "replayed"
            assert retry.json() == first.json() == {"id": 1, "cents": 1250}  # the handler ran once
            assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"  # 422: another body
            assert anonymous.json()["code"] == "IDEMPOTENCY_CALLER_UNKNOWN"  # 400: no caller

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        store: an :class:`~prodkit.idempotency.IdempotencyStore` (memory, PostgreSQL, Redis).
        methods: request methods that honour the header (default ``("POST", "PATCH")``).
        routes: route templates (``/api/funds/{id}``, ``/api/*``) where the header is honoured;
            ``None``: every route.
        required: ``True`` to reject requests without a key (400 ``IDEMPOTENCY_KEY_MISSING``)
            on every honoured route, or the templates where it is required (default
            ``False``: a key is optional everywhere).
        caller: ``scope -> str | None`` naming the caller keys belong to
            (default :func:`caller_from_authorization`; with cookie or session
            authentication, pass one that names the user, such as
            :func:`~prodkit.caller_from_header` over a header your authentication layer sets).
        unknown_caller: what a keyed request whose caller is unknown gets: ``"refuse"``
            (default, a 400 ``IDEMPOTENCY_CALLER_UNKNOWN``), or ``"ignore_key"``: the app runs
            it as if it had no key (nothing claimed or recorded; a retry runs it again), for
            apps whose keyed routes answer unknown callers themselves (a 401).
        namespace: mixed into every stored key, to share one store between services
            (default ``""``).
        header_name: the request header carrying the key (default ``"Idempotency-Key"``).
        max_key_length: longest accepted key, in characters (default ``255``; the draft's
            examples use UUIDs).
        max_body_bytes: largest request body accepted with a key (default ``1048576``, 1 MiB;
            413 beyond).
        max_response_bytes: largest response body recorded (default ``1048576``, 1 MiB);
            larger ones are streamed through, not recorded, and the claim released.
        ttl: seconds a record lives (default ``86400.0``, 24 h): a key can be replayed, or
            blocks different requests, that long.
        lease: seconds a claim protects a running handler (default ``60.0``); after it, a
            retry may take over (so a crashed worker never leaves a key stuck). Set it above
            your slowest handler.
        wait_timeout: seconds a concurrent duplicate waits for the first request and replays its
            response (default: no wait, a 409 at once).
        store_server_errors: record 5xx responses too (default ``False``: the claim is released
            so retries run again).
        stored_headers: response headers recorded and replayed (default
            :data:`~prodkit.idempotency.DEFAULT_STORED_HEADERS`; never ``Set-Cookie``).
        fail_open: when the store fails or its breaker is open, run the handler without
            idempotency (default ``False``: fail closed with 503
            ``IDEMPOTENCY_STORE_UNAVAILABLE``).
        breaker: the :class:`~prodkit.asgi.CircuitBreaker` around store calls (default: one
            named ``idempotency-store``, or none for the memory store, which does no I/O).
        registry: the Prometheus registry of ``{metric_prefix}idempotency_requests_total{outcome}``
            (default: prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of that metric name (default ``"prodkit_"``).
        logger: a structlog logger (default: structlog's ``prodkit.idempotency`` logger).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore,
        methods: Collection[str] = ("POST", "PATCH"),
        routes: Iterable[str] | None = None,
        required: bool | Iterable[str] = False,
        caller: Caller = caller_from_authorization,
        unknown_caller: UnknownCaller = "refuse",
        namespace: str = "",
        header_name: str = "Idempotency-Key",
        max_key_length: int = 255,
        max_body_bytes: int = 1024 * 1024,
        max_response_bytes: int = 1024 * 1024,
        ttl: float = 24 * 3600.0,
        lease: float = 60.0,
        wait_timeout: float | None = None,
        store_server_errors: bool = False,
        stored_headers: Iterable[str] = DEFAULT_STORED_HEADERS,
        fail_open: bool = False,
        breaker: CircuitBreaker | None = None,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        logger: Any | None = None,
    ) -> None:
        for method in methods:
            if not re.fullmatch(r"[A-Z]+", method):
                raise ConfigurationError(f"method {method!r} must be an upper-case HTTP method")
        if not methods:
            raise ConfigurationError("methods must name at least one HTTP method (POST, PATCH)")
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header_name):
            raise ConfigurationError(f"header_name {header_name!r} is not a valid header name")
        if max_key_length < 1:
            raise ConfigurationError("max_key_length must be at least 1")
        if max_body_bytes < 0 or max_response_bytes < 0:
            raise ConfigurationError("max_body_bytes and max_response_bytes must be >= 0 bytes")
        check_durations(lease, ttl)
        if unknown_caller not in ("refuse", "ignore_key"):
            raise ConfigurationError(
                f"unknown_caller must be 'refuse' or 'ignore_key', not {unknown_caller!r}"
            )
        if wait_timeout is not None and wait_timeout <= 0:
            raise ConfigurationError("wait_timeout must be positive seconds, or None")
        if not isinstance(store, IdempotencyStore):
            raise ConfigurationError(
                "store must implement claim/complete/release/get "
                "(MemoryIdempotencyStore, PostgresIdempotencyStore, RedisIdempotencyStore)"
            )
        stored = {name.lower() for name in stored_headers}
        forbidden = stored & NEVER_STORED
        if forbidden:
            raise ConfigurationError(
                f"stored_headers must not include {', '.join(sorted(forbidden))}: "
                "cookies are never replayed and framing headers are recomputed"
            )
        self.app = app
        self.store = store
        self.methods = frozenset(methods)
        self._routes = None if routes is None else RouteTable(dict.fromkeys(routes, True))
        self._required_everywhere = required is True
        self._required = (
            None if isinstance(required, bool) else RouteTable(dict.fromkeys(required, True))
        )
        self.caller = caller
        self.unknown_caller = unknown_caller
        self.namespace = namespace
        self._header = header_name.lower().encode("latin-1")
        self.max_key_length = max_key_length
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.ttl = ttl
        self.lease = lease
        self.wait_timeout = wait_timeout
        self.store_server_errors = store_server_errors
        self._stored_headers = frozenset(name.encode("latin-1") for name in stored)
        self.fail_open = fail_open
        if breaker is None and not isinstance(store, MemoryIdempotencyStore):
            breaker = CircuitBreaker(
                "idempotency-store", registry=registry, metric_prefix=metric_prefix
            )
        # The memory store does no I/O: it gets no breaker (and no timeout) unless given one.
        self.breaker = breaker
        self.logger = safe_logger("prodkit.idempotency", logger)
        requests_total = counter(
            f"{metric_prefix}idempotency_requests_total",
            "Requests with an idempotency key, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._outcomes = {outcome: requests_total.labels(outcome) for outcome in OUTCOMES}

    def storage_key(self, caller: str, key: str) -> str:
        """The store key for ``key`` sent by ``caller``: a SHA-256 hex digest (64 characters)."""
        return storage_key(self.namespace, caller, key)

    def _is_required(self, scope: Scope) -> bool:
        if self._required_everywhere:
            return True
        return self._required is not None and self._required.match_request(scope) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in self.methods:
            await self.app(scope, receive, send)
            return
        if self._routes is not None and self._routes.match_request(scope) is None:
            await self.app(scope, receive, send)
            return

        values = request_state(scope).headers(scope).get_all(self._header)
        if not values:
            if not self._is_required(scope):
                await self.app(scope, receive, send)
                return
            await self._reject(
                send,
                "invalid",
                400,
                KEY_MISSING,
                "This operation requires an Idempotency-Key header; send a new unique key "
                "(a UUID) for each operation and the same key when retrying it.",
            )
            return
        key = parse_idempotency_key(values[0], self.max_key_length) if len(values) == 1 else None
        if key is None:
            await self._reject(
                send,
                "invalid",
                400,
                KEY_INVALID,
                "Send exactly one Idempotency-Key header whose value is a quoted string "
                f'("...") or token of 1 to {self.max_key_length} printable ASCII characters.',
            )
            return
        caller = self.caller(scope)
        if not caller:
            # Never a scope shared by all unknown callers: two cookie-authenticated users
            # sending the same key would get each other's responses.
            self._outcomes["caller_unknown"].inc()
            if self.unknown_caller == "ignore_key":
                await self.app(scope, receive, send)
                return
            await send_problem(
                send,
                400,
                CALLER_UNKNOWN,
                "This request carries an Idempotency-Key but no credentials that say whose key "
                "it is, so it was not run: send it with your credentials. (If the service "
                "authenticates by cookie or session, its operator passes caller= to "
                "IdempotencyMiddleware, such as caller_from_header('X-User-Id') over a header "
                "the authentication layer sets.)",
            )
            return

        body, complete = await read_body(receive, self.max_body_bytes)
        if not complete:
            if len(body) > self.max_body_bytes:
                await self._reject(
                    send,
                    "invalid",
                    413,
                    BODY_TOO_LARGE,
                    f"Requests with an Idempotency-Key may carry at most "
                    f"{self.max_body_bytes} bytes of body.",
                )
            return  # otherwise the client went away before sending its body

        store_key = self.storage_key(caller, key)
        fingerprint = request_fingerprint(scope, body)
        await self._answer(scope, replay_receive(body, receive), send, store_key, fingerprint)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, store_key: str, fingerprint: bytes
    ) -> None:
        """Claim the key, then run the handler, replay, or say why not."""
        owner = secrets.token_hex(16)
        claim = await self._claim(store_key, fingerprint, owner)
        if (
            claim is not None
            and claim.outcome is ClaimOutcome.IN_PROGRESS
            and self.wait_timeout is not None
        ):
            claim = await self._wait(store_key, fingerprint, owner, claim)

        if claim is None:
            await self._store_failed(scope, receive, send)
        elif claim.outcome is ClaimOutcome.ACQUIRED:
            self._outcomes["created"].inc()
            held = IdempotencyClaim(self, store_key, owner)
            await _ClaimedResponder(self, scope, send, held).run(receive)
        elif claim.outcome is ClaimOutcome.COMPLETED and claim.response is not None:
            self._outcomes["replayed"].inc()
            await replay(send, claim.response)
        elif claim.outcome is ClaimOutcome.MISMATCH:
            await self._reject(
                send,
                "mismatch",
                422,
                KEY_REUSED,
                "This Idempotency-Key was already used for a different request (method, path, "
                "query or body). Use a new key for a new operation; resend the original "
                "request unchanged to get its response.",
            )
        else:
            retry_after = max(1, math.ceil(claim.retry_after or 1))
            await self._reject(
                send,
                "in_progress",
                409,
                IN_PROGRESS,
                "A request with this Idempotency-Key is still being processed; retry later "
                "with the same key to get its response.",
                headers={"Retry-After": str(retry_after)},
            )

    async def _reject(
        self,
        send: Send,
        outcome: str,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._outcomes[outcome].inc()
        await send_problem(send, status, code, detail, headers=headers)

    # -- store calls ------------------------------------------------------------------------

    async def _guarded(self, func: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is None:
            return await func()
        return await self.breaker.call(func)

    async def _claim(self, store_key: str, fingerprint: bytes, owner: str) -> Claim | None:
        try:
            if self.breaker is None:
                # Every request claims: without a breaker, no wrapper coroutine on the hot path.
                return await self.store.claim(
                    store_key, fingerprint, owner, lease=self.lease, ttl=self.ttl
                )
            return await self.breaker.call(
                lambda: self.store.claim(
                    store_key, fingerprint, owner, lease=self.lease, ttl=self.ttl
                )
            )
        except BackendError as exc:
            self.logger.warning("idempotency store unavailable", error=str(exc))
            return None

    async def _wait(
        self, store_key: str, fingerprint: bytes, owner: str, claim: Claim
    ) -> Claim | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.wait_timeout or 0.0)
        delay = 0.05
        while claim.outcome is ClaimOutcome.IN_PROGRESS:
            left = deadline - loop.time()
            if left <= 0:
                return claim
            await asyncio.sleep(min(delay, left, max(claim.retry_after or delay, 0.01)))
            delay = min(delay * 2, 1.0)
            found = await self._claim(store_key, fingerprint, owner)
            if found is None:
                return None
            claim = found
        return claim

    async def _store_failed(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._outcomes["error"].inc()
        if self.fail_open:
            # Documented trade-off: availability over exactly-once while the store is down.
            await self.app(scope, receive, send)
            return
        await send_problem(
            send,
            503,
            STORE_UNAVAILABLE,
            "Idempotency records are unavailable, so the request was not run; retry later "
            "with the same key.",
            headers={"Retry-After": str(self._unavailable_retry_after)},
        )

    @property
    def _unavailable_retry_after(self) -> int:
        return 1 if self.breaker is None else max(1, math.ceil(self.breaker.recovery_time))

    async def _release(self, claim: IdempotencyClaim) -> None:
        key, owner = claim._store_key, claim._owner
        try:
            await self._guarded(lambda: self.store.release(key, owner))
        except BackendError as exc:
            within = claim._lease_ends - asyncio.get_running_loop().time()
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

    async def _complete(
        self, store_key: str, owner: str, start: Message, body: bytes
    ) -> Literal["stored", "lost", "failed"]:
        """Record the response. The handler has run, so this is not skipped for an open
        breaker (which only protects new claims): it is tried once more after a failure."""
        response = stored_response(start, body, self._stored_headers)
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


class _ClaimedResponder:
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
        "claim",
        "held",
        "held_size",
        "middleware",
        "release_claim",
        "scope",
        "send",
        "streaming",
        "unrecorded",
    )

    def __init__(
        self,
        middleware: IdempotencyMiddleware,
        scope: Scope,
        send: Send,
        claim: IdempotencyClaim,
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send
        self.claim = claim  # the store key and owner token this request holds
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
                await self.middleware.app(self.scope, receive, self.send_or_hold)
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
                await asyncio.shield(self.middleware._release(self.claim))

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
        reason = unstorable(
            status, headers, store_server_errors=self.middleware.store_server_errors
        )
        if reason is None:
            # A declared length over the cap need not be buffered to be refused.
            length = get_header(headers, b"content-length")
            if (
                length is not None
                and length.isdigit()
                and int(length) > self.middleware.max_response_bytes
            ):
                reason = "response body larger than max_response_bytes"
        if reason is not None and status >= 500:
            self.unrecorded = reason  # held until the handler returns (or raises a Problem)
        elif reason is not None:
            await self.flush(reason)

    async def _hold_body(self, message: Message) -> None:
        self.held.append(message)
        self.held_size += len(message.get("body", b""))
        if self.held_size > self.middleware.max_response_bytes:
            await self.flush(self.unrecorded or "response body larger than max_response_bytes")
        elif not message.get("more_body", False) and self.unrecorded is None:
            await self._record()

    async def _record(self) -> None:
        start = self.held[0]
        body = b"".join(m.get("body", b"") for m in self.held[1:])
        # The handler's effects happened: from here on, a cancellation (client gone, shutdown
        # deadline) must not release the key for a retry to run the handler again.
        self.release_claim = False
        claim = self.claim
        outcome = await self.middleware._complete(claim._store_key, claim._owner, start, body)
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
            self.middleware.logger.info(
                "idempotent response not stored",
                reason=reason,
                path=self.scope.get("path"),
                status=held[0]["status"],
            )
        self.held = []
        for message in held:
            await self.send(message)


__all__ = [
    "BODY_TOO_LARGE",
    "CALLER_UNKNOWN",
    "DEFAULT_STORED_HEADERS",
    "IN_PROGRESS",
    "KEY_INVALID",
    "KEY_MISSING",
    "KEY_REUSED",
    "SCOPE_KEY",
    "STORE_UNAVAILABLE",
    "IdempotencyMiddleware",
]
