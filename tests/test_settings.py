"""StackSettings.from_env: the design's environment variables, defaults and errors."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, HealthMiddleware, StackSettings
from tests.apps import build_app


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
            "HEALTH_KEY": "k3y-k3y-k3y-k3y-k3y",
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
    assert (settings.max_concurrency, settings.health_key) == (64, "k3y-k3y-k3y-k3y-k3y")
    assert (settings.shutdown_drain_seconds, settings.shutdown_timeout_seconds) == (5.0, 25.5)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")
    assert settings.idempotency_lease_seconds == 2.5
    assert (settings.idempotency_ttl_seconds, settings.idempotency_cleanup_seconds) == (3600, 0)
    assert StackSettings().idempotency_ttl_seconds == 24 * 3600
    assert StackSettings().idempotency_cleanup_seconds == 60
    assert settings.redis_key_prefix == "prodkit:"  # unset: the stores' own defaults
    assert StackSettings.from_env({"REDIS_KEY_PREFIX": "billing:"}).redis_key_prefix == "billing:"
    assert settings.near_cache  # on unless turned off
    assert not StackSettings.from_env({"NEAR_CACHE": " OFF "}).near_cache
    assert (
        StackSettings.from_env(
            {"REDIS_URL": "redis://x", "IDEMPOTENCY_STORE": "Redis"}
        ).idempotency_store
        == "redis"
    )


#: A wrong value of every variable from_env reads: the message starts with the variable and
#: ends with what to write instead.
BAD_VALUES = [
    ("DATABASE_URL", "garbage", "postgresql://user:password@host:5432/dbname"),
    ("DATABASE_URL", "mysql://db/app", "postgresql://user:password@host:5432/dbname"),
    ("REDIS_URL", "localhost:6379", "redis+cluster://[user:password@]host:port[,host:port…]"),
    ("REDIS_URL", "redis+sentinel://127.0.0.1:26379", "names no service"),
    ("REDIS_KEY_PREFIX", "my app", "e.g. 'billing:'"),
    ("REDIS_KEY_PREFIX", "{app}:", "e.g. 'billing:'"),
    ("NEAR_CACHE", "sometimes", "write on (the default) or off"),
    ("IDEMPOTENCY_STORE", "mongo", "use memory, postgres or redis"),
    ("IDEMPOTENCY_STORE", "postgres", "needs DATABASE_URL"),
    ("IDEMPOTENCY_STORE", "redis", "needs REDIS_URL"),
    ("IDEMPOTENCY_LEASE_SECONDS", "0", "e.g. 60"),
    ("IDEMPOTENCY_LEASE_SECONDS", "a minute", "write one such as 30 or 2.5"),
    ("IDEMPOTENCY_LEASE_SECONDS", "nan", "write one such as 30 or 2.5"),
    ("IDEMPOTENCY_TTL_SECONDS", "30", "e.g. 86400"),  # below the lease
    ("IDEMPOTENCY_TTL_SECONDS", "a day", "write one such as 30 or 2.5"),
    ("IDEMPOTENCY_CLEANUP_SECONDS", "-1", "or 0 to turn the sweeps off"),
    ("RATE_LIMIT", "lots", "for example '100/minute'"),
    ("RATE_LIMIT", "0/minute", "at least 1"),
    ("TRUSTED_PROXIES", "10.0.0.0/33", "examples: '10.0.0.1', '10.0.0.0/8'"),
    ("TRUSTED_PROXIES", "10.0.0.1, proxy.internal", "examples: '10.0.0.1', '10.0.0.0/8'"),
    ("CORS_ORIGINS", "https://app.example.com/", "e.g. 'https://app.example.com'"),
    ("CORS_ORIGINS", "https://*.com", "'https://*.example.com'"),
    ("MAX_CONCURRENCY", "lots", "e.g. 100"),
    ("MAX_CONCURRENCY", "0", "e.g. 100"),
    ("HEALTH_KEY", "short", "at least 16"),
    ("HEALTH_KEY", "a-long-enough-key-but-with-a-newline\n", "printable characters only"),
    ("SHUTDOWN_DRAIN_SECONDS", "soon", "write one such as 30 or 2.5"),
    ("SHUTDOWN_DRAIN_SECONDS", "-1", "e.g. 5, or 0"),
    ("SHUTDOWN_DRAIN_SECONDS", "40", "at least SHUTDOWN_DRAIN_SECONDS (40.0)"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "0", "e.g. 30"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "inf", "write one such as 30 or 2.5"),
    ("LOG_LEVEL", "verbose", "use one of debug, info, warning, error, critical"),
    ("LOG_FORMAT", "xml", "use json or console"),
]


@pytest.mark.parametrize(("variable", "value", "remedy"), BAD_VALUES)
def test_from_env_names_the_variable_and_what_to_write(
    variable: str, value: str, remedy: str
) -> None:
    # Issue 22: HEALTH_KEY=short and LOG_LEVEL=verbose passed from_env and failed at build()
    # with messages that named an option, not the variable.
    with pytest.raises(ConfigurationError) as caught:
        StackSettings.from_env({variable: value})
    message = str(caught.value)
    if variable.startswith("SHUTDOWN") and value == "40":  # a drain longer than the timeout
        variable = "SHUTDOWN_TIMEOUT_SECONDS"
    assert message.startswith(variable), message
    assert remedy in message


def test_the_table_covers_every_variable_from_env_reads() -> None:
    read: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: object = None) -> Any:
            read.add(key)
            return super().get(key, default)

    StackSettings.from_env(Recording())
    assert read == {variable for variable, _, _ in BAD_VALUES}


def test_a_log_level_message_reads_as_the_variable_was_written() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StackSettings.from_env({"LOG_LEVEL": "verbose"})
    assert str(caught.value) == (
        "LOG_LEVEL='verbose' (log_level) is not a level: "
        "use one of debug, info, warning, error, critical"
    )
    assert StackSettings.from_env({"LOG_LEVEL": " Warn "}).log_level == "WARN"


def test_a_bad_health_key_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ConfigurationError, match="5 characters long") as caught:
        StackSettings.from_env({"HEALTH_KEY": "s3cr3"})
    assert "s3cr3" not in str(caught.value)


@pytest.mark.parametrize("length", [15, 16])
def test_settings_and_the_health_layer_agree_on_the_shortest_key(length: int) -> None:
    key = "k" * length
    try:
        HealthMiddleware(build_app("raw"), key=key, registry=CollectorRegistry())
    except ConfigurationError:
        layer_accepts = False
    else:
        layer_accepts = True
    try:
        StackSettings(health_key=key)
    except ConfigurationError:
        settings_accept = False
    else:
        settings_accept = True
    assert settings_accept == layer_accepts == (length >= 16)


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
        ({"redis_url": "cache:6379"}, "REDIS_URL"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"body_timeout_seconds": 0}, "body_timeout_seconds"),
        ({"health_key": "short"}, "health_key"),
        ({"log_level": "verbose"}, "log_level"),
        ({"trusted_proxies": ("10.0.0.0/33",)}, "trusted_proxies"),
        ({"cors_origins": ("app.example.com",)}, "cors_origins"),
        ({"redis_key_prefix": "a b"}, "redis_key_prefix"),
        ({"shutdown_drain_seconds": 40.0}, "shutdown_timeout_seconds"),
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
