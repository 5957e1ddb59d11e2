"""prodkit: composable pure-ASGI middlewares that make an ASGI service production-grade.

This namespace holds what an application developer needs: the middlewares, the recommended
stack and its settings, the exceptions, problems, the request-context getters and logging set-up.
Stores, policies, checks and constants live in their concern's package (``prodkit.cache``,
``prodkit.idempotency``, ``prodkit.ratelimit`` ...); helpers for writing middleware live in
:mod:`prodkit.asgi`. Importing prodkit imports no web framework and no database driver.
"""

from __future__ import annotations

from prodkit.__about__ import __version__
from prodkit._core.callers import caller_from_authorization, caller_from_header
from prodkit._core.context import get_parent_span_id, get_request_id, get_trace_id
from prodkit._core.exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    MissingDependencyError,
    ProdkitError,
)
from prodkit._core.problems import FieldError, Problem
from prodkit.cache import CacheMiddleware
from prodkit.cors import CORSMiddleware
from prodkit.errors import ErrorMiddleware
from prodkit.health import HealthMiddleware
from prodkit.idempotency import IdempotencyMiddleware
from prodkit.lifecycle import GracefulShutdownMiddleware, LifespanMiddleware
from prodkit.logging import AccessLogMiddleware, configure_logging
from prodkit.metrics import HTTPMetricsMiddleware, MetricsEndpointMiddleware
from prodkit.ratelimit import RateLimitMiddleware
from prodkit.requestid import RequestIdMiddleware
from prodkit.security_headers import SecurityHeadersMiddleware
from prodkit.settings import StackSettings
from prodkit.shedding import ConcurrencyLimitMiddleware
from prodkit.stack import Layer, Stack, recommended_stack
from prodkit.timeouts import RequestTimeoutMiddleware

# The exceptions are defined in private modules but raised to, caught and pickled by users:
# tracebacks and pickles name them where users import them from (``prodkit.ConfigurationError``).
for _public in (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    MissingDependencyError,
    Problem,
    ProdkitError,
):
    _public.__module__ = __name__
del _public

__all__ = [
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
]
