"""Fixtures of the logging tests: structlog as a service that never configured it sees it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog's built-in defaults (``is_configured()`` false) for the test, then as before."""
    configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
