"""The service settings prodkit's recommended stack reads from the environment.

Every variable is optional; unset means the safe embedded default. The names are the ones the
example service documents (``docs/example.md``), so a service built on prodkit is configured
the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prodkit._core import options as valid
from prodkit._core.addresses import ClientAddressResolver
from prodkit._core.drivers import parse_redis_url
from prodkit._core.exceptions import ConfigurationError
from prodkit.cors import OriginMatcher
from prodkit.health import HealthOptions
from prodkit.idempotency import IdempotencyOptions
from prodkit.ratelimit import parse_rate
from prodkit.timeouts import DEFAULT_BODY_TIMEOUT

IdempotencyStoreName = Literal["memory", "postgres", "redis"]

_DATABASE_SCHEMES = ("postgresql://", "postgres://")
#: ``LOG_LEVEL`` values, any case (``warn`` too, as :func:`~prodkit.configure_logging` takes it).
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Braces would make a Redis Cluster hash tag of the prefix, putting every key in one slot.
_KEY_PREFIX = re.compile(r"[^\s{}]*\Z")


def _default_of(options: type[Any], name: str) -> Any:
    """The default a layer's options dataclass gives ``name``: written there, once."""
    return next(field.default for field in dataclasses.fields(options) if field.name == name)


def _text(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, stripped; ``None`` when it is unset or blank."""
    return (env.get(name) or "").strip() or None


def _split(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in (env.get(name) or "").split(",") if part.strip())


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigurationError(
            f"{name}={raw!r} is not a number of seconds: write one such as 30 or 2.5"
        )
    return value


def _switch(env: Mapping[str, str], name: str) -> bool | None:
    raw = _text(env, name)
    if raw is None:
        return None
    if raw.lower() in ("on", "off"):
        return raw.lower() == "on"
    raise ConfigurationError(f"{name}={raw!r} is not a switch: write on (the default) or off")


def _whole(env: Mapping[str, str], name: str, what: str) -> int | None:
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{name}={raw!r} is not a whole number: write {what}, e.g. 100"
        ) from exc


@dataclass(frozen=True, slots=True)
class StackSettings:
    """Settings of the recommended stack; build them explicitly or with :meth:`from_env`.

    Attributes:
        database_url: PostgreSQL DSN (``DATABASE_URL``): idempotency records in PostgreSQL.
        redis_url: Redis URL (``REDIS_URL``): response cache and rate-limit counters in Redis.
        redis_key_prefix: put in front of every key the stack's stores write in Redis
            (``REDIS_KEY_PREFIX``, default ``"prodkit:"``; then ``cache:``, ``idem:`` or
            ``ratelimit:``), so services or test runs sharing one Redis keep apart.
        near_cache: serve the Redis response cache's reads from each process's memory,
            kept coherent by Redis (``NEAR_CACHE``: ``on`` or ``off``; default ``True``; see
            :class:`~prodkit.cache.NearCacheStore`). Only used with ``redis_url``.
        idempotency_store: ``"memory"``, ``"postgres"`` or ``"redis"`` (``IDEMPOTENCY_STORE``;
            default: ``"postgres"`` when ``database_url`` is set, else ``"memory"``), so after
            construction it always names the store.
        idempotency_lease_seconds: how long a request's claim on its ``Idempotency-Key``
            protects its handler (``IDEMPOTENCY_LEASE_SECONDS``, default ``60.0``): a retry gets
            409 until then, and runs the handler once it is over, if the first request's process
            died. Set it above your slowest handler.
        idempotency_ttl_seconds: how long a completed request's response is replayed for its
            key (``IDEMPOTENCY_TTL_SECONDS``, default ``86400.0``: a day).
        idempotency_cleanup_seconds: how often a PostgreSQL idempotency store deletes expired
            records (``IDEMPOTENCY_CLEANUP_SECONDS``, default ``60.0``; ``0`` turns the sweeps
            off).
        rate_limit: e.g. ``"100/minute"`` (``RATE_LIMIT``; default: the stack's generous
            :data:`~prodkit.stack.DEFAULT_RATE_LIMIT`).
        trusted_proxies: IPs/CIDRs whose forwarding headers are honoured (``TRUSTED_PROXIES``).
        cors_origins: allowed origins (``CORS_ORIGINS``); ``https://*.example.com`` allows
            subdomains only; empty disables CORS.
        max_concurrency: requests in flight per process before shedding (``MAX_CONCURRENCY``;
            default: the stack's :data:`~prodkit.stack.DEFAULT_MAX_CONCURRENCY`).
        health_key: unlocks the detailed health report (``HEALTH_KEY``; default ``None``: the
            report shows no detail).
        shutdown_drain_seconds: readiness 503 but still serving, after SIGTERM
            (``SHUTDOWN_DRAIN_SECONDS``, default ``2.0``).
        shutdown_timeout_seconds: hard deadline, counted from the signal, the drain included
            (``SHUTDOWN_TIMEOUT_SECONDS``, default ``30.0``).
        body_timeout_seconds: a request body that has not arrived this many seconds after its
            headers gets a 408 (default ``10.0``; no environment variable: it suits most
            services).
        log_level: ``LOG_LEVEL``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``,
            any case, kept upper-case (default ``"INFO"``).
        log_format: ``LOG_FORMAT``: ``"json"`` (default) or ``"console"``.

    Raises :class:`~prodkit.ConfigurationError` when a field is malformed (a proxy that is not
    a network, a ``health_key`` shorter than 16 characters) or the fields contradict each other
    (a PostgreSQL store without ``database_url``, say), whether built directly or from the
    environment: the layers built from valid settings accept them.
    """

    database_url: str | None = None
    redis_url: str | None = None
    redis_key_prefix: str = "prodkit:"
    near_cache: bool = True
    idempotency_store: IdempotencyStoreName | None = None
    idempotency_lease_seconds: float = _default_of(IdempotencyOptions, "lease")
    idempotency_ttl_seconds: float = _default_of(IdempotencyOptions, "ttl")
    idempotency_cleanup_seconds: float = 60.0
    rate_limit: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_concurrency: int | None = None
    health_key: str | None = None
    shutdown_drain_seconds: float = 2.0
    shutdown_timeout_seconds: float = 30.0
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    def __post_init__(self) -> None:
        # Each message names the variable, the field, what is wrong and what to write instead.
        self._check_urls()
        if not isinstance(self.redis_key_prefix, str) or not _KEY_PREFIX.match(
            self.redis_key_prefix
        ):
            raise ConfigurationError(
                f"REDIS_KEY_PREFIX={self.redis_key_prefix!r} (redis_key_prefix) may not hold "
                "spaces or braces: write letters, digits and ':', e.g. 'billing:'"
            )
        self._check_idempotency()
        if self.max_concurrency is not None and (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or self.max_concurrency < 1
        ):
            raise ConfigurationError(
                f"MAX_CONCURRENCY={self.max_concurrency!r} (max_concurrency) must be at least 1: "
                "write the requests in flight per process before shedding, e.g. 100"
            )
        if self.rate_limit is not None:
            try:
                parse_rate(self.rate_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"RATE_LIMIT (rate_limit): {exc}") from exc
        self._check_addresses()
        self._check_health_key()
        self._check_shutdown()
        valid.positive_seconds("body_timeout_seconds", self.body_timeout_seconds, example=10)
        self._check_logging()

    def _check_idempotency(self) -> None:
        store = self.idempotency_store
        if store is None:
            # Resolved here rather than in from_env, so settings built in code choose the same
            # store as the same values read from the environment.
            store = "postgres" if self.database_url else "memory"
            object.__setattr__(self, "idempotency_store", store)
        if store not in ("memory", "postgres", "redis"):
            raise ConfigurationError(
                f"IDEMPOTENCY_STORE={store!r} (idempotency_store): use memory, postgres or redis"
            )
        if store == "postgres" and not self.database_url:
            raise ConfigurationError(
                "IDEMPOTENCY_STORE=postgres needs DATABASE_URL (idempotency_store, database_url)"
            )
        if store == "redis" and not self.redis_url:
            raise ConfigurationError(
                "IDEMPOTENCY_STORE=redis needs REDIS_URL (idempotency_store, redis_url)"
            )
        if not self.idempotency_lease_seconds > 0:
            raise ConfigurationError(
                f"IDEMPOTENCY_LEASE_SECONDS={self.idempotency_lease_seconds!r} "
                "(idempotency_lease_seconds) must be more than 0 seconds: set it above your "
                "slowest handler, e.g. 60"
            )
        ttl, lease = self.idempotency_ttl_seconds, self.idempotency_lease_seconds
        if not ttl >= lease:
            raise ConfigurationError(
                f"IDEMPOTENCY_TTL_SECONDS={ttl!r} (idempotency_ttl_seconds) must be at least "
                f"IDEMPOTENCY_LEASE_SECONDS ({lease!r}): a record must outlive its claim, "
                "e.g. 86400"
            )
        if not self.idempotency_cleanup_seconds >= 0:
            raise ConfigurationError(
                f"IDEMPOTENCY_CLEANUP_SECONDS={self.idempotency_cleanup_seconds!r} "
                "(idempotency_cleanup_seconds) must not be negative: write the seconds between "
                "sweeps of expired records, e.g. 60, or 0 to turn the sweeps off"
            )

    def _check_addresses(self) -> None:
        # The validators of the layers that take these, so the rules are written once.
        try:
            ClientAddressResolver(self.trusted_proxies)
        except ConfigurationError as exc:
            problem = str(exc).removeprefix("trusted_proxies: ")
            raise ConfigurationError(f"TRUSTED_PROXIES (trusted_proxies): {problem}") from exc
        try:
            OriginMatcher(self.cors_origins)
        except ConfigurationError as exc:
            problem = str(exc).removeprefix("allow_origins: ")
            raise ConfigurationError(f"CORS_ORIGINS (cors_origins): {problem}") from exc

    def _check_health_key(self) -> None:
        # The health layer's rule, written once; its messages never repeat the key (a secret).
        if self.health_key is None:
            return
        try:
            HealthOptions(key=self.health_key)
        except ConfigurationError as exc:
            problem = str(exc).removeprefix("key: ")
            raise ConfigurationError(
                f"HEALTH_KEY (health_key): {problem}, or leave it unset to hide the detail"
            ) from exc

    def _check_shutdown(self) -> None:
        drain, timeout = self.shutdown_drain_seconds, self.shutdown_timeout_seconds
        if not drain >= 0:
            raise ConfigurationError(
                f"SHUTDOWN_DRAIN_SECONDS={drain!r} (shutdown_drain_seconds) must not be "
                "negative: write the seconds to keep serving after SIGTERM, e.g. 5, or 0"
            )
        if not (timeout > 0 and timeout >= drain):
            raise ConfigurationError(
                f"SHUTDOWN_TIMEOUT_SECONDS={timeout!r} (shutdown_timeout_seconds) must be more "
                f"than 0 and at least SHUTDOWN_DRAIN_SECONDS ({drain!r}): it counts from the "
                "signal and includes the drain, e.g. 30"
            )

    def _check_logging(self) -> None:
        level = self.log_level
        if not isinstance(level, str) or level.strip().lower() not in (*_LOG_LEVELS, "warn"):
            raise ConfigurationError(
                f"LOG_LEVEL={level!r} (log_level) is not a level: use one of "
                + ", ".join(_LOG_LEVELS)
            )
        object.__setattr__(self, "log_level", level.strip().upper())
        if self.log_format not in ("json", "console"):
            raise ConfigurationError(
                f"LOG_FORMAT={self.log_format!r} (log_format): use json or console"
            )

    def _check_urls(self) -> None:
        # Checked here, not when the first connection is made: a malformed URL stops the start
        # with the variable's name. The URL itself is never repeated, it may hold a password.
        if self.database_url is not None and not self.database_url.lower().startswith(
            _DATABASE_SCHEMES
        ):
            raise ConfigurationError(
                "DATABASE_URL (database_url) must be a PostgreSQL URL: "
                "postgresql://user:password@host:5432/dbname"
            )
        if self.redis_url is not None:
            # The same reading the client is built from: a URL accepted here connects.
            parse_redis_url(self.redis_url, setting="REDIS_URL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """Read the settings from ``env`` (default ``os.environ``).

        Every variable is checked here, not when the stack is built: a wrong one raises
        :class:`~prodkit.ConfigurationError` naming the variable, what is wrong with its value
        and what to write instead (``LOG_LEVEL='verbose' (log_level) is not a level: use one
        of debug, info, warning, error, critical``). Secrets (the URLs, ``HEALTH_KEY``) are
        never repeated.
        """
        env = os.environ if env is None else env
        fields: dict[str, Any] = {
            "database_url": _text(env, "DATABASE_URL"),
            "redis_url": _text(env, "REDIS_URL"),
            "redis_key_prefix": _text(env, "REDIS_KEY_PREFIX"),
            "near_cache": _switch(env, "NEAR_CACHE"),
            # Unset, __post_init__ chooses the store from DATABASE_URL.
            "idempotency_store": (_text(env, "IDEMPOTENCY_STORE") or "").lower() or None,
            "idempotency_lease_seconds": _seconds(env, "IDEMPOTENCY_LEASE_SECONDS"),
            "idempotency_ttl_seconds": _seconds(env, "IDEMPOTENCY_TTL_SECONDS"),
            "idempotency_cleanup_seconds": _seconds(env, "IDEMPOTENCY_CLEANUP_SECONDS"),
            "rate_limit": _text(env, "RATE_LIMIT"),
            "trusted_proxies": _split(env, "TRUSTED_PROXIES"),
            "cors_origins": _split(env, "CORS_ORIGINS"),
            "max_concurrency": _whole(
                env, "MAX_CONCURRENCY", "the requests in flight per process before shedding"
            ),
            "health_key": env.get("HEALTH_KEY") or None,  # a secret: taken as written
            "shutdown_drain_seconds": _seconds(env, "SHUTDOWN_DRAIN_SECONDS"),
            "shutdown_timeout_seconds": _seconds(env, "SHUTDOWN_TIMEOUT_SECONDS"),
            "log_level": _text(env, "LOG_LEVEL"),
            "log_format": (_text(env, "LOG_FORMAT") or "").lower() or None,
        }
        # An unset variable leaves its field at the default written on the field: once.
        # Every value is checked by __post_init__.
        return cls(**{name: value for name, value in fields.items() if value is not None})


__all__ = ["IdempotencyStoreName", "StackSettings"]
