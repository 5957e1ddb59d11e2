"""The whole recommended stack against the bare app, in-process (GET, in-memory stores; and the
cached hit with the stores in Redis, with and without the near cache, when Redis answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from benchmarks.apps import starlette_app
from benchmarks.bench_cache import REDIS_URL, _redis_up
from benchmarks.harness import Case
from prodkit import StackSettings, caller_from_header, configure_logging
from prodkit.asgi import ASGIApp
from prodkit.cache import CacheRule
from prodkit.stack import recommended_stack


def stack(*, cached: bool = False, logging: bool = True, redis: str = "") -> ASGIApp:
    """The stack over ``starlette_app``; ``redis="on"`` or ``"off"``: its stores in Redis,
    with the near cache on or off."""
    configure_logging("INFO" if logging else "WARNING", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    settings = StackSettings(rate_limit="1000000/second", max_concurrency=10_000)
    if redis:
        settings = StackSettings(
            rate_limit="1000000/second",
            max_concurrency=10_000,
            redis_url=REDIS_URL,
            redis_key_prefix=f"prodkit-bench:{uuid.uuid4().hex[:8]}:",
            near_cache=redis == "on",
        )
    return recommended_stack(
        starlette_app(),
        settings,
        cache_routes={"/items/{item_id}": CacheRule(ttl=60)} if cached else None,
        caller=caller_from_header("X-User-Id"),
    )


def on_redis(near: str) -> Callable[[], ASGIApp]:
    return lambda: stack(cached=True, redis=near)


#: What a browser sends with a GET besides the caller: the request's fields are read once by
#: the whole stack, however many there are.
BROWSER_HEADERS = [
    ("Host", "api.example.com"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "application/json, text/plain, */*"),
    ("Accept-Language", "en-GB,en;q=0.7"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", "https://app.example.com/funds"),
    ("Origin", "https://app.example.com"),
    ("Connection", "keep-alive"),
    ("Sec-Fetch-Dest", "empty"),
    ("Sec-Fetch-Mode", "cors"),
    ("Sec-Fetch-Site", "same-site"),
    ("Priority", "u=0"),
]


def cases() -> list[Case]:
    """Bare Starlette vs the full stack (uncached, cached, access log level above INFO)."""
    headers = [("X-User-Id", "bench")]
    browser = [*BROWSER_HEADERS, *headers]
    return [
        Case("starlette: bare", starlette_app, headers=headers),
        Case("full stack", stack, headers=headers, baseline="starlette: bare"),
        Case("starlette: bare, browser headers", starlette_app, headers=browser),
        Case(
            "full stack, browser headers",
            stack,
            headers=browser,
            baseline="starlette: bare, browser headers",
        ),
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
        *(
            Case(
                f"full stack on Redis, cached hit, near cache {near}",
                on_redis(near),
                headers=headers,
                baseline="full stack, cached hit",
            )
            for near in (("on", "off") if _redis_up() else ())
        ),
    ]
