"""The rate-limit store protocol and the GCRA arithmetic every store shares.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp).
For a policy of ``quota`` requests per ``window`` seconds, the emission interval is
``T = window / quota``. A store keeps, per key, the *theoretical arrival time* ``tat``; its
``debt`` at time ``now`` is ``max(tat - now, 0)``. A request of cost ``c`` is allowed when
``debt + c*T <= window`` and then moves ``tat`` to ``now + debt + c*T``. So a fresh client may
send ``quota`` requests at once, then one every ``T`` seconds; the allowance refills smoothly
instead of at a window edge, and the time until a request would succeed is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prodkit.ratelimit._policy import _CEIL_SLACK, RateLimitPolicy

# Float arithmetic on ``k * window/quota`` must not lose a unit of quota to rounding.
EPSILON = 1e-6  # one microsecond: arrival times near the epoch carry ~1e-7 s of float error


@dataclass(slots=True)
class RateLimitDecision:
    """The outcome of one :meth:`RateLimitStore.consume` call.

    Attributes:
        allowed: the request fits in the quota (and was counted).
        remaining: requests that would still be allowed right now (``r``).
        reset_after: seconds until the whole quota is available again.
        retry_after: seconds until one more request would be allowed (0 while ``remaining``
            is positive).
    """

    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float

    @property
    def reset(self) -> int:
        """The ``t`` parameter of the ``RateLimit`` field, in whole seconds.

        While quota remains, ``t`` is when the whole quota is back. When it is exhausted the
        quota comes back one unit at a time, so ``t`` is when the next unit arrives, the same
        instant as ``Retry-After`` (a 429's ``Retry-After`` is therefore never below its ``t``).
        """
        # ``ceil_seconds`` inlined: the middleware reads this for every request it limits.
        seconds = self.reset_after if self.remaining > 0 else self.retry_after
        return 0 if seconds <= 0 else math.ceil(seconds - _CEIL_SLACK)


def gcra(debt: float, policy: RateLimitPolicy, cost: int = 1) -> tuple[bool, float]:
    """Apply the GCRA to a key's current ``debt``: return ``(allowed, debt_after)``."""
    added = debt + cost * policy.interval
    if added > policy.ceiling:
        return False, debt
    return True, added


def decision(
    allowed: bool, debt: float, policy: RateLimitPolicy, cost: int = 1
) -> RateLimitDecision:
    """Build the decision from the debt (seconds) a key has after the request."""
    # The hot path of every store: plain comparisons instead of max(), and int() instead of
    # math.floor(), which agree here because a negative count is clamped to 0 either way.
    if debt < 0.0:
        debt = 0.0
    interval = policy.interval
    spare = policy.window - debt
    remaining = int(spare / interval + EPSILON)
    if remaining < 0:
        remaining = 0
    if not allowed:
        retry_after = max(0.0, cost * interval - spare)
    elif remaining > 0:
        retry_after = 0.0
    else:
        retry_after = max(0.0, interval - spare)
    return RateLimitDecision(allowed, remaining, debt, retry_after)


@runtime_checkable
class RateLimitStore(Protocol):
    """Where rate-limit state lives; pluggable (memory, Redis, or your own).

    Implementations must make :meth:`consume` atomic per key: two concurrent calls for the
    same key, from any number of processes sharing the store, never both take the last unit.
    """

    async def consume(self, key: str, policy: RateLimitPolicy, cost: int = 1) -> RateLimitDecision:
        """Atomically check ``cost`` units of ``policy`` for ``key`` and take them if they fit."""
        ...

    async def reset(self, key: str, policy: RateLimitPolicy) -> None:
        """Forget ``key``'s usage of ``policy`` (its full quota is available again)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


__all__ = ["EPSILON", "RateLimitDecision", "RateLimitStore", "decision", "gcra"]
