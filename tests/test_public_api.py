"""The public surface, snapshotted: a change to any public module's ``__all__`` is a visible diff.

Update the snapshot on purpose (and list the change in ``CHANGELOG.md``), never to make this pass.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest

PUBLIC: dict[str, list[str]] = {
    "prodkit": [
        "AccessLogMiddleware",
        "BackendError",
        "BackendUnavailableError",
        "CORSMiddleware",
        "CacheMiddleware",
        "ConcurrencyLimitMiddleware",
        "ConfigurationError",
        "ErrorMiddleware",
        "FieldError",
        "GracefulShutdownMiddleware",
        "HTTPMetricsMiddleware",
        "HealthMiddleware",
        "IdempotencyMiddleware",
        "Layer",
        "LifespanMiddleware",
        "MetricsEndpointMiddleware",
        "MissingDependencyError",
        "Problem",
        "ProdkitError",
        "RateLimitMiddleware",
        "RequestIdMiddleware",
        "RequestTimeoutMiddleware",
        "SecurityHeadersMiddleware",
        "Stack",
        "StackSettings",
        "__version__",
        "caller_from_authorization",
        "caller_from_header",
        "configure_logging",
        "get_parent_span_id",
        "get_request_id",
        "get_trace_id",
        "recommended_stack",
    ],
    "prodkit.asgi": [
        "ASGIApp",
        "BreakerState",
        "Caller",
        "CircuitBreaker",
        "ClientAddressResolver",
        "Message",
        "PROBLEM_CONTENT_TYPE",
        "REDIS_URL_FORMS",
        "REQUEST_STATE_KEY",
        "RawHeaders",
        "Receive",
        "ReceiveWatcher",
        "RequestHeaders",
        "RequestState",
        "ResponseObserver",
        "RouteResolver",
        "RouteTable",
        "Scope",
        "Send",
        "StartHook",
        "UNMATCHED_ROUTE",
        "append_vary",
        "caller_from_authorization",
        "caller_from_header",
        "encode_problem",
        "get_all_headers",
        "get_header",
        "get_list_header",
        "message_headers",
        "normalise_template",
        "normalize_ip",
        "on_response_start",
        "parse_ip",
        "problem_dict",
        "problem_type",
        "read_body",
        "redis_client",
        "remove_header",
        "replay_receive",
        "request_state",
        "route_path",
        "route_template",
        "route_template_before",
        "scope_header",
        "send_problem",
        "set_default_header",
        "set_header",
    ],
    "prodkit.cache": [
        "CacheKeywords",
        "CacheMiddleware",
        "CacheOptions",
        "CacheRule",
        "CacheStore",
        "CachedResponse",
        "FenceChange",
        "Lookup",
        "MemoryCacheStore",
        "NOT_CACHED",
        "NearCacheStore",
        "RedisCacheStore",
        "ResponseCache",
        "compute_etag",
    ],
    "prodkit.cors": [
        "CORSKeywords",
        "CORSMiddleware",
        "CORSOptions",
        "CORS_PREFLIGHT_REJECTED",
        "DEFAULT_ALLOW_HEADERS",
        "DEFAULT_ALLOW_METHODS",
        "DEFAULT_EXPOSE_HEADERS",
        "OriginMatcher",
    ],
    "prodkit.errors": [
        "DEPENDENCY_UNAVAILABLE",
        "ErrorKeywords",
        "ErrorMiddleware",
        "ErrorOptions",
        "FieldError",
        "INTERNAL_ERROR",
        "PROBLEM_CONTENT_TYPE",
        "Problem",
    ],
    "prodkit.health": [
        "CheckResult",
        "HealthCheck",
        "HealthKeywords",
        "HealthMiddleware",
        "HealthOptions",
        "Readiness",
        "postgres_check",
        "redis_check",
    ],
    "prodkit.idempotency": [
        "BODY_TOO_LARGE",
        "CALLER_UNKNOWN",
        "Claim",
        "ClaimLost",
        "ClaimOutcome",
        "DEFAULT_STORED_HEADERS",
        "IN_PROGRESS",
        "IdempotencyClaim",
        "IdempotencyKeywords",
        "IdempotencyMiddleware",
        "IdempotencyOptions",
        "IdempotencyRecord",
        "IdempotencyStore",
        "KEY_INVALID",
        "KEY_MISSING",
        "KEY_REUSED",
        "MemoryIdempotencyStore",
        "PostgresIdempotencyStore",
        "RedisIdempotencyStore",
        "RetryingIdempotencyStore",
        "STORE_UNAVAILABLE",
        "StoredResponse",
        "TransactionalIdempotencyStore",
        "WithdrawingIdempotencyStore",
        "current_claim",
        "schema_sql",
    ],
    "prodkit.lifecycle": [
        "GracefulShutdownKeywords",
        "GracefulShutdownMiddleware",
        "GracefulShutdownOptions",
        "InFlight",
        "LifespanKeywords",
        "LifespanMiddleware",
        "LifespanOptions",
        "SHUTTING_DOWN",
        "ShutdownCoordinator",
        "ShutdownState",
    ],
    "prodkit.logging": [
        "AccessLogKeywords",
        "AccessLogMiddleware",
        "AccessLogOptions",
        "DEFAULT_LEVELS",
        "DEFAULT_REDACT_HEADERS",
        "DEFAULT_REDACT_KEYS",
        "DEFAULT_REDACT_QUERY_PARAMS",
        "LogFormat",
        "REDACTED",
        "Redactor",
        "configure_logging",
        "get_logger",
    ],
    "prodkit.metrics": [
        "BusinessMetrics",
        "DEFAULT_BUCKETS",
        "HTTPMetricsKeywords",
        "HTTPMetricsMiddleware",
        "HTTPMetricsOptions",
        "HTTP_REQUEST_DURATION",
        "HTTP_REQUEST_DURATION_LABELS",
        "MetricsApp",
        "MetricsEndpointKeywords",
        "MetricsEndpointMiddleware",
        "MetricsEndpointOptions",
        "SIZE_BUCKETS",
        "business_counter",
        "business_gauge",
        "business_histogram",
        "mark_process_dead",
        "remove_dead_process_files",
    ],
    "prodkit.ratelimit": [
        "DEFAULT_EXCLUDE_PATHS",
        "MemoryRateLimitStore",
        "QUOTA_EXCEEDED_TYPE",
        "RATE_LIMITED",
        "RATE_LIMIT_UNAVAILABLE",
        "RateLimitDecision",
        "RateLimitKeywords",
        "RateLimitMiddleware",
        "RateLimitOptions",
        "RateLimitPolicy",
        "RateLimitStore",
        "RedisRateLimitStore",
        "parse_rate",
        "route_policy_name",
    ],
    "prodkit.requestid": [
        "RequestIdKeywords",
        "RequestIdMiddleware",
        "RequestIdOptions",
        "generate_request_id",
        "get_parent_span_id",
        "get_request_id",
        "get_trace_id",
        "is_valid_request_id",
        "parse_traceparent",
    ],
    "prodkit.security_headers": [
        "DEFAULT_CSP",
        "SecurityHeadersKeywords",
        "SecurityHeadersMiddleware",
        "SecurityHeadersOptions",
    ],
    "prodkit.settings": [
        "IdempotencyStoreName",
        "StackSettings",
    ],
    "prodkit.shedding": [
        "ConcurrencyLimitKeywords",
        "ConcurrencyLimitMiddleware",
        "ConcurrencyLimitOptions",
        "DEFAULT_EXCLUDE_PATHS",
        "OVERLOADED",
    ],
    "prodkit.stack": [
        "DEFAULT_MAX_CONCURRENCY",
        "DEFAULT_RATE_LIMIT",
        "Layer",
        "Stack",
        "idempotency_store_for",
        "recommended_stack",
    ],
    "prodkit.testing": [
        "LogOutput",
        "capture_log_output",
        "capture_logs",
    ],
    "prodkit.timeouts": [
        "BODY_TOO_LARGE",
        "DEFAULT_BODY_TIMEOUT",
        "DEFAULT_MAX_BODY_BYTES",
        "REQUEST_TIMEOUT",
        "RequestTimeoutKeywords",
        "RequestTimeoutMiddleware",
        "RequestTimeoutOptions",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_the_snapshot(module: str) -> None:
    assert sorted(importlib.import_module(module).__all__) == PUBLIC[module]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_exists_and_is_documented(module: str) -> None:
    imported = importlib.import_module(module)
    for name in imported.__all__:
        value = getattr(imported, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_the_top_level_stays_small() -> None:
    assert len(PUBLIC["prodkit"]) <= 40


def _public_objects() -> dict[int, str]:
    found: dict[int, str] = {}
    for module in PUBLIC:
        imported = importlib.import_module(module)
        for name in imported.__all__:
            found.setdefault(id(getattr(imported, name)), f"{module}.{name}")
    return found


def _prodkit_classes(function: Any) -> Iterator[type]:
    """The prodkit classes named in ``function``'s annotations (strings under PEP 563)."""
    for annotation in inspect.get_annotations(function).values():
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(annotation)):
            value = function.__globals__.get(word)
            if isinstance(value, type) and value.__module__.startswith("prodkit"):
                yield value


def _signatures(value: object) -> Iterator[tuple[str, object]]:
    if inspect.isclass(value):
        for attr, member in vars(value).items():
            public = not attr.startswith("_") or attr == "__init__"
            if public and inspect.isfunction(member):
                yield f"{value.__qualname__}.{attr}", member
    elif inspect.isfunction(value):
        yield value.__qualname__, value


def test_every_type_in_a_public_signature_is_public() -> None:
    public = _public_objects()
    hidden: set[str] = set()
    for module in PUBLIC:
        imported = importlib.import_module(module)
        for name in imported.__all__:
            for where, function in _signatures(getattr(imported, name)):
                for cls in _prodkit_classes(function):
                    if id(cls) not in public:
                        hidden.add(f"{cls.__module__}.{cls.__qualname__} (in {where})")
    assert not hidden, "types used in public signatures but not exported:\n" + "\n".join(
        sorted(hidden)
    )
