"""The option validators accept exactly the valid values, and a refusal names the option."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.options import (
    build_options,
    fraction,
    header_name,
    header_names,
    header_value,
    http_token,
    increasing_numbers,
    metric_prefix,
    non_negative_int,
    non_negative_seconds,
    one_of,
    path_list,
    positive_int,
    positive_seconds,
    secret,
    string_list,
    url_path,
)

NAMES = st.from_regex(r"[a-z][a-z_]{0,24}", fullmatch=True)
#: Anything a user may pass by mistake: numbers of every kind, bools, text, None, containers.
ANYTHING = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.lists(st.text(max_size=8), max_size=4),
    st.tuples(st.integers()),
)
TOKEN_CHARS = set("!#$%&'*+.^_`|~-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and not math.isnan(value)  # type: ignore[arg-type]


# (validator, what a valid value is, written independently of the code)
NUMBERS: list[tuple[Callable[[str, object], object], Callable[[Any], bool]]] = [
    (positive_int, lambda v: _is_int(v) and v >= 1),
    (non_negative_int, lambda v: _is_int(v) and v >= 0),
    (positive_seconds, lambda v: _is_number(v) and 0 < v < math.inf),
    (non_negative_seconds, lambda v: _is_number(v) and 0 <= v < math.inf),
    (fraction, lambda v: _is_number(v) and 0 <= v <= 1),
    (
        lambda name, value: positive_int(name, value, maximum=60),
        lambda v: _is_int(v) and 1 <= v <= 60,
    ),
]


def _checks(
    validator: Callable[[str, object], object], valid: bool, name: str, value: object
) -> None:
    if valid:
        assert validator(name, value) is value
        return
    with pytest.raises(ConfigurationError) as refused:
        validator(name, value)
    message = str(refused.value)
    assert message.startswith(f"{name}={value!r}: ")  # the option and the value
    assert "; write " in message  # and what to write instead


@pytest.mark.parametrize(
    ("validator", "valid"),
    NUMBERS,
    ids=[
        "positive_int",
        "non_negative_int",
        "positive_seconds",
        "non_negative_seconds",
        "fraction",
        "positive_int_with_maximum",
    ],
)
@given(name=NAMES, value=ANYTHING)
def test_number_validators_accept_exactly_the_valid_values(
    validator: Callable[[str, object], object],
    valid: Callable[[Any], bool],
    name: str,
    value: object,
) -> None:
    _checks(validator, valid(value), name, value)


@pytest.mark.parametrize(
    ("validator", "value", "problem"),
    [
        (positive_int, 0, "less than 1"),
        (positive_int, "10", "not an integer"),
        (positive_int, True, "not an integer"),  # a bool is an int to Python, not to a user
        (positive_int, 2.0, "not an integer"),
        (non_negative_int, -1, "negative"),
        (positive_seconds, 0, "not greater than 0"),
        (positive_seconds, math.inf, "finite"),
        (positive_seconds, math.nan, "finite"),
        (non_negative_seconds, -0.5, "negative"),
        (non_negative_seconds, "1s", "not a number"),
        (fraction, 1.5, "not from 0 to 1"),
    ],
)
def test_number_messages_say_what_is_wrong(
    validator: Callable[[str, object], object], value: object, problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as refused:
        validator("queue_timeout", value)
    assert "e.g. queue_timeout=" in str(refused.value)


@given(name=NAMES, value=st.one_of(st.text(max_size=30), ANYTHING))
def test_header_name_accepts_exactly_tokens(name: str, value: object) -> None:
    valid = isinstance(value, str) and value != "" and set(value) <= TOKEN_CHARS
    _checks(header_name, valid, name, value)
    _checks(http_token, valid, name, value)


@given(name=NAMES, value=st.one_of(st.text(max_size=30), ANYTHING))
def test_header_value_accepts_exactly_printable_ascii(name: str, value: object) -> None:
    valid = isinstance(value, str) and value != "" and all(" " <= c <= "~" for c in value)
    _checks(header_value, valid, name, value)


def test_header_checks_refuse_header_injection() -> None:
    with pytest.raises(ConfigurationError, match="header_name='X Id'"):
        header_name("header_name", "X Id")
    with pytest.raises(ConfigurationError, match="referrer_policy=None for no header"):
        header_value("referrer_policy", "no-referrer\r\nSet-Cookie: a=b")


@given(name=NAMES, value=ANYTHING, choices=st.lists(st.sampled_from(["json", "console", 1, 2.5])))
def test_one_of_accepts_exactly_the_choices(
    name: str, value: object, choices: list[object]
) -> None:
    valid = any(type(value) is type(c) and value == c for c in choices)
    if valid:
        assert one_of(name, value, choices) == value
        return
    with pytest.raises(ConfigurationError) as refused:
        one_of(name, value, choices)
    assert str(refused.value).startswith(f"{name}={value!r}: not one of the choices")


def test_one_of_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="write one of 'json', 'console'"):
        one_of("log_format", "text", ["json", "console"])
    with pytest.raises(ConfigurationError):
        one_of("retries", True, [1, 2])  # True == 1, but it is not the choice 1


@given(
    name=NAMES,
    value=st.one_of(
        st.lists(st.text(max_size=10), max_size=5),
        st.text(max_size=30),
        st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3),
        st.integers(),
        st.none(),
        st.binary(max_size=4),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    ),
)
def test_string_list_accepts_strings_and_lists_of_strings(name: str, value: object) -> None:
    if isinstance(value, str):
        items: list[object] | None = list(value.split(","))
    elif isinstance(value, list):
        items = value
    else:
        items = None
    if items is None or not all(isinstance(item, str) for item in items):
        with pytest.raises(ConfigurationError) as refused:
            string_list(name, value)
        assert str(refused.value).startswith(f"{name}=")
        return
    result = string_list(name, value)
    expected = [item.strip() for item in items if isinstance(item, str) and item.strip()]
    assert list(result) == list(dict.fromkeys(expected))


def test_string_list_reads_an_environment_style_string() -> None:
    assert string_list("allow_methods", " GET, POST,,GET ") == ("GET", "POST")
    assert string_list("allow_methods", iter(["a", "b"])) == ("a", "b")  # read once, kept


@dataclass(frozen=True, kw_only=True)
class Options:
    size: int = 1


def test_build_options_takes_options_or_keywords_not_both() -> None:
    assert build_options(Options, None, {}) == Options()
    assert build_options(Options, None, {"size": 3}) == Options(size=3)
    given_options = Options(size=2)
    assert build_options(Options, given_options, {}) is given_options
    with pytest.raises(ConfigurationError, match="options= and the keywords size were both"):
        build_options(Options, given_options, {"size": 3})
    with pytest.raises(ConfigurationError, match="not of type Options"):
        build_options(Options, {"size": 3}, {})
    with pytest.raises(TypeError, match="sise"):
        build_options(Options, None, {"sise": 3})


def test_a_maximum_is_said_in_what_to_write() -> None:
    with pytest.raises(ConfigurationError) as refused:
        positive_int("retry_after", 61, example=2, maximum=60)
    assert str(refused.value) == (
        "retry_after=61: more than 60; write an integer from 1 to 60, e.g. retry_after=2"
    )
    assert non_negative_int("hold_limit", 0, maximum=5) == 0


@given(
    name=NAMES,
    value=st.one_of(
        st.lists(st.one_of(st.floats(), st.integers(), st.booleans()), max_size=5), ANYTHING
    ),
)
def test_increasing_numbers_accepts_exactly_increasing_finite_numbers(
    name: str, value: object
) -> None:
    valid = (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(_is_number(v) and math.isfinite(v) for v in value)
        and all(b > a for a, b in pairwise(value))
    )
    if valid:
        assert increasing_numbers(name, value) == tuple(value)  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigurationError) as refused:
        increasing_numbers(name, value)
    assert str(refused.value).startswith(f"{name}=")
    assert "; write numbers in increasing order" in str(refused.value)


@given(name=NAMES, value=st.one_of(st.text(max_size=12), ANYTHING))
def test_url_path_accepts_exactly_strings_starting_with_a_slash(name: str, value: object) -> None:
    _checks(url_path, isinstance(value, str) and value.startswith("/"), name, value)


@pytest.mark.parametrize(
    ("value", "result"),
    [
        (["/livez", "/static/*"], ("/livez", "/static/*")),
        ((path for path in ["/a"]), ("/a",)),  # read once, kept
        ([], ()),
        ("/livez", "exclude_paths='/livez': a list of paths, not one string; write a list"),
        (["livez"], "exclude_paths=['livez']: 'livez' must start with '/'"),
        ([b"/livez"], "exclude_paths=[b'/livez']: b'/livez' must start with '/'"),
        (None, "exclude_paths=None: not a list of paths"),
    ],
)
def test_path_list(value: object, result: tuple[str, ...] | str) -> None:
    if isinstance(result, tuple):
        assert path_list("exclude_paths", value) == result
        return
    with pytest.raises(ConfigurationError, match=re.escape(result)):
        path_list("exclude_paths", value)


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ([" Authorization", "X-Request-ID "], ("Authorization", "X-Request-ID")),
        ([], ()),
        ("Authorization", "request_headers='Authorization': a list of header names, not one"),
        (["X Id"], "request_headers=['X Id']: 'X Id' is not a header name"),
        ([1], "request_headers=[1]: 1 is not a header name"),
        (7, "request_headers=7: not a list of header names"),
    ],
)
def test_header_names(value: object, result: tuple[str, ...] | str) -> None:
    if isinstance(result, tuple):
        assert header_names("request_headers", value) == result
        return
    with pytest.raises(ConfigurationError, match=re.escape(result)):
        header_names("request_headers", value)


# https://prometheus.io/docs/concepts/data_model/#metric-names-and-labels
@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("myapp_", True),
        ("a:b_", True),
        ("ns:sub_", True),
        ("_private_", True),
        ("1app_", False),
        ("my-app_", False),
        ("bad prefix", False),
        ("é_", False),
        ("svc_\n", False),
        (None, False),
    ],
)
def test_metric_prefix(value: object, valid: bool) -> None:
    _checks(metric_prefix, valid, "metric_prefix", value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3cr3t", "key: 6 characters long; write at least 16, a random one such as"),
        (" a-long-enough-secret", "key: spaces at an end or control characters"),
        ("a-long-enough-secret\n", "write printable characters only"),
        (1234567890123456789, "key: not a string"),
    ],
)
def test_a_secret_is_refused_without_being_repeated(value: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as refused:
        secret("key", value)
    assert str(value).strip() not in str(refused.value)
    assert secret("key", "k" * 16) == "k" * 16
