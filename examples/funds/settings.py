"""The example's configuration, read from the environment (all optional)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment; see ``docs/example.md``."""

    database_url: str | None = None
    redis_url: str | None = None
    idempotency_store: str = "memory"
    rate_limit: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_concurrency: int | None = None
    health_key: str | None = None
    shutdown_drain_seconds: float = 0.0
    shutdown_timeout_seconds: float = 30.0
    log_level: str = "INFO"
    log_format: str = "json"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); exit with a message on nonsense."""
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL") or None
        store = env.get("IDEMPOTENCY_STORE") or ("postgres" if database_url else "memory")
        if store not in ("memory", "postgres", "redis"):
            raise SystemExit(f"IDEMPOTENCY_STORE={store!r}: use memory, postgres or redis")
        concurrency = env.get("MAX_CONCURRENCY")
        log_format = env.get("LOG_FORMAT", "json")
        if log_format not in ("json", "console"):
            raise SystemExit(f"LOG_FORMAT={log_format!r}: use json or console")
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or None,
            idempotency_store=store,
            rate_limit=env.get("RATE_LIMIT") or None,
            trusted_proxies=_split(env.get("TRUSTED_PROXIES")),
            cors_origins=_split(env.get("CORS_ORIGINS")),
            max_concurrency=int(concurrency) if concurrency else None,
            health_key=env.get("HEALTH_KEY") or None,
            shutdown_drain_seconds=_float(env, "SHUTDOWN_DRAIN_SECONDS", 0.0),
            shutdown_timeout_seconds=_float(env, "SHUTDOWN_TIMEOUT_SECONDS", 30.0),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            log_format=log_format,
        )
