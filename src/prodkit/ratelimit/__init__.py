"""Rate limiting: ``RateLimitMiddleware``, policies, and the GCRA stores (memory, Redis).

The Redis store imports ``redis`` only when it is built.
"""

from __future__ import annotations

from prodkit.ratelimit._memory import MemoryRateLimitStore
from prodkit.ratelimit._middleware import (
    DEFAULT_EXCLUDE_PATHS,
    QUOTA_EXCEEDED_TYPE,
    RATE_LIMIT_UNAVAILABLE,
    RATE_LIMITED,
    RateLimitKeywords,
    RateLimitMiddleware,
    RateLimitOptions,
)
from prodkit.ratelimit._policy import RateLimitPolicy, parse_rate, route_policy_name
from prodkit.ratelimit._redis import RedisRateLimitStore
from prodkit.ratelimit._store import RateLimitDecision, RateLimitStore

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "QUOTA_EXCEEDED_TYPE",
    "RATE_LIMITED",
    "RATE_LIMIT_UNAVAILABLE",
    "MemoryRateLimitStore",
    "RateLimitDecision",
    "RateLimitKeywords",
    "RateLimitMiddleware",
    "RateLimitOptions",
    "RateLimitPolicy",
    "RateLimitStore",
    "RedisRateLimitStore",
    "parse_rate",
    "route_policy_name",
]
