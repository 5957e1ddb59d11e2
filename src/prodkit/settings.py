"""The service settings prodkit's recommended stack reads from the environment.

Every variable is optional; unset means the safe embedded default. The names are the ones the
example service documents (``docs/example.md``), so a service built on prodkit is configured
the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from prodkit._core.exceptions import ConfigurationError
from prodkit.ratelimit import parse_rate

IdempotencyStoreName = Literal["memory", "postgres", "redis"]

_DATABASE_SCHEMES = ("postgresql://", "postgres://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds") from exc
    if value < 0:
        raise ConfigurationError(f"{name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True, slots=True)
class StackSettings:
    """Settings of the recommended stack; build them explicitly or with :meth:`from_env`.

    Attributes:
        database_url: PostgreSQL DSN (``DATABASE_URL``): idempotency records in PostgreSQL.
        redis_url: Redis URL (``REDIS_URL``): response cache and rate-limit counters in Redis.
        redis_key_prefix: put in front of every key the stack's stores write in Redis
            (``REDIS_KEY_PREFIX``, default ``prodkit:``; then ``cache:``, ``idem:`` or
            ``ratelimit:``), so services or test runs sharing one Redis keep apart.
        idempotency_store: ``memory``, ``postgres`` or ``redis`` (``IDEMPOTENCY_STORE``); ``None``
            (the default) chooses ``postgres`` when ``database_url`` is set, else ``memory``, so
            after construction it always names the store.
        idempotency_lease_seconds: how long a request's claim on its ``Idempotency-Key``
            protects its handler (``IDEMPOTENCY_LEASE_SECONDS``, default 60): a retry gets 409
            until then, and runs the handler once it is over, if the first request's process
            died. Set it above your slowest handler.
        rate_limit: e.g. ``"100/minute"`` (``RATE_LIMIT``); ``None`` means a generous default.
        trusted_proxies: IPs/CIDRs whose forwarding headers are honoured (``TRUSTED_PROXIES``).
        cors_origins: allowed origins (``CORS_ORIGINS``); ``https://*.example.com`` allows
            subdomains only; empty disables CORS.
        max_concurrency: requests in flight per process before shedding (``MAX_CONCURRENCY``).
        health_key: unlocks the detailed health report (``HEALTH_KEY``).
        shutdown_drain_seconds: readiness 503 but still serving, after SIGTERM.
        shutdown_timeout_seconds: hard deadline, counted from the signal (the drain included).
        body_timeout_seconds: a request body that has not arrived this many seconds after its
            headers gets a 408 (no environment variable: the default suits most services).
        log_level, log_format: ``LOG_LEVEL``, ``LOG_FORMAT`` (``json`` or ``console``).

    Raises :class:`~prodkit.ConfigurationError` when the fields contradict each other (a
    PostgreSQL store without ``database_url``, say), whether built directly or from the
    environment.
    """

    database_url: str | None = None
    redis_url: str | None = None
    redis_key_prefix: str = "prodkit:"
    idempotency_store: IdempotencyStoreName | None = None
    idempotency_lease_seconds: float = 60.0
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
        self._check_urls()
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
                "IDEMPOTENCY_LEASE_SECONDS (idempotency_lease_seconds) must be positive"
            )
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigurationError("MAX_CONCURRENCY (max_concurrency) must be at least 1")
        if self.rate_limit is not None:
            try:
                parse_rate(self.rate_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"RATE_LIMIT (rate_limit): {exc}") from exc
        if not self.body_timeout_seconds > 0:
            raise ConfigurationError("body_timeout_seconds must be more than 0 seconds")
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
        if self.redis_url is not None and not self.redis_url.lower().startswith(_REDIS_SCHEMES):
            raise ConfigurationError(
                "REDIS_URL (redis_url) must start with one of " + ", ".join(_REDIS_SCHEMES)
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """Read the settings from ``env`` (default ``os.environ``).

        Raises :class:`~prodkit.ConfigurationError` naming the variable that is wrong.
        """
        env = os.environ if env is None else env
        database_url = (env.get("DATABASE_URL") or "").strip() or None
        # Unset: None, which __post_init__ resolves from DATABASE_URL (and checks).
        store = (env.get("IDEMPOTENCY_STORE") or "").strip().lower() or None
        redis_url = (env.get("REDIS_URL") or "").strip() or None
        redis_key_prefix = (env.get("REDIS_KEY_PREFIX") or "").strip() or "prodkit:"
        raw_concurrency = (env.get("MAX_CONCURRENCY") or "").strip()
        max_concurrency: int | None = None
        if raw_concurrency:
            try:
                max_concurrency = int(raw_concurrency)
            except ValueError as exc:
                raise ConfigurationError(
                    f"MAX_CONCURRENCY={raw_concurrency!r} is not a whole number"
                ) from exc
        log_format = (env.get("LOG_FORMAT") or "json").strip().lower()
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            redis_key_prefix=redis_key_prefix,
            idempotency_store=store,  # type: ignore[arg-type]  # checked by __post_init__
            idempotency_lease_seconds=_number(env, "IDEMPOTENCY_LEASE_SECONDS", 60.0),
            rate_limit=(env.get("RATE_LIMIT") or "").strip() or None,
            trusted_proxies=_split(env.get("TRUSTED_PROXIES")),
            cors_origins=_split(env.get("CORS_ORIGINS")),
            max_concurrency=max_concurrency,
            health_key=(env.get("HEALTH_KEY") or "") or None,
            shutdown_drain_seconds=_number(env, "SHUTDOWN_DRAIN_SECONDS", 2.0),
            shutdown_timeout_seconds=_number(env, "SHUTDOWN_TIMEOUT_SECONDS", 30.0),
            log_level=(env.get("LOG_LEVEL") or "INFO").strip().upper(),
            log_format=log_format,  # type: ignore[arg-type]  # checked by __post_init__
        )


__all__ = ["IdempotencyStoreName", "StackSettings"]
