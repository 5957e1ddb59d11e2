"""The service settings prodkit's recommended stack reads from the environment.

Every variable is optional; unset means the safe embedded default. The names are the ones the
example service documents (``docs/example.md``), so a service built on prodkit is configured
the same way.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from prodkit._core.addresses import ClientAddressResolver
from prodkit._core.drivers import parse_redis_url
from prodkit._core.exceptions import ConfigurationError
from prodkit.cors import OriginMatcher
from prodkit.ratelimit import parse_rate

IdempotencyStoreName = Literal["memory", "postgres", "redis"]

_DATABASE_SCHEMES = ("postgresql://", "postgres://")
#: ``LOG_LEVEL`` values, any case (``warn`` too, as :func:`~prodkit.configure_logging` takes it).
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# HealthMiddleware refuses a shorter key; tests/test_settings.py checks the two agree.
_MIN_HEALTH_KEY = 16
# Braces would make a Redis Cluster hash tag of the prefix, putting every key in one slot.
_KEY_PREFIX = re.compile(r"[^\s{}]*\Z")
_MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigurationError(
            f"{name}={raw!r} is not a number of seconds: write one such as 30 or 2.5"
        )
    return value


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
    idempotency_lease_seconds: float = 60.0
    idempotency_ttl_seconds: float = 24 * 3600.0
    idempotency_cleanup_seconds: float = 60.0
    rate_limit: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_concurrency: int | None = None
    health_key: str | None = None
    shutdown_drain_seconds: float = 2.0
    shutdown_timeout_seconds: float = 30.0
    body_timeout_seconds: float = 10.0
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
        if not self.body_timeout_seconds > 0:
            raise ConfigurationError("body_timeout_seconds must be more than 0 seconds")
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
        # The key is a secret: messages say what is wrong with it, never what it is.
        key = self.health_key
        if key is None:
            return
        if len(key) < _MIN_HEALTH_KEY:
            raise ConfigurationError(
                f"HEALTH_KEY (health_key) is {len(key)} characters long: use at least "
                f"{_MIN_HEALTH_KEY}, a random one such as {_MAKE_A_KEY} prints, or leave it "
                "unset to hide the detailed report"
            )
        if key != key.strip() or not key.isprintable():
            raise ConfigurationError(
                "HEALTH_KEY (health_key) has spaces at an end or control characters, which no "
                "X-Health-Key header can carry: write printable characters only, such as "
                f"{_MAKE_A_KEY} prints"
            )

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
        database_url = (env.get("DATABASE_URL") or "").strip() or None
        # Unset: None, which __post_init__ resolves from DATABASE_URL (and checks).
        store = (env.get("IDEMPOTENCY_STORE") or "").strip().lower() or None
        redis_url = (env.get("REDIS_URL") or "").strip() or None
        redis_key_prefix = (env.get("REDIS_KEY_PREFIX") or "").strip() or "prodkit:"
        near_cache = (env.get("NEAR_CACHE") or "on").strip().lower()
        if near_cache not in ("on", "off"):
            raise ConfigurationError(
                f"NEAR_CACHE={near_cache!r} (near_cache): write on (the default) or off"
            )
        raw_concurrency = (env.get("MAX_CONCURRENCY") or "").strip()
        max_concurrency: int | None = None
        if raw_concurrency:
            try:
                max_concurrency = int(raw_concurrency)
            except ValueError as exc:
                raise ConfigurationError(
                    f"MAX_CONCURRENCY={raw_concurrency!r} is not a whole number: write the "
                    "requests in flight per process before shedding, e.g. 100"
                ) from exc
        log_format = (env.get("LOG_FORMAT") or "json").strip().lower()
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            redis_key_prefix=redis_key_prefix,
            near_cache=near_cache == "on",
            idempotency_store=store,  # type: ignore[arg-type]  # checked by __post_init__
            idempotency_lease_seconds=_number(env, "IDEMPOTENCY_LEASE_SECONDS", 60.0),
            idempotency_ttl_seconds=_number(env, "IDEMPOTENCY_TTL_SECONDS", 24 * 3600.0),
            idempotency_cleanup_seconds=_number(env, "IDEMPOTENCY_CLEANUP_SECONDS", 60.0),
            rate_limit=(env.get("RATE_LIMIT") or "").strip() or None,
            trusted_proxies=_split(env.get("TRUSTED_PROXIES")),
            cors_origins=_split(env.get("CORS_ORIGINS")),
            max_concurrency=max_concurrency,
            health_key=(env.get("HEALTH_KEY") or "") or None,
            shutdown_drain_seconds=_number(env, "SHUTDOWN_DRAIN_SECONDS", 2.0),
            shutdown_timeout_seconds=_number(env, "SHUTDOWN_TIMEOUT_SECONDS", 30.0),
            log_level=(env.get("LOG_LEVEL") or "").strip() or "INFO",
            log_format=log_format,  # type: ignore[arg-type]  # checked by __post_init__
        )


__all__ = ["IdempotencyStoreName", "StackSettings"]
