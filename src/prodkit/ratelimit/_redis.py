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

Reserved units (``reserve``, on by default): while a key has plenty of quota left, the script
grants a worker a few units beyond the request's cost, which the worker then hands out with no
round trip; see :mod:`prodkit.ratelimit._reserved` for why the limit still holds and how long
an unused unit can sit in one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prodkit._core import options as valid
from prodkit._core.drivers import redis_client, require, store_client
from prodkit._core.exceptions import BackendError
from prodkit.ratelimit._policy import RateLimitPolicy
from prodkit.ratelimit._reserved import Reservations
from prodkit.ratelimit._store import RateLimitDecision, decision

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local extra = tonumber(ARGV[5] or "0")
local giveback = tonumber(ARGV[6] or "0")
local now
if ARGV[4] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[4])
end
local stored = tonumber(redis.call("GET", KEYS[1]) or "")
if stored == nil and cost == 0 then
  return {1, "0", 0}
end
local tat = stored or now
local debt = tat - now
if debt < 0 then debt = 0 end
-- Units a worker reserved and did not use come back (a key reset meanwhile has none to take).
if stored ~= nil and giveback > 0 then
  debt = math.max(debt - giveback * interval, 0)
end
-- Arrival times near 1.8e12 ms lose about 2e-4 ms to rounding per step; the slack (a thousandth
-- of a unit, at least a microsecond: RateLimitPolicy.ceiling) keeps a long quota's last unit.
local slack = math.max(0.001, interval / 1000)
local added = debt + cost * interval
if added > window + slack then
  if giveback > 0 and stored ~= nil then
    redis.call("SET", KEYS[1], string.format("%.6f", now + debt), "PX", math.ceil(debt) + 1000)
  end
  return {0, string.format("%.6f", debt), 0}
