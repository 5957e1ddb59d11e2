"""The options of ``IdempotencyMiddleware``: one frozen dataclass, checked when made."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from prometheus_client import CollectorRegistry

from prodkit._core import options as valid
from prodkit._core.breaker import CircuitBreaker
from prodkit._core.callers import Caller, caller_from_authorization
from prodkit._core.collectors import DEFAULT_PREFIX
from prodkit._core.exceptions import ConfigurationError
from prodkit.idempotency._responses import DEFAULT_STORED_HEADERS, NEVER_STORED
from prodkit.idempotency._store import IdempotencyStore

#: What ``unknown_caller`` may say to do with a keyed request whose caller is unknown.
UnknownCaller = Literal["refuse", "ignore_key"]


@dataclass(frozen=True, kw_only=True, slots=True)
class IdempotencyOptions:
    """The options of :class:`~prodkit.IdempotencyMiddleware`, checked when made.

    Attributes:
        store: an :class:`~prodkit.idempotency.IdempotencyStore` (memory, PostgreSQL, Redis).
        methods: request methods that honour the header (default ``("POST", "PATCH")``).
        routes: route templates (``/api/funds/{id}``, ``/api/*``) where the header is honoured;
            ``None``: every route. Kept as a tuple.
        required: ``True`` to reject requests without a key (400 ``IDEMPOTENCY_KEY_MISSING``)
            on every honoured route, or the templates where it is required (default
            ``False``: a key is optional everywhere).
        caller: ``scope -> str | None`` naming the caller keys belong to
            (default :func:`~prodkit.caller_from_authorization`; with cookie or session
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
            your slowest handler; at most ``ttl``.
        wait_timeout: seconds a concurrent duplicate waits for the first request and replays its
            response (default: no wait, a 409 at once).
        store_server_errors: record 5xx responses too (default ``False``: the claim is released
            so retries run again).
        stored_headers: response headers recorded and replayed (default
            :data:`~prodkit.idempotency.DEFAULT_STORED_HEADERS`; never ``Set-Cookie``), kept
            as a tuple.
        fail_open: when the store fails or its breaker is open, run the handler without
            idempotency (default ``False``: fail closed with 503
            ``IDEMPOTENCY_STORE_UNAVAILABLE``).
        breaker: the :class:`~prodkit.asgi.CircuitBreaker` around store calls (default: one
            named ``idempotency-store``, or none for the memory store, which does no I/O).
        registry: the Prometheus registry of ``{metric_prefix}idempotency_requests_total{outcome}``
            (default: prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of that metric name (default ``"prodkit_"``).
        logger: a structlog logger (default: structlog's ``prodkit.idempotency`` logger).

    Raises:
        ConfigurationError: a store that is not one, methods that are not upper-case HTTP
            methods, a header name that is not one, a ``lease`` longer than ``ttl``, a
            ``stored_headers`` with cookies or framing headers, or another invalid option.
    """

    store: IdempotencyStore
    methods: Collection[str] = ("POST", "PATCH")
    routes: Iterable[str] | None = None
    required: bool | Iterable[str] = False
    caller: Caller = caller_from_authorization
    unknown_caller: UnknownCaller = "refuse"
    namespace: str = ""
    header_name: str = "Idempotency-Key"
    max_key_length: int = 255
    max_body_bytes: int = 1024 * 1024
    max_response_bytes: int = 1024 * 1024
    ttl: float = 24 * 3600.0
    lease: float = 60.0
    wait_timeout: float | None = None
    store_server_errors: bool = False
    stored_headers: Iterable[str] = DEFAULT_STORED_HEADERS
    fail_open: bool = False
    breaker: CircuitBreaker | None = None
    registry: CollectorRegistry | None = None
    metric_prefix: str = DEFAULT_PREFIX
    logger: Any | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.store, IdempotencyStore):
            raise ConfigurationError(
                f"store={self.store!r}: does not implement claim/complete/release/get; write "
                "MemoryIdempotencyStore(), PostgresIdempotencyStore(...) or "
                "RedisIdempotencyStore(...)"
            )
        self._set("methods", _methods(self.methods))
        if self.routes is not None:
            self._set("routes", valid.path_list("routes", self.routes))
        if not isinstance(self.required, bool):
            self._set("required", valid.path_list("required", self.required))
        valid.one_of("unknown_caller", self.unknown_caller, ("refuse", "ignore_key"))
        valid.header_name("header_name", self.header_name)
        valid.positive_int("max_key_length", self.max_key_length, example=255)
        valid.non_negative_int("max_body_bytes", self.max_body_bytes, example=1048576)
        valid.non_negative_int("max_response_bytes", self.max_response_bytes, example=1048576)
        valid.positive_seconds("ttl", self.ttl, example=86400)
        valid.positive_seconds("lease", self.lease, example=60)
        if self.lease > self.ttl:
            raise ConfigurationError(
                f"lease={self.lease!r}: longer than ttl={self.ttl!r}; a record must outlive its "
                "claim: write a lease of at most the ttl, e.g. lease=60"
            )
        if self.wait_timeout is not None:
            valid.positive_seconds("wait_timeout", self.wait_timeout, example=5)
        self._set("stored_headers", _stored_headers(self.stored_headers))
        valid.metric_prefix("metric_prefix", self.metric_prefix)

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)


def _methods(value: Collection[str]) -> tuple[str, ...]:
    methods = valid.string_list("methods", value)
    for method in methods:
        if valid.http_token("methods", method) != method.upper():
            raise ConfigurationError(
                f"methods={methods!r}: {method!r} is not an upper-case HTTP method; write e.g. "
                "methods=['POST', 'PATCH']"
            )
    if not methods:
        raise ConfigurationError(
            "methods=(): names no HTTP method; write e.g. methods=['POST', 'PATCH']"
        )
    return methods


def _stored_headers(value: Iterable[str]) -> tuple[str, ...]:
    names = valid.header_names("stored_headers", value)
    forbidden = {name.lower() for name in names} & NEVER_STORED
    if forbidden:
        raise ConfigurationError(
            f"stored_headers={names!r}: includes {', '.join(sorted(forbidden))}; cookies are "
            "never replayed and framing headers are recomputed: leave them out"
        )
    return names


class IdempotencyKeywords(TypedDict, total=False):
    """:class:`IdempotencyOptions`'s fields as keywords of :class:`~prodkit.IdempotencyMiddleware`.

    ``store`` is required unless ``options`` is given: leaving both out is a ``TypeError``
    when the middleware is made.
    """

    store: IdempotencyStore
    methods: Collection[str]
    routes: Iterable[str] | None
    required: bool | Iterable[str]
    caller: Caller
    unknown_caller: UnknownCaller
    namespace: str
    header_name: str
    max_key_length: int
    max_body_bytes: int
    max_response_bytes: int
    ttl: float
    lease: float
    wait_timeout: float | None
    store_server_errors: bool
    stored_headers: Iterable[str]
    fail_open: bool
    breaker: CircuitBreaker | None
    registry: CollectorRegistry | None
    metric_prefix: str
    logger: Any | None


__all__ = ["IdempotencyKeywords", "IdempotencyOptions", "UnknownCaller"]
