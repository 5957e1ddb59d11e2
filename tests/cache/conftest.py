"""Fixtures shared by the cache tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from prodkit.cache import RedisCacheStore, ResponseCache


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``("memory", "")`` or ``(redis_url, redis_prefix)`` (resolved outside the event loop)."""
    if request.param == "memory":
        return ("memory", "")
    return (request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))


@pytest.fixture
def redis_target(redis_url: str, redis_prefix: str) -> tuple[str, str]:
    """The shared test Redis and this test's key prefix (resolved outside the event loop)."""
    return redis_url, redis_prefix


@pytest.fixture
async def redis_cache(
    redis_target: tuple[str, str], registry: CollectorRegistry
) -> AsyncIterator[ResponseCache]:
    """A ``ResponseCache`` over the shared test Redis, under this test's prefix."""
    url, prefix = redis_target
    cache = ResponseCache(RedisCacheStore.from_url(url, key_prefix=prefix), registry=registry)
    yield cache
    await cache.aclose()
