"""IdempotencyOptions: the middleware's options, checked once when made (``_options``)."""

from __future__ import annotations

import re
from typing import Any, get_type_hints

import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, IdempotencyMiddleware
from prodkit.idempotency import (
    DEFAULT_STORED_HEADERS,
    IdempotencyKeywords,
    IdempotencyOptions,
    MemoryIdempotencyStore,
)
from tests.apps import build_app
from tests.conftest import ClientFactory

AUTH = {"Authorization": "Bearer alice-token"}


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    store = MemoryIdempotencyStore()
    by_keyword = IdempotencyMiddleware(
        build_app("raw"), store=store, methods=["PUT"], registry=CollectorRegistry()
    )
    options = IdempotencyOptions(store=store, methods=["PUT"], registry=CollectorRegistry())
    by_object = IdempotencyMiddleware(build_app("raw"), options=options)
    assert by_object.options is options
    for index, middleware in enumerate((by_keyword, by_object)):
        headers = {**AUTH, "Idempotency-Key": f"k-{index}"}
        client = make_client(middleware)
        first = await client.put("/items/1", content=b"{}", headers=headers)
        retry = await client.put("/items/1", content=b"{}", headers=headers)
        assert (first.headers["idempotency-status"], retry.headers["idempotency-status"]) == (
            "created",
            "replayed",
        )


def test_the_defaults_are_the_options_defaults() -> None:
    store, registry = MemoryIdempotencyStore(), CollectorRegistry()
    middleware = IdempotencyMiddleware(build_app("raw"), store=store, registry=registry)
    assert middleware.options == IdempotencyOptions(store=store, registry=registry)
    assert middleware.options.methods == ("POST", "PATCH")
    assert middleware.options.stored_headers == DEFAULT_STORED_HEADERS
    assert (middleware.ttl, middleware.lease, middleware.max_key_length) == (86400.0, 60.0, 255)
    assert middleware.breaker is None  # the memory store does no I/O


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": ["post"]}, "methods=('post',): 'post' is not an upper-case HTTP method"),
        ({"methods": []}, "methods=(): names no HTTP method"),
        ({"header_name": "Idempotency Key"}, "header_name='Idempotency Key': not a header name"),
        ({"lease": 100, "ttl": 10}, "lease=100: longer than ttl=10"),
        ({"wait_timeout": 0}, "wait_timeout=0: not greater than 0"),
        ({"routes": ["orders"]}, "routes=['orders']: 'orders' must start with '/'"),
        ({"unknown_caller": "share"}, "unknown_caller='share': not one of the choices"),
        ({"stored_headers": ["Location", "Set-Cookie"]}, "includes set-cookie; cookies are"),
        ({"stored_headers": "Location"}, "stored_headers='Location': a list of header names"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        IdempotencyOptions(store=MemoryIdempotencyStore(), **options)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(IdempotencyKeywords) == get_type_hints(IdempotencyOptions)
