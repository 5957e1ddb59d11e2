"""The whole recommended stack against the bare app, in-process (GET, in-memory stores)."""

from __future__ import annotations

import os

from benchmarks.apps import starlette_app
from benchmarks.harness import Case
from prodkit import StackSettings, caller_from_header, configure_logging
from prodkit.asgi import ASGIApp
from prodkit.cache import CacheRule
from prodkit.stack import recommended_stack


def stack(*, cached: bool = False, logging: bool = True) -> ASGIApp:
    configure_logging("INFO" if logging else "WARNING", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    return recommended_stack(
        starlette_app(),
        StackSettings(rate_limit="1000000/second", max_concurrency=10_000),
        cache_routes={"/items/{item_id}": CacheRule(ttl=60)} if cached else None,
        caller=caller_from_header("X-User-Id"),
    )


def cases() -> list[Case]:
    """Bare Starlette vs the full stack (uncached, cached, access log level above INFO)."""
    headers = [("X-User-Id", "bench")]
    return [
        Case("starlette: bare", starlette_app, headers=headers),
        Case("full stack", stack, headers=headers, baseline="starlette: bare"),
        Case(
            "full stack, cached hit",
            lambda: stack(cached=True),
            headers=headers,
            baseline="starlette: bare",
        ),
        Case(
            "full stack, access log off",
            lambda: stack(logging=False),
            headers=headers,
            baseline="starlette: bare",
        ),
    ]