end
-- Reserve at most half of the units left, so the last units are always decided here.
local grant = math.min(extra, math.floor(math.floor((window + slack - added) / interval) / 2))
if grant < 0 then grant = 0 end
added = added + grant * interval
-- The key outlives its arrival time by a second: a key gone early would hand out a fresh quota
-- when the time passed in (ARGV[4]) runs behind the clock Redis expires keys by.
redis.call("SET", KEYS[1], string.format("%.6f", now + added), "PX", math.ceil(added) + 1000)
return {1, string.format("%.6f", added), grant}
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
        reserve: the share of a policy's quota one round trip may reserve for this worker
            beyond the request's cost (default ``0.01``: 1 %, so a ``6000/minute`` key makes
            one round trip per 61 requests; never more than half of what the key has left).
            Reserved units are counted in Redis when taken, so the limit is never exceeded;
            ``0`` decides every request in Redis.
        reserve_for: seconds before unused reserved units go back to Redis (default ``1.0``);
            also how long a refusal is repeated without asking Redis again.
        max_reserved_keys: keys a worker holds reservations for at most (default ``10000``);
            beyond that, requests for other keys are decided in Redis one by one.

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
        reserve: float = 0.01,
        reserve_for: float = 1.0,
        max_reserved_keys: int = 10_000,
    ) -> None:
        store_client(client, "RedisRateLimitStore", bytes_replies=False)
        share = valid.fraction("reserve", reserve, example=0.01)
        hold = valid.positive_seconds("reserve_for", reserve_for)
        most = valid.non_negative_int("max_reserved_keys", max_reserved_keys, example=10_000)
        self._client = client
        self.key_prefix = key_prefix
        self._clock = clock
        self._owns_client = owns_client
        self._script: Any = client.register_script(GCRA_SCRIPT)
        exceptions: Any = require("redis.exceptions", "redis")
        self._errors: tuple[type[BaseException], ...] = (exceptions.RedisError, OSError)
        now = time.monotonic if clock is None else clock
        self._reserved = Reservations(share, hold, most, now) if share and most else None
        self._returns: asyncio.Task[None] | None = None
        # Keys whose reserving round trip is in flight, each with what its followers await.
        self._refills: dict[str, asyncio.Future[None]] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "prodkit:ratelimit:",
        clock: Callable[[], float] | None = None,
        socket_timeout: float = 0.5,
        max_connections: int = 64,
        reserve: float = 0.01,
        reserve_for: float = 1.0,
        max_reserved_keys: int = 10_000,
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
        return cls(
            client,
            key_prefix=key_prefix,
            clock=clock,
            owns_client=True,
            reserve=reserve,
            reserve_for=reserve_for,
            max_reserved_keys=max_reserved_keys,
        )

    @property
    def client(self) -> Redis | RedisCluster:
        """The Redis client the store uses (for a health check, say)."""
        return self._client

    def redis_key(self, key: str, policy: RateLimitPolicy) -> str:
        """The Redis key that holds ``key``'s state for ``policy``."""
        if len(key) > 200 or "{" in key or "}" in key:
            key = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.key_prefix}{policy.name}:{{{key}}}"

    def consume_reserved(
        self, key: str, policy: RateLimitPolicy, cost: int = 1
    ) -> RateLimitDecision | None:
        """Decide from this worker's reserved units alone, or ``None`` when Redis must.

        :meth:`consume` tries this first; a caller on a hot path (the middleware) may call it
        before going through its circuit breaker, since it touches no network.
        """
        if self._reserved is None:
            return None
        return self._reserved.take(self.redis_key(key, policy), policy, cost)

    async def consume(self, key: str, policy: RateLimitPolicy, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units of ``policy`` for ``key`` if they fit, atomically in Redis
        (or from the units this worker reserved there)."""
        redis_key = self.redis_key(key, policy)
        reserved = self._reserved
        if reserved is None:
            return await self._decide(redis_key, policy, cost, 0, 0)
        local = reserved.take(redis_key, policy, cost)
        if local is not None:
            return local
        extra = reserved.ahead(policy)
        if not extra:  # a small quota, or a full table: every request decided in Redis
            return await self._decide(redis_key, policy, cost, 0, reserved.release(redis_key))
        refill = self._refills.get(redis_key)
        if refill is not None:
            # One round trip per key reserves at a time: the others wait for its units (a
            # burst would otherwise reserve once per request in flight), then ask for no more.
            await asyncio.shield(refill)
            local = reserved.take(redis_key, policy, cost)
            if local is not None:
                return local
            return await self._decide(redis_key, policy, cost, 0, reserved.release(redis_key))
        refill = self._refills[redis_key] = asyncio.get_running_loop().create_future()
        try:
            giveback = reserved.release(redis_key)
            return await self._decide(redis_key, policy, cost, extra, giveback)
        finally:
            del self._refills[redis_key]
            refill.set_result(None)

    async def _decide(
        self, redis_key: str, policy: RateLimitPolicy, cost: int, extra: int, giveback: float
    ) -> RateLimitDecision:
        """One script run: take ``cost`` (and up to ``extra`` more), give ``giveback`` back."""
        args = self._args(policy, cost, extra, giveback)
        try:
            allowed, debt, granted = await self._script(keys=[redis_key], args=args)
        except self._errors as exc:
            raise BackendError(f"redis rate-limit store: {type(exc).__name__}: {exc}") from exc
        seconds = float(debt) / 1000
        reserved = self._reserved
        if reserved is not None:
            reserved.record(redis_key, policy, seconds, int(granted))
            if granted and self._returns is None:
                self._returns = asyncio.get_running_loop().create_task(self._give_back())
        return decision(bool(allowed), seconds - int(granted) * policy.interval, policy, cost)

    def _args(
        self, policy: RateLimitPolicy, cost: int, extra: int, giveback: float
    ) -> list[str | int | float]:
        """The script's arguments: the policy in milliseconds, the cost, the time (empty: Redis
        ``TIME``), the units to reserve beyond the cost and those to give back."""
        now = "" if self._clock is None else f"{self._clock() * 1000:.3f}"
        return [f"{policy.interval * 1000:.6f}", policy.window * 1000, cost, now, extra, giveback]

    async def _give_back(self) -> None:
        """Return reserved units nobody used in time, until no reservation is left."""
        reserved = self._reserved
        assert reserved is not None
        try:
            while len(reserved):
                await asyncio.sleep(reserved.hold / 2)
                for key, policy, units in reserved.expired():
                    await self._return(key, policy, units)
        finally:
            self._returns = None

    async def _return(self, redis_key: str, policy: RateLimitPolicy, units: float) -> None:
        """Give ``units`` unused units of ``redis_key`` back; a failure only loses them as
        debt, which drains at the policy's rate."""
        with contextlib.suppress(*self._errors):
            await self._script(keys=[redis_key], args=self._args(policy, 0, 0, units))

    async def reset(self, key: str, policy: RateLimitPolicy) -> None:
        """Delete ``key``'s state for ``policy`` (and this worker's reservation for it)."""
        redis_key = self.redis_key(key, policy)
        if self._reserved is not None:
            self._reserved.release(redis_key)
        try:
            await self._client.delete(redis_key)
        except self._errors as exc:
            raise BackendError(f"redis rate-limit store: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Give every reserved unit back, then close the client if this store created it."""
        if self._returns is not None:
            self._returns.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._returns
        if self._reserved is not None:
            back = self._reserved.clear()
            # Bounded: a dead Redis must not hold up a shutdown (the units drain as debt).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reserved.hold):
                    await asyncio.gather(*(self._return(*each) for each in back))
        if self._owns_client:
            await self._client.aclose()


__all__ = ["GCRA_SCRIPT", "RedisRateLimitStore"]
