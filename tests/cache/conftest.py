"""Fixtures shared by the cache tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from prodkit.cache import RedisCacheStore, ResponseCache
from tests.cache.helpers import Backend


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("near", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Memory, Redis, or a near cache over Redis (URL and prefix resolved outside the event
    loop); :func:`tests.cache.helpers.store_for` builds a store over it."""
    if request.param == "memory":
        return Backend("memory")
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return Backend(request.param, url, prefix)


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
