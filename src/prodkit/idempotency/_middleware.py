"""Exactly-once ``POST``/``PATCH`` with the ``Idempotency-Key`` request header.

Follows the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header): the key is a structured-field string, a missing
required key is a 400, a key reused with a different request is a 422, and a retry that arrives
while the first request still runs is a 409. See ``docs/idempotency.md`` for the full semantics.

This module reads the request and answers it (a claim, a replay, a refusal); a claimed
request's response is held back and recorded in ``_recording``.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Iterable
from typing import Any, Unpack

from prodkit._core.body import read_body, replay_receive
from prodkit._core.breaker import CircuitBreaker
from prodkit._core.collectors import counter
from prodkit._core.exceptions import BackendError
from prodkit._core.logs import safe_logger
from prodkit._core.options import build_options
from prodkit._core.problems import send_problem
from prodkit._core.routing import RouteTable
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.idempotency._claims import IN_PROGRESS, IdempotencyClaim
from prodkit.idempotency._keys import parse_idempotency_key, request_fingerprint, storage_key
from prodkit.idempotency._memory import MemoryIdempotencyStore
from prodkit.idempotency._options import IdempotencyKeywords, IdempotencyOptions
from prodkit.idempotency._recording import SCOPE_KEY, ClaimedResponder, Recorder
from prodkit.idempotency._responses import DEFAULT_STORED_HEADERS, replay
from prodkit.idempotency._store import Claim, ClaimOutcome

# Problem codes (docs/idempotency.md).
KEY_MISSING = "IDEMPOTENCY_KEY_MISSING"
KEY_INVALID = "IDEMPOTENCY_KEY_INVALID"
BODY_TOO_LARGE = "IDEMPOTENCY_BODY_TOO_LARGE"
KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
CALLER_UNKNOWN = "IDEMPOTENCY_CALLER_UNKNOWN"
STORE_UNAVAILABLE = "IDEMPOTENCY_STORE_UNAVAILABLE"

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
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`IdempotencyOptions`'s fields by name, instead of ``options``:
            ``IdempotencyMiddleware(app, store=MemoryIdempotencyStore())``.

    Raises:
        ConfigurationError: an invalid option (see :class:`IdempotencyOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: IdempotencyOptions | None = None,
        **keywords: Unpack[IdempotencyKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(IdempotencyOptions, options, keywords)
        self.store = options.store
        self.methods = frozenset(options.methods)
        self._routes = _templates(options.routes)
        self._required_everywhere = options.required is True
        self._required = _templates(None if options.required is True else options.required)
        self.caller = options.caller
        self.unknown_caller = options.unknown_caller
        self.namespace = options.namespace
        self._header = options.header_name.lower().encode("latin-1")
        self.max_key_length = options.max_key_length
        self.max_body_bytes = options.max_body_bytes
        self.max_response_bytes = options.max_response_bytes
        self.ttl, self.lease = options.ttl, options.lease
        self.wait_timeout = options.wait_timeout
        self.store_server_errors = options.store_server_errors
        self.fail_open = options.fail_open
        # The memory store does no I/O: it gets no breaker (and no timeout) unless given one.
        self.breaker = _breaker_for(options)
        self.logger = safe_logger("prodkit.idempotency", options.logger)
        self.recorder = _recorder(options, self.breaker, self.logger)
        self._outcomes = _outcome_counters(options)

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
            recorder = self.recorder
            held = IdempotencyClaim(
                recorder.store,
                store_key,
                owner,
                ttl=recorder.ttl,
                record=recorder.record,
                logger=recorder.logger,
            )
            responder = ClaimedResponder(self.app, recorder, scope, send, held, store_key, owner)
            await responder.run(receive)
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


def _templates(templates: Iterable[str] | bool | None) -> RouteTable[bool] | None:
    """The route table of ``routes`` or ``required`` (``None``: no table)."""
    if templates is None or isinstance(templates, bool):
        return None
    return RouteTable(dict.fromkeys(templates, True))


def _breaker_for(options: IdempotencyOptions) -> CircuitBreaker | None:
    """The breaker around store calls: the one given, none for the memory store, else one
    named ``idempotency-store``."""
    if options.breaker is not None or isinstance(options.store, MemoryIdempotencyStore):
        return options.breaker
    return CircuitBreaker(
        "idempotency-store", registry=options.registry, metric_prefix=options.metric_prefix
    )


def _recorder(options: IdempotencyOptions, breaker: CircuitBreaker | None, logger: Any) -> Recorder:
    return Recorder(
        store=options.store,
        breaker=breaker,
        ttl=options.ttl,
        lease=options.lease,
        stored_headers=frozenset(name.lower().encode("latin-1") for name in options.stored_headers),
        store_server_errors=options.store_server_errors,
        max_response_bytes=options.max_response_bytes,
        logger=logger,
    )


def _outcome_counters(options: IdempotencyOptions) -> dict[str, Any]:
    """The label child of ``{metric_prefix}idempotency_requests_total`` of every outcome."""
    requests_total = counter(
        f"{options.metric_prefix}idempotency_requests_total",
        "Requests with an idempotency key, by outcome.",
        ["outcome"],
        registry=options.registry,
    )
    return {outcome: requests_total.labels(outcome) for outcome in OUTCOMES}


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
