"""Optional drivers, imported only when a backend that needs them is built, and the Redis seam.

:func:`redis_client` is the one place a Redis client is made from a URL: one server, a Redis
Cluster or a Sentinel-managed primary, all with the same short timeouts and no retries of the
driver's own (each store's circuit breaker decides when to try again).
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from prodkit._core.exceptions import ConfigurationError, MissingDependencyError


def require(module: str, extra: str) -> Any:
    """Import an optional driver lazily, or raise :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra) from exc


#: The URL forms :func:`redis_client` accepts, as error messages list them.
REDIS_URL_FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://… (TLS), unix:///path/to/socket[?db=N], "
    "redis+cluster://[user:password@]host:port[,host:port…] (Redis Cluster seed nodes; "
    "rediss+cluster:// for TLS), redis+sentinel://[user:password@]host:port[,host:port…]"
    "/service_name[?db=N&sentinel_password=…] (Sentinel; rediss+sentinel:// for TLS)"
)

_SCHEMES = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_NODE = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+)):(?P<port>[0-9]{1,5})\Z"
)
_SERVICE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names (see :func:`parse_redis_url`).

    Attributes:
        kind: ``server`` (one server: the URL is given to redis-py as it is), ``cluster`` (seed
            nodes of a Redis Cluster) or ``sentinel`` (the Sentinels watching ``service``).
        url: the URL as given.
        nodes: ``(host, port)`` of the seed nodes or the Sentinels (empty for ``server``).
        service: the Sentinel service (primary) name.
        db: the database number of a Sentinel-managed primary (default ``0``; always 0 on a
            Cluster).
        username, password: credentials for the data nodes.
        sentinel_password: credentials for the Sentinels themselves.
        tls: whether connections use TLS.
    """

    kind: Literal["server", "cluster", "sentinel"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def _shown(url: str) -> str:
    # Error messages name the URL without its credentials.
    return re.sub(r"//[^@/]*@", "//***@", url)


def parse_redis_url(url: str, *, setting: str = "REDIS_URL") -> RedisTarget:
    """Read a Redis URL in one of :data:`REDIS_URL_FORMS`.

    Raises :class:`ConfigurationError` naming ``setting``, what is wrong and the accepted forms
    (never the password) for a URL that is not one of them.
    """

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"{setting}={_shown(url)!r} {problem}; accepted forms: {REDIS_URL_FORMS}"
        )

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise bad("has no Redis scheme")
    kind, tls = _SCHEMES[scheme.lower()]
    if kind == "server":
        if scheme.lower() != "unix" and not rest.split("/", 1)[0].rpartition("@")[2]:
            raise bad("names no host")
        return RedisTarget("server", url, tls=tls)
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        hosts = authority
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    nodes = []
    for node in hosts.split(","):
        found = _NODE.match(node.strip())
        if found is None or not 0 < int(found["port"]) < 65536:
            raise bad(f"has {node.strip() or 'an empty node'!r} where host:port belongs")
        nodes.append((found["v6"] or found["host"], int(found["port"])))
    options = {name: values[-1] for name, values in parse_qs(query).items()}
    unknown = set(options) - {"db", "sentinel_password"}
    if unknown:
        raise bad(f"has unknown options {sorted(unknown)}")
    db = options.get("db", "0")
    if not db.isdigit():
        raise bad("has a db that is not a number")
    if kind == "cluster":
        if path.strip("/"):
            raise bad("has a path, but a Redis Cluster has no databases or service names")
        if int(db) != 0 or "sentinel_password" in options:
            raise bad("has options a Redis Cluster does not take")
        return RedisTarget(
            "cluster", url, tuple(nodes), username=username, password=password, tls=tls
        )
    service = unquote(path.strip("/"))
    if not _SERVICE.match(service):
        raise bad("names no service (the primary's name the Sentinels watch, after the nodes)")
    return RedisTarget(
        "sentinel",
        url,
        tuple(nodes),
        service=service,
        db=int(db),
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password"),
        tls=tls,
    )


def redis_client(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 0.5,
    connect_timeout: float | None = None,
    setting: str = "REDIS_URL",
) -> Any:
    """A redis-py asyncio client for ``url`` with short timeouts and no retries of its own.

    The one place prodkit makes a Redis client: the recommended stack makes one and shares it
    between the cache, the rate limiter, the Redis idempotency store and the readiness check;
    make one yourself to share it between stores you wire by hand. Nothing connects until the
    first command.

    Example::

        from prodkit.asgi import redis_client
        from prodkit.cache import RedisCacheStore
        from prodkit.ratelimit import RedisRateLimitStore

        client = redis_client("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
        cache_store = RedisCacheStore(client, key_prefix="app:cache:")
        limits = RedisRateLimitStore(client, key_prefix="app:ratelimit:")
        assert cache_store.client is limits.client is client
        assert type(client).__name__ == "RedisCluster"
        # At shutdown, after the stores: await client.aclose()

    Arguments:
        url: one of :data:`REDIS_URL_FORMS`: ``redis://``, ``rediss://`` or ``unix://`` (one
            server), ``redis+cluster://`` (a ``redis.asyncio.RedisCluster`` that learns the
            slot map from the seed nodes and follows ``MOVED``), ``redis+sentinel://…/service``
            (a ``redis.asyncio.Redis`` that asks the Sentinels for the primary, and again after
            a failover).
        max_connections: connections at most in the pool (per node on a Cluster), default
            ``64``. On one server and behind Sentinel, a command beyond it waits up to
            ``socket_timeout`` for a pooled connection; on a Cluster it fails at once
            (redis-py's Cluster client has no waiting pool): size it to the commands one
            process may have in flight on one node.
        socket_timeout: seconds a command may take (default ``0.5``).
        connect_timeout: seconds to connect (default: ``socket_timeout``).
        setting: the setting named in the error for a malformed URL (default
            ``"REDIS_URL"``).

    A failed call fails fast: each store's circuit breaker decides when to try again. A
    malformed URL raises :class:`~prodkit.ConfigurationError` naming ``setting`` and the
    accepted forms.
    """
    target = parse_redis_url(url, setting=setting)
    redis_asyncio = require("redis.asyncio", "redis")
    retry = require("redis.asyncio.retry", "redis")
    backoff = require("redis.backoff", "redis")
    connect = socket_timeout if connect_timeout is None else connect_timeout
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect,
        "retry": retry.Retry(backoff.NoBackoff(), 0),
    }
    if target.kind == "server":
        try:
            pool = redis_asyncio.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=socket_timeout, **timeouts
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"{setting}={_shown(url)!r} is not a Redis URL redis-py can read ({exc}); "
                f"accepted forms: {REDIS_URL_FORMS}"
            ) from exc
        return redis_asyncio.Redis.from_pool(pool)
    credentials = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        cluster = require("redis.asyncio.cluster", "redis")
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(host, port) for host, port in target.nodes],
            max_connections=max_connections,
            ssl=target.tls,
            **credentials,
            **timeouts,
        )
    sentinel = require("redis.asyncio.sentinel", "redis")
    watchers = sentinel.Sentinel(
        list(target.nodes),
        sentinel_kwargs={
            "password": target.sentinel_password,
            "ssl": target.tls,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect,
        },
        ssl=target.tls,
        **credentials,
        **timeouts,
    )
    client_class, pool_class = _sentinel_managed()
    return watchers.master_for(
        target.service,
        redis_class=client_class,
        connection_pool_class=pool_class,
        db=target.db,
        max_connections=max_connections,
        timeout=socket_timeout,
    )


@functools.cache
def _sentinel_managed() -> tuple[Any, Any]:
    """The client and pool classes of a Sentinel-managed primary (made once, redis-py being an
    optional driver)."""
    redis_class: Any = require("redis.asyncio", "redis").Redis
    connection: Any = require("redis.asyncio.connection", "redis")
    sentinel: Any = require("redis.asyncio.sentinel", "redis")

    class SentinelManagedRedis(redis_class):  # type: ignore[misc]  # an optional driver, typed Any
        """A client of the primary the Sentinels name, closing the clients that ask them too.

        (redis-py's ``master_for`` client closes only its connections to the primary: those to
        the Sentinels stayed open until the garbage collector found them.)
        """

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            try:
                await super().aclose(close_connection_pool)
            finally:
                for watcher in self.connection_pool.sentinel_manager.sentinels:
                    await watcher.aclose()

    # The first finds the primary through the Sentinels, the second waits up to `timeout` for
    # a free connection.
    finds: Any = sentinel.SentinelConnectionPool
    waits: Any = connection.BlockingConnectionPool

    class BlockingSentinelConnectionPool(finds, waits):  # type: ignore[misc]  # optional, Any
        """Connections to the primary the Sentinels name, at most ``max_connections``: beyond
        them a command waits for one, as on one server (redis-py's own pool fails at once)."""

    return SentinelManagedRedis, BlockingSentinelConnectionPool


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py Cluster client (``redis.asyncio.RedisCluster``), whose
    multi-key commands must stay within one slot."""
    cluster = require("redis.asyncio.cluster", "redis")
    return isinstance(client, cluster.RedisCluster)


def store_client(client: Any, store: str, *, bytes_replies: bool = True) -> Any:
    """``client`` if the Redis store named ``store`` can use it: a client, not a URL, and with
    ``bytes_replies`` one whose replies are bytes; else :class:`ConfigurationError` saying
    what to pass."""
    if isinstance(client, str):
        raise ConfigurationError(
            f"{store} takes a Redis client, not a URL: {store}.from_url(url) makes one, or "
            "make one with prodkit.asgi.redis_client(url) and share it between stores"
        )
    if bytes_replies and client.get_connection_kwargs().get("decode_responses"):
        raise ConfigurationError(
            f"{store} needs a Redis client made with decode_responses=False (values are bytes)"
        )
    return client


__all__ = [
    "REDIS_URL_FORMS",
    "RedisTarget",
    "is_cluster",
    "parse_redis_url",
    "redis_client",
    "require",
    "store_client",
]
