"""This concern runs on every framework of :data:`tests.apps.FRAMEWORKS`, Quart and Django too."""

from __future__ import annotations

import pytest

from tests.apps import FRAMEWORKS


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each framework: raw ASGI, Starlette, FastAPI, Litestar, Quart, Django."""
    return str(request.param)
