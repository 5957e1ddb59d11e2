"""The recommended stack's composition: which stores the settings choose."""

from __future__ import annotations

from typing import Any

import pytest

from prodkit import ConfigurationError, StackSettings
from prodkit.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.stack import idempotency_store_for


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, MemoryIdempotencyStore),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1/db"}, PostgresIdempotencyStore),
        (
            {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "IDEMPOTENCY_STORE": "memory"},
            MemoryIdempotencyStore,
        ),
        (
            {"IDEMPOTENCY_STORE": "redis", "REDIS_URL": "redis://127.0.0.1:6379/0"},
            RedisIdempotencyStore,
        ),
    ],
)
async def test_idempotency_store_for(environ: dict[str, str], expected: type[Any]) -> None:
    store = idempotency_store_for(StackSettings.from_env(environ))
    assert isinstance(store, expected)
    if isinstance(store, RedisIdempotencyStore):
        await store.aclose()


@pytest.mark.parametrize(
    "environ",
    [{"IDEMPOTENCY_STORE": "postgres"}, {"IDEMPOTENCY_STORE": "redis"}, {"IDEMPOTENCY_STORE": "x"}],
)
def test_idempotency_store_for_rejects_incomplete_settings(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="IDEMPOTENCY_STORE"):
        idempotency_store_for(StackSettings.from_env(environ))
