"""Redis rate-limit store: one atomic Lua script per decision, shared by every worker.

The GCRA step (see :mod:`prodkit.ratelimit`) runs inside Redis as one script, so
concurrent requests from any number of processes are serialised by Redis itself; the script
is a single round trip (``EVALSHA``) touching a single key, so it runs unchanged on a Redis
Cluster.

Time: by default the script reads the clock of the Redis server (``TIME``), so every worker
and host agrees on "now" whatever their own clocks say. Pass ``clock`` (seconds since the
epoch, e.g. for tests) to send the time from the client instead.

Keys look like ``{key_prefix}{policy}:{<client key>}``; the client key is a Redis Cluster hash
tag, so all of one client's policies live in one slot. A client key that contains braces or
is longer than 200 characters is replaced by its SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prodkit._core.drivers import redis_client, require, store_client
from prodkit._core.exceptions import BackendError
from prodkit.ratelimit._policy import RateLimitPolicy
from prodkit.ratelimit._store import RateLimitDecision, decision

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[4])
end
local tat = tonumber(redis.call("GET", KEYS[1]) or "") or now
local debt = tat - now
if debt < 0 then debt = 0 end
local added = debt + cost * interval
if added > window + 0.001 then
  return {0, string.format("%.6f", debt)}
end
-- The key outlives its arrival time by a second: a key gone early would hand out a fresh quota
-- when the time passed in (ARGV[4]) runs behind the clock Redis expires keys by.
redis.call("SET", KEYS[1], string.format("%.6f", now + added), "PX", math.ceil(added) + 1000)
return {1, string.format("%.6f", added)}
"""


class RedisRateLimitStore:
    """A :class:`~prodkit.ratelimit.RateLimitStore` in Redis (redis-py's asyncio client).

    Arguments:
        client: a redis-py asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``), such
            as one from :func:`prodkit.asgi.redis_client`; the store does not close a client it
            was given unless ``owns_client`` is true (as with :meth:`from_url`).
        key_prefix: namespace of every key (default ``"prodkit:ratelimit:"``).
        clock: ``None`` (default) to use Redis ``TIME``, or a callable returning seconds since
            the epoch to pass the time in.
        owns_client: close ``client`` in :meth:`aclose` (default ``False``).

    Driver errors are raised as :class:`~prodkit.BackendError` with the cause chained; put a
    :class:`~prodkit.asgi.CircuitBreaker` in front (:class:`~prodkit.RateLimitMiddleware`
    does).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        key_prefix: str = "prodkit:ratelimit:",
        clock: Callable[[], float] | None = None,
        owns_client: bool = False,
    ) -> None:
        store_client(client, "RedisRateLimitStore", bytes_replies=False)
        self._client = client
        self.key_prefix = key_prefix
        self._clock = clock
        self._owns_client = owns_client
        self._script: Any = client.register_script(GCRA_SCRIPT)
        exceptions: Any = require("redis.exceptions", "redis")
        self._errors: tuple[type[BaseException], ...] = (exceptions.RedisError, OSError)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "prodkit:ratelimit:",
        clock: Callable[[], float] | None = None,
        socket_timeout: float = 0.5,
        max_connections: int = 64,
    ) -> RedisRateLimitStore:
        """A store with a client of its own, made by :func:`prodkit.asgi.redis_client` from
        ``url`` (any of its forms: one server, ``redis+cluster://``, ``redis+sentinel://``) and
        closed by :meth:`aclose`.

        On one server, requests beyond ``max_connections`` wait (up to ``socket_timeout``) for
        a pooled connection instead of failing. The driver's own retries are turned off: a
        failed call fails fast and the circuit breaker decides when to try again. To share one
        client between several stores, make it once with :func:`~prodkit.asgi.redis_client`
        and pass it to each.
        """
        client = redis_client(url, max_connections=max_connections, socket_timeout=socket_timeout)
        return cls(client, key_prefix=key_prefix, clock=clock, owns_client=True)

    @property
    def client(self) -> Redis | RedisCluster:
        """The Redis client the store uses (for a health check, say)."""
        return self._client

    def redis_key(self, key: str, policy: RateLimitPolicy) -> str:
        """The Redis key that holds ``key``'s state for ``policy``."""
        if len(key) > 200 or "{" in key or "}" in key:
            key = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.key_prefix}{policy.name}:{{{key}}}"

    async def consume(self, key: str, policy: RateLimitPolicy, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units of ``policy`` for ``key`` if they fit, atomically in Redis."""
        now = "" if self._clock is None else f"{self._clock() * 1000:.3f}"
        args = [f"{policy.interval * 1000:.6f}", policy.window * 1000, cost, now]
        try:
            allowed, debt = await self._script(keys=[self.redis_key(key, policy)], args=args)
        except self._errors as exc:
            raise BackendError(f"redis rate-limit store: {type(exc).__name__}: {exc}") from exc
        return decision(bool(allowed), float(debt) / 1000, policy, cost)

    async def reset(self, key: str, policy: RateLimitPolicy) -> None:
        """Delete ``key``'s state for ``policy``."""
        try:
            await self._client.delete(self.redis_key(key, policy))
        except self._errors as exc:
            raise BackendError(f"redis rate-limit store: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            await self._client.aclose()


__all__ = ["GCRA_SCRIPT", "RedisRateLimitStore"]
