"""A Redis :class:`~prodkit.cache.CacheStore` (redis-py's asyncio client, imported lazily).

The store works on one server, behind Sentinel and on a Redis Cluster. An entry and its tag
versions are read with one ``MGET`` (on a Cluster, whose slots they span, the client's
``mget_nonatomic``: one ``MGET`` per slot, pipelined per node); every other command and both
scripts touch a single key (the lease release; a tag's new version, which depends on its
current fence), and writes of several keys are non-transactional pipelines, which a Cluster
client splits per node. An entry and its lease share a hash tag, so they live in one slot.
Invalidation never uses ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prodkit._core.drivers import is_cluster, redis_client, store_client
from prodkit._core.exceptions import ConfigurationError
from prodkit.cache._store import FenceChange, Lookup, plain_change

# Compare-and-delete: only the holder of the lease may release it (the lease may have run out
# and been taken by another worker meanwhile).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


# A tag's next version from its current one and a FenceChange (prodkit.cache._store's
# fenced_version, in Lua): one key read and written atomically. ARGV: now and until (epoch ms),
# writers, at_least, ttl (ms), the unique part. Numbers stay below 2^53: exact in Lua.
_BUMP = """
local now = tonumber(ARGV[1])
local until_ms, writes = 0, 0
local current = redis.call('GET', KEYS[1])
if current then
    local u, w = string.match(current, '^~(%d+)%.(%d+)%.')
    if u and tonumber(u) > now and tonumber(w) > 0 then
        until_ms, writes = tonumber(u), tonumber(w)
    end
end
writes = math.max(writes + tonumber(ARGV[3]), tonumber(ARGV[4]))
until_ms = math.max(until_ms, tonumber(ARGV[2]))
local version = ARGV[6]
if writes > 0 and until_ms > now then
    version = string.format('~%.0f.%.0f.%s', until_ms, writes, ARGV[6])
end
redis.call('SET', KEYS[1], version, 'PX', ARGV[5])
return 1
"""


class RedisCacheStore:
    """Cache entries, tag versions and single-flight leases in Redis, shared by every worker.

    Arguments:
        client: a redis-py asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``) made
            with ``decode_responses=False``, such as one from :func:`prodkit.asgi.redis_client`;
            the store does not close a client it was given. :meth:`from_url` makes one of its
            own.
        key_prefix: prepended to every key (keep one per application and environment).

    Keep the client's timeouts short (:func:`~prodkit.asgi.redis_client`'s are): the cache
    fails open, and its circuit breaker only counts failures it sees.
    """

    def __init__(self, client: Any, *, key_prefix: str = "prodkit:cache:") -> None:
        self._client = store_client(client, "RedisCacheStore")
        self.key_prefix = key_prefix
        self._owns_client = False
        self._release = client.register_script(_RELEASE)
        # The entry and its tags hash to different slots: a Cluster client's MGET per slot.
        self._mget = client.mget_nonatomic if is_cluster(client) else client.mget

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "prodkit:cache:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
    ) -> RedisCacheStore:
        """A store with a client of its own, made by :func:`prodkit.asgi.redis_client` from
        ``url`` (any of its forms: one server, ``redis+cluster://``, ``redis+sentinel://``) and
        closed by :meth:`aclose`.

        Arguments:
            url: where Redis is.
            key_prefix: as for the constructor (default ``"prodkit:cache:"``).
            socket_timeout: seconds a command may take before the driver gives up (default
                ``0.5``).
            connect_timeout: seconds to connect (default ``0.5``).
            max_connections: the client's pool size, per node on a Cluster (default ``64``).
        """
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("socket_timeout and connect_timeout must be positive seconds")
        client = redis_client(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
        store = cls(client, key_prefix=key_prefix)
        store._owns_client = True
        return store

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client in use."""
        return self._client

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        """``MGET`` the entry and every tag version (one round trip; one per node on a Cluster)."""
        if not tags:
            value = await self._client.get(self.key_prefix + key)
            return Lookup(value, ())
        keys = [self.key_prefix + key, *(self.key_prefix + tag for tag in tags)]
        results = await self._mget(keys)
        versions = tuple("" if v is None else v.decode("ascii", "replace") for v in results[1:])
        return Lookup(results[0], versions)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """``SET key value PX ttl`` (one command: value and expiry together)."""
        await self._client.set(self.key_prefix + key, value, px=max(1, int(ttl * 1000)))

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        """``SET … PX`` every value and run the release script, pipelined (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        px = max(1, int(ttl * 1000))
        for key, value in values:
            pipe.set(self.key_prefix + key, value, px=px)
        # EVAL, not EVALSHA: a pipeline with a registered script first asks SCRIPT EXISTS,
        # which would cost a second round trip; the script is under 100 bytes.
        pipe.eval(_RELEASE, 1, self.key_prefix + lock, token)
        await pipe.execute()

    async def bump(
        self, tags: Sequence[str], ttl: float, change: FenceChange | None = None
    ) -> None:
        """A script per tag, pipelined: a random 128-bit version, its fence changed by
        ``change`` (see :class:`~prodkit.cache.FenceChange`), ``PX ttl``."""
        if not tags:
            return
        change = change if change is not None else plain_change()
        args = (
            int(change.now * 1000),
            int(change.until * 1000),
            change.writers,
            change.at_least,
            max(1, int(ttl * 1000)),
        )
        pipe = self._client.pipeline(transaction=False)
        for tag in tags:
            # EVAL, not EVALSHA: see complete(); one key per script, so Cluster-safe.
            pipe.eval(_BUMP, 1, self.key_prefix + tag, *args, os.urandom(16).hex())
        await pipe.execute()

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """``SET lock token NX PX lease``."""
        result = await self._client.set(
            self.key_prefix + key, token, nx=True, px=max(1, int(lease * 1000))
        )
        return bool(result)

    async def release(self, key: str, token: str) -> bool:
        """Compare-and-delete script: ``DEL`` only when the lock still holds ``token``."""
        return bool(await self._release(keys=[self.key_prefix + key], args=[token]))

    async def aclose(self) -> None:
        """Close the client if this store made it (:meth:`from_url`)."""
        if self._owns_client:
            await self._client.aclose()


__all__ = ["RedisCacheStore"]
