"""A Redis :class:`~prodkit.cache.CacheStore` (redis-py's asyncio client, imported lazily).

On a single server, an entry and its tag versions are read with one ``MGET``. On Redis Cluster
(a ``redis.asyncio.cluster.RedisCluster`` client) every command touches one key: the read is
a non-transactional pipeline of ``GET``s, which the cluster client splits per node, and the
two scripts each read and write a single key (the lease release; a tag's new version, which
depends on its current fence). Invalidation never uses ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prodkit._core.drivers import redis_client
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
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL (ignored when ``client`` is given).
        client: an existing ``redis.asyncio.Redis`` (or ``RedisCluster``) to use instead; the
            store does not close a client it was given.
        key_prefix: prepended to every key (keep one per application and environment).
        socket_timeout: seconds a command may take before the driver gives up. Keep it short:
            the cache fails open, and its circuit breaker only counts failures it sees.
        connect_timeout: seconds to connect.
        max_connections: connection pool size (for a client built from ``url``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        key_prefix: str = "prodkit:cache:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("socket_timeout and connect_timeout must be positive seconds")
        self.key_prefix = key_prefix
        self._owns_client = client is None
        if client is None:
            if not url:
                raise ConfigurationError(
                    "RedisCacheStore needs a url ('redis://host:6379/0') or a client"
                )
            client = redis_client(
                url,
                max_connections=max_connections,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
            )
        self._client = client
        # Cluster: no multi-key commands (MGET across slots fails), pipelines instead.
        self._cluster = hasattr(client, "get_node_from_key")
        self._release = client.register_script(_RELEASE)

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client in use."""
        return self._client

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        """``GET`` the entry and every tag version in one pipeline."""
        if not tags:
            value = await self._client.get(self.key_prefix + key)
            return Lookup(value, ())
        keys = [self.key_prefix + key, *(self.key_prefix + tag for tag in tags)]
        if self._cluster:
            pipe = self._client.pipeline(transaction=False)
            for name in keys:
                pipe.get(name)
            results = await pipe.execute()
        else:
            results = await self._client.mget(keys)
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
        """Close the client if this store created it."""
        if self._owns_client:
            await self._client.aclose()


__all__ = ["RedisCacheStore"]
