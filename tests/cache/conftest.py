"""Fixtures shared by the cache tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``("memory", "")`` or ``(redis_url, redis_prefix)`` (resolved outside the event loop)."""
    if request.param == "memory":
        return ("memory", "")
    return (request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
