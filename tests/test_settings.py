"""StackSettings.from_env: the design's environment variables, defaults and errors."""

from __future__ import annotations

import pytest

from prodkit import ConfigurationError, StackSettings


def test_empty_environment_is_the_in_memory_default() -> None:
    settings = StackSettings.from_env({})
    assert settings == StackSettings()
    assert settings.idempotency_store == "memory"


def test_every_variable() -> None:
    settings = StackSettings.from_env(
        {
            "DATABASE_URL": "postgresql://db/app",
            "REDIS_URL": "redis://cache/0",
            "RATE_LIMIT": "100/minute",
            "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
            "CORS_ORIGINS": "https://app.example.com,https://*.example.com",
            "MAX_CONCURRENCY": "64",
            "HEALTH_KEY": "k3y",
            "SHUTDOWN_DRAIN_SECONDS": "5",
            "SHUTDOWN_TIMEOUT_SECONDS": "25.5",
            "IDEMPOTENCY_LEASE_SECONDS": "2.5",
            "IDEMPOTENCY_TTL_SECONDS": "3600",
            "IDEMPOTENCY_CLEANUP_SECONDS": "0",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "console",
        }
    )
    assert settings.idempotency_store == "postgres"  # DATABASE_URL set, store not named
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert settings.cors_origins == ("https://app.example.com", "https://*.example.com")
    assert (settings.max_concurrency, settings.health_key) == (64, "k3y")
    assert (settings.shutdown_drain_seconds, settings.shutdown_timeout_seconds) == (5.0, 25.5)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")
    assert settings.idempotency_lease_seconds == 2.5
    assert (settings.idempotency_ttl_seconds, settings.idempotency_cleanup_seconds) == (3600, 0)
    assert StackSettings().idempotency_ttl_seconds == 24 * 3600
    assert StackSettings().idempotency_cleanup_seconds == 60
    assert settings.redis_key_prefix == "prodkit:"  # unset: the stores' own defaults
    assert StackSettings.from_env({"REDIS_KEY_PREFIX": "billing:"}).redis_key_prefix == "billing:"
    assert (
        StackSettings.from_env(
            {"REDIS_URL": "redis://x", "IDEMPOTENCY_STORE": "Redis"}
        ).idempotency_store
        == "redis"
    )


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"IDEMPOTENCY_STORE": "mongo"}, "IDEMPOTENCY_STORE"),
        ({"IDEMPOTENCY_STORE": "postgres"}, "DATABASE_URL"),
        ({"IDEMPOTENCY_STORE": "redis"}, "REDIS_URL"),
        ({"MAX_CONCURRENCY": "lots"}, "MAX_CONCURRENCY"),
        ({"MAX_CONCURRENCY": "0"}, "MAX_CONCURRENCY"),
        ({"SHUTDOWN_DRAIN_SECONDS": "soon"}, "SHUTDOWN_DRAIN_SECONDS"),
        ({"SHUTDOWN_TIMEOUT_SECONDS": "-1"}, "SHUTDOWN_TIMEOUT_SECONDS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"IDEMPOTENCY_LEASE_SECONDS": "0"}, "IDEMPOTENCY_LEASE_SECONDS"),
        ({"IDEMPOTENCY_LEASE_SECONDS": "a minute"}, "IDEMPOTENCY_LEASE_SECONDS"),
        ({"IDEMPOTENCY_TTL_SECONDS": "30"}, "IDEMPOTENCY_TTL_SECONDS"),  # below the lease
        ({"IDEMPOTENCY_CLEANUP_SECONDS": "-1"}, "IDEMPOTENCY_CLEANUP_SECONDS"),
        # Issue #16: a malformed URL or rate stops the start naming its variable.
        ({"DATABASE_URL": "garbage"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://db/app"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"RATE_LIMIT": "lots"}, "RATE_LIMIT"),
        ({"RATE_LIMIT": "0/minute"}, "RATE_LIMIT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions):
        StackSettings.from_env(env)


@pytest.mark.parametrize(
    ("fields", "store"),
    [
        ({}, "memory"),
        ({"database_url": "postgresql://db/app"}, "postgres"),
        ({"database_url": "postgresql://db/app", "idempotency_store": "memory"}, "memory"),
        ({"redis_url": "redis://cache/0", "idempotency_store": "redis"}, "redis"),
    ],
)
def test_settings_built_in_code_choose_the_store_like_the_environment(
    fields: dict[str, str], store: str
) -> None:
    settings = StackSettings(**fields)  # type: ignore[arg-type]  # the table's values are valid
    assert settings.idempotency_store == store
    environ = {"DATABASE_URL": "database_url", "REDIS_URL": "redis_url"}
    env = {name: fields[field] for name, field in environ.items() if field in fields}
    if "idempotency_store" in fields:
        env["IDEMPOTENCY_STORE"] = fields["idempotency_store"]
    assert StackSettings.from_env(env) == settings


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"idempotency_store": "mongo"}, "idempotency_store"),
        ({"idempotency_store": "postgres"}, "database_url"),
        ({"idempotency_store": "redis"}, "redis_url"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"log_format": "xml"}, "log_format"),
        ({"database_url": "db.example.com/app"}, "database_url"),
        ({"redis_url": "cache:6379"}, "redis_url"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"body_timeout_seconds": 0}, "body_timeout_seconds"),
    ],
)
def test_contradictory_fields_name_the_field(fields: dict[str, object], mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions):
        StackSettings(**fields)  # type: ignore[arg-type]  # wrong on purpose


def test_a_malformed_database_url_is_not_repeated_in_the_error() -> None:
    # The URL may carry a password: the message names the variable, not its value.
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as caught:
        StackSettings.from_env({"DATABASE_URL": "pg://admin:s3cret@db/app"})
    assert "s3cret" not in str(caught.value)
