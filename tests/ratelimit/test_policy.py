"""parse_rate and RateLimitPolicy: the RATE_LIMIT forms, validation, header text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit.ratelimit import RateLimitPolicy, parse_rate
from prodkit.ratelimit._policy import RATE_UNITS


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("100/minute", (100, 60)),
        ("10/second", (10, 1)),
        ("5000/hour", (5000, 3600)),
        ("1000/day", (1000, 86400)),
        ("100/minutes", (100, 60)),
        ("100 per minute", (100, 60)),
        (" 7 / s ", (7, 1)),
        ("1000/5 minutes", (1000, 300)),
        ("3/MIN", (3, 60)),
        ("2/h", (2, 3600)),
        ("1/d", (1, 86400)),
    ],
)
def test_parse_rate_accepts_the_documented_forms(rate: str, expected: tuple[int, int]) -> None:
    assert parse_rate(rate) == expected


@pytest.mark.parametrize(
    "rate",
    [
        "",
        "100",
        "minute",
        "100/fortnight",
        "0/minute",
        "-1/minute",
        "1.5/second",
        "100/0 minutes",
        "100//minute",
        "abc/minute",
    ],
)
def test_parse_rate_rejects_garbage_with_a_helpful_message(rate: str) -> None:
    with pytest.raises(ConfigurationError, match=r"minute|at least"):
        parse_rate(rate)


@given(
    count=st.integers(1, 10**9),
    multiplier=st.integers(1, 1000),
    unit=st.sampled_from(sorted(RATE_UNITS)),
    plural=st.booleans(),
)
def test_parse_rate_round_trips(count: int, multiplier: int, unit: str, plural: bool) -> None:
    text = f"{count}/{multiplier} {unit}{'s' if plural else ''}"
    assert parse_rate(text) == (count, multiplier * RATE_UNITS[unit])


@given(st.text(max_size=40))
def test_parse_rate_never_raises_anything_but_configuration_error(text: str) -> None:
    try:
        quota, window = parse_rate(text)
    except ConfigurationError:
        return
    assert quota >= 1
    assert window >= 1


def test_policy_header_is_the_drafts_structured_field() -> None:
    assert RateLimitPolicy(100, 60).header == '"default";q=100;w=60'
    assert RateLimitPolicy.parse("5/minute", "login").header == '"login";q=5;w=60'


@pytest.mark.parametrize(
    ("quota", "window", "name"),
    [
        (0, 60, "a"),
        (10, 0, "a"),
        (10, 60, ""),
        (10, 60, 'bad"name'),
        (10, 60, "x" * 65),
        (True, 60, "a"),
        (1.5, 60, "a"),
    ],
)
def test_policy_validation(quota: int, window: int, name: str) -> None:
    with pytest.raises(ConfigurationError):
        RateLimitPolicy(quota, window, name)
