"""Redis idempotency store: one hash per record, every operation one Lua script.

Keys look like ``{key_prefix}{<sha256 hex>}``: the braces are a Redis Cluster hash tag, so a record
and anything added beside it later hash to one slot. Time is the Redis server's (``TIME``), so
worker clocks do not matter; each record also carries a Redis TTL, so nothing outlives it.
"""

from __future__ import annotations

import json
from typing import Any

from prodkit._core.drivers import redis_client, require, store_client
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit.idempotency._releases import PendingReleases
from prodkit.idempotency._store import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    StoredResponse,
)

# Fields: fp (fingerprint), owner, lease (ms), exp (ms), status, headers (JSON), body. A completed
# record keeps its owner, so that it alone can withdraw it. A tentative record is a completed one
# that keeps its lease: while the lease runs it answers like a claim in progress.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[#ARGV])
"""

_CLAIM = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'owner', 'lease', 'exp', 'status', 'headers', 'body')
local live = rec[4] and tonumber(rec[4]) > now
if live then
  if rec[1] ~= ARGV[1] then return {2} end
  local left = rec[3] and tonumber(rec[3]) - now or 0
  if rec[5] and left <= 0 then return {3, rec[5], rec[6], rec[7]} end
  if left > 0 then return {4, left} end
end
local lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'lease', now + lease, 'exp', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return {1}
"""
)

# ARGV[6] is "1" for a tentative record (the lease stays), "0" for a final one.
_COMPLETE = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'exp', 'status')
if not rec[1] or rec[1] ~= ARGV[1] or rec[3] or tonumber(rec[2]) <= now then return 0 end
local ttl = tonumber(ARGV[2])
if ARGV[6] ~= '1' then redis.call('HDEL', KEYS[1], 'lease') end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5], 'exp', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""
)

_CONFIRM = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'exp', 'status', 'lease')
if rec[1] ~= ARGV[1] or not rec[3] or not rec[4] or tonumber(rec[2]) <= now then return 0 end
redis.call('HDEL', KEYS[1], 'lease')
return 1
"""
)

_RELEASE = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'exp', 'status')
if not rec[1] or rec[1] ~= ARGV[1] or rec[3] or tonumber(rec[2]) <= now then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
)

_GET = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'owner', 'exp', 'status', 'headers', 'body', 'lease')
if not rec[3] or tonumber(rec[3]) <= now then return {} end
local pending = not rec[4] or (rec[7] and tonumber(rec[7]) > now)
local owner = false
if pending then owner = rec[2] or false end
local tentative = 0
if rec[4] and pending then tentative = 1 end
return {rec[1], owner, rec[4] or false, rec[5] or false, rec[6] or false, tentative}
"""
)

_WITHDRAW = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'status')
if rec[1] ~= ARGV[1] or not rec[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    return json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]).encode()


