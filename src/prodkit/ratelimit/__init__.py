"""Rate limiting: policies, the GCRA stores (memory, Redis) and ``RateLimitMiddleware``.

``RedisRateLimitStore`` is imported from :mod:`prodkit.ratelimit.redis` on first use, so
importing this package never imports the Redis driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prodkit.ratelimit.memory import MemoryRateLimitStore
from prodkit.ratelimit.middleware import (
    QUOTA_EXCEEDED_TYPE,
    RATE_LIMIT_UNAVAILABLE,
    RATE_LIMITED,
    RateLimitMiddleware,
)
from prodkit.ratelimit.policy import RateLimitPolicy, parse_rate
from prodkit.ratelimit.store import RateLimitDecision, RateLimitStore

if TYPE_CHECKING:
    from prodkit.ratelimit.redis import RedisRateLimitStore


def __getattr__(name: str) -> Any:
    if name == "RedisRateLimitStore":
        from prodkit.ratelimit.redis import RedisRateLimitStore

        return RedisRateLimitStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "QUOTA_EXCEEDED_TYPE",
    "RATE_LIMITED",
    "RATE_LIMIT_UNAVAILABLE",
    "MemoryRateLimitStore",
    "RateLimitDecision",
    "RateLimitMiddleware",
    "RateLimitPolicy",
    "RateLimitStore",
    "RedisRateLimitStore",
    "parse_rate",
]
