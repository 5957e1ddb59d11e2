"""Layer: a middleware and its options as data; typed keywords are checked by mypy."""

from __future__ import annotations

import pytest

from prodkit import ConcurrencyLimitMiddleware, ConfigurationError, RequestIdMiddleware, Stack
from prodkit.asgi import ASGIApp
from prodkit.stack import Layer
from tests.conftest import ClientFactory
from tests.stack.helpers import Tag, items

# -- typed layers: mypy --strict checks this file, so these lines are type checks too --------


async def test_a_layer_takes_its_options_as_checked_keywords(make_client: ClientFactory) -> None:
    typed = Layer("request_id", RequestIdMiddleware, header_name="X-Correlation-ID")
    mapped = Layer("request_id", RequestIdMiddleware, {"header_name": "X-Correlation-ID"})
    assert typed == mapped
    assert typed.options == {"header_name": "X-Correlation-ID"}
    stack = Stack([typed, Layer("tag", Tag, value="typed")])
    response = await make_client(stack.build(items)).get("/items/1")
    assert response.headers["x-correlation-id"]
    assert response.headers["x-layer"] == "typed"


def test_positional_options_are_named_from_the_middleware_signature() -> None:
    def gzip_like(app: ASGIApp, /, minimum_size: int = 500, **rest: int) -> ASGIApp:
        return app

    layer = Layer("gzip", gzip_like, 100, compresslevel=9)
    assert layer.options == {"minimum_size": 100, "compresslevel": 9}
    with pytest.raises(ConfigurationError, match="layer 'gzip'"):
        Layer("gzip", gzip_like, 1, 2)  # type: ignore[call-overload]


def test_a_wrong_option_is_a_type_error_where_the_stack_is_written() -> None:
    # The ignores below are the test: with warn_unused_ignores (mypy --strict), mypy fails
    # this file if a misspelt or mistyped option stops being a type error.
    misspelt = Layer("request_id", RequestIdMiddleware, heder_name="X")  # type: ignore[call-overload]
    mistyped = Layer("shedding", ConcurrencyLimitMiddleware, max_concurrency="10")  # type: ignore[call-overload]
    Layer("tag", Tag, valeu="x")  # type: ignore[call-overload]
    # At run time, the middleware refuses them when the stack is built.
    with pytest.raises(TypeError, match="heder_name"):
        misspelt.wrap(items)
    with pytest.raises(ConfigurationError, match="max_concurrency='10'"):
        mistyped.wrap(items)