def _decode_headers(raw: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
    if not raw:
        return ()
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(raw))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisIdempotencyStore:
    """Keep idempotency records in Redis (one server, Sentinel or Cluster).

    Arguments:
        client: a redis-py asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``) made
            with ``decode_responses=False`` (bodies are bytes), such as one from
            :func:`prodkit.asgi.redis_client`; the store does not close a client it was given.
            :meth:`from_url` makes one of its own.
        key_prefix: prepended to every key (default ``"prodkit:idem:"``); the hashed key
            follows in braces.
        clock_offset: seconds added to the Redis clock (default ``0.0``); for tests that need
            time to pass.
        logger: a structlog logger its lines go to, redacted first (default: the
            ``prodkit.idempotency`` logger).

    Every operation is one Lua script on one key, so the store works unchanged on a Redis
    Cluster. A release that fails (Redis restarting, a network partition, a failover) is
    retried in the background until it lands or the claim's lease is over: see
    :meth:`retry_release`.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "prodkit:idem:",
        clock_offset: float = 0.0,
        logger: Any | None = None,
    ) -> None:
        store_client(client, "RedisIdempotencyStore")
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigurationError(
                "key_prefix must not contain '{' or '}' (used as the hash tag)"
            )
        self.client = client
        self.key_prefix = key_prefix
        self.clock_offset = clock_offset
        self._owns_client = False
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._get = client.register_script(_GET)
        self._withdraw = client.register_script(_WITHDRAW)
        self._confirm = client.register_script(_CONFIRM)
        self.logger = safe_logger("prodkit.idempotency", logger)
        self._releases = PendingReleases(self.release, self.logger)
        self._withdrawals = PendingReleases(
            self.withdraw, self.logger, what="withdrawal", done="withdrawn"
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "prodkit:idem:",
        clock_offset: float = 0.0,
        logger: Any | None = None,
    ) -> RedisIdempotencyStore:
        """A store with a client of its own, made by :func:`prodkit.asgi.redis_client` from
        ``url`` (any of its forms: one server, ``redis+cluster://``, ``redis+sentinel://``) and
        closed by :meth:`aclose`. The other arguments are the constructor's.

        To share one client between several stores, make it once with
        :func:`~prodkit.asgi.redis_client` and pass it to each.
        """
        store = cls(
            redis_client(url), key_prefix=key_prefix, clock_offset=clock_offset, logger=logger
        )
        store._owns_client = True
        return store

    def redis_key(self, key: str) -> str:
        """The Redis key of a record."""
        return f"{self.key_prefix}{{{key}}}"

    async def _call(self, script: Any, key: str, *args: Any) -> Any:
        redis_exceptions: Any = require("redis.exceptions", "redis")
        try:
            return await script(
                keys=[self.redis_key(key)], args=[*args, _ms_offset(self.clock_offset)]
            )
        except (OSError, redis_exceptions.RedisError) as exc:
            raise BackendError(f"Redis idempotency store: {exc}") from exc

    async def claim(
        self, key: str, fingerprint: bytes, owner: str, *, lease: float, ttl: float
    ) -> Claim:
        """See :meth:`prodkit.idempotency.IdempotencyStore.claim`."""
        result = await self._call(self._claim, key, fingerprint, owner, _ms(lease), _ms(ttl))
        code = int(result[0])
        if code == 1:
            return Claim(ClaimOutcome.ACQUIRED)
        if code == 2:
            return Claim(ClaimOutcome.MISMATCH)
        if code == 3:
            response = StoredResponse(int(result[1]), _decode_headers(result[2]), result[3] or b"")
            return Claim(ClaimOutcome.COMPLETED, response=response)
        return Claim(ClaimOutcome.IN_PROGRESS, retry_after=int(result[1]) / 1000)

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.complete`."""
        return await self._write(key, owner, response, ttl, tentative=False)

    async def complete_tentatively(
        self, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.complete_tentatively`."""
        return await self._write(key, owner, response, ttl, tentative=True)

    async def _write(
        self, key: str, owner: str, response: StoredResponse, ttl: float, *, tentative: bool
    ) -> bool:
        result = await self._call(
            self._complete,
            key,
            owner,
            _ms(ttl),
            response.status,
            _encode_headers(response.headers),
            response.body,
            1 if tentative else 0,
        )
        return int(result) == 1

    async def confirm(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.confirm`."""
        return int(await self._call(self._confirm, key, owner)) == 1

    async def release(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.IdempotencyStore.release`."""
        return int(await self._call(self._release, key, owner)) == 1

    async def withdraw(self, key: str, owner: str) -> bool:
        """See :meth:`prodkit.idempotency.WithdrawingIdempotencyStore.withdraw`."""
        return int(await self._call(self._withdraw, key, owner)) == 1

    def retry_release(self, key: str, owner: str, *, within: float) -> None:
        """See :meth:`prodkit.idempotency.RetryingIdempotencyStore.retry_release`."""
        self._releases.add(key, owner, within=within)

    def retry_withdraw(self, key: str, owner: str, *, within: float) -> None:
        """See :meth:`prodkit.idempotency.RetryingIdempotencyStore.retry_withdraw`."""
        self._withdrawals.add(key, owner, within=within)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """See :meth:`prodkit.idempotency.IdempotencyStore.get`."""
        result = await self._call(self._get, key)
        if not result:
            return None
        fingerprint, owner, status, headers, body, tentative = result
        response = None
        if status:
            response = StoredResponse(int(status), _decode_headers(headers), body or b"")
        return IdempotencyRecord(
            bytes(fingerprint), owner.decode() if owner else None, response, int(tentative) == 1
        )

    async def aclose(self) -> None:
        """Try pending releases and withdrawals once more, then close the client if this store
        made it (:meth:`from_url`)."""
        await self._releases.aclose()
        await self._withdrawals.aclose()
        if self._owns_client:
            await self.client.aclose()


def _ms_offset(seconds: float) -> int:
    return round(seconds * 1000)


__all__ = ["RedisIdempotencyStore"]
