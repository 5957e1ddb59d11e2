"""prodkit: composable pure-ASGI middlewares that make an ASGI service production-grade.

Everything public is importable from here; modules whose names start with an underscore are
implementation details. Importing prodkit imports no web framework and no database driver.
"""

from __future__ import annotations

from prodkit.__about__ import __version__
from prodkit._client import ClientAddressResolver, normalize_ip, parse_ip
from prodkit._context import get_parent_span_id, get_request_id, get_trace_id
from prodkit._headers import (
    append_vary,
    get_all_headers,
    get_header,
    get_list_header,
    message_headers,
    remove_header,
    scope_header,
    set_default_header,
    set_header,
)
from prodkit._problem import (
    PROBLEM_CONTENT_TYPE,
    FieldError,
    Problem,
    encode_problem,
    problem_dict,
    problem_type,
    send_problem,
)
from prodkit._routing import (
    UNMATCHED_ROUTE,
    RouteResolver,
    RouteTable,
    route_template,
    route_template_before,
)
from prodkit._send import ReceiveWatcher, ResponseObserver, read_body, replay_receive
from prodkit._types import ASGIApp, Message, Receive, Scope, Send
from prodkit.cache import (
    CachedResponse,
    CacheMiddleware,
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    header_user_key,
)
from prodkit.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    MissingDependencyError,
    ProdkitError,
)
from prodkit.health import CheckResult, HealthCheck, HealthMiddleware, postgres_check, redis_check
from prodkit.idempotency import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
    store_from_env,
)
from prodkit.lifespan import LifespanMiddleware
from prodkit.logging import Redactor, configure_logging
from prodkit.middleware.access_log import AccessLogMiddleware
from prodkit.middleware.concurrency import ConcurrencyLimitMiddleware
from prodkit.middleware.cors import CORSMiddleware, OriginMatcher
from prodkit.middleware.errors import ErrorMiddleware
from prodkit.middleware.idempotency import (
    IdempotencyMiddleware,
    caller_from_authorization,
    caller_from_header,
)
from prodkit.middleware.metrics import (
    BusinessMetrics,
    MetricsApp,
    MetricsMiddleware,
    PrometheusMiddleware,
    business_counter,
    business_gauge,
    business_histogram,
    mark_process_dead,
    remove_dead_process_files,
)
from prodkit.middleware.request_id import (
    RequestIdMiddleware,
    generate_request_id,
    is_valid_request_id,
    parse_traceparent,
)
from prodkit.middleware.security_headers import SecurityHeadersMiddleware
from prodkit.middleware.shutdown import SHUTTING_DOWN, GracefulShutdownMiddleware
from prodkit.ratelimit import (
    MemoryRateLimitStore,
    RateLimitDecision,
    RateLimitMiddleware,
    RateLimitPolicy,
    RateLimitStore,
    parse_rate,
)
from prodkit.ratelimit.redis import RedisRateLimitStore
from prodkit.resilience import BreakerState, CircuitBreaker
from prodkit.settings import StackSettings
from prodkit.shutdown import InFlight, ShutdownCoordinator, ShutdownState
from prodkit.stack import Stack, recommended_stack

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "SHUTTING_DOWN",
    "UNMATCHED_ROUTE",
    "ASGIApp",
    "AccessLogMiddleware",
    "BackendError",
    "BackendUnavailableError",
    "BreakerState",
    "BusinessMetrics",
    "CORSMiddleware",
    "CacheMiddleware",
    "CacheRule",
    "CacheStore",
    "CachedResponse",
    "CheckResult",
    "CircuitBreaker",
    "Claim",
    "ClaimOutcome",
    "ClientAddressResolver",
    "ConcurrencyLimitMiddleware",
    "ConfigurationError",
    "ErrorMiddleware",
    "FieldError",
    "GracefulShutdownMiddleware",
    "HealthCheck",
    "HealthMiddleware",
    "IdempotencyMiddleware",
    "IdempotencyRecord",
    "IdempotencyStore",
    "InFlight",
    "LifespanMiddleware",
    "MemoryCacheStore",
    "MemoryIdempotencyStore",
    "MemoryRateLimitStore",
    "Message",
    "MetricsApp",
    "MetricsMiddleware",
    "MissingDependencyError",
    "OriginMatcher",
    "PostgresIdempotencyStore",
    "Problem",
    "ProdkitError",
    "PrometheusMiddleware",
    "RateLimitDecision",
    "RateLimitMiddleware",
    "RateLimitPolicy",
    "RateLimitStore",
    "Receive",
    "ReceiveWatcher",
    "Redactor",
    "RedisCacheStore",
    "RedisIdempotencyStore",
    "RedisRateLimitStore",
    "RequestIdMiddleware",
    "ResponseCache",
    "ResponseObserver",
    "RouteResolver",
    "RouteTable",
    "Scope",
    "SecurityHeadersMiddleware",
    "Send",
    "ShutdownCoordinator",
    "ShutdownState",
    "Stack",
    "StackSettings",
    "StoredResponse",
    "__version__",
    "append_vary",
    "business_counter",
    "business_gauge",
    "business_histogram",
    "caller_from_authorization",
    "caller_from_header",
    "configure_logging",
    "encode_problem",
    "generate_request_id",
    "get_all_headers",
    "get_header",
    "get_list_header",
    "get_parent_span_id",
    "get_request_id",
    "get_trace_id",
    "header_user_key",
    "is_valid_request_id",
    "mark_process_dead",
    "message_headers",
    "normalize_ip",
    "parse_ip",
    "parse_rate",
    "parse_traceparent",
    "postgres_check",
    "problem_dict",
    "problem_type",
    "read_body",
    "recommended_stack",
    "redis_check",
    "remove_dead_process_files",
    "remove_header",
    "replay_receive",
    "route_template",
    "route_template_before",
    "scope_header",
    "send_problem",
    "set_default_header",
    "set_header",
    "store_from_env",
]
