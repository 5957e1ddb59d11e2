"""parse_rate, RateLimitPolicy and route_policy_name: RATE_LIMIT forms, validation, names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit.ratelimit import RateLimitPolicy, RedisRateLimitStore, parse_rate, route_policy_name
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


# Route templates as people write them, and as they could be written: parameters, wildcards,
# trailing and doubled slashes, underscores that cleaning would turn into the same name as a
# slash, lengths around the 64-character limit, non-ASCII.
_SEGMENT = st.text(alphabet="abz09._-", min_size=1, max_size=12)
_PLAIN = st.lists(_SEGMENT, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts))
_ANY = st.text(alphabet="ab_-./{}*:é ", max_size=90).map(lambda text: "/" + text)
_TEMPLATE = st.one_of(_PLAIN, _ANY, _PLAIN.map(lambda t: t * 4))


@pytest.mark.parametrize(
    ("template", "name"),
    [
        # Plain templates keep the names (and so the Redis keys) they had before.
        ("/api/login", "route:api_login"),
        ("/api/v1.2/export-all", "route:api_v1.2_export-all"),
        # Anything else carries a digest of the exact template after a second colon.
        ("/api_login", "route:api_login:b42879bfd7c4b740"),
        ("/api/login/", "route:api_login:87905a86c57ce5a7"),
        ("/api/funds/{id}", "route:api_funds_id:2d42bee84295f5b9"),
        ("/", "route:root:8a5edab282632443"),
    ],
)
def test_route_policy_names_read_as_the_route(template: str, name: str) -> None:
    assert route_policy_name(template) == name
    assert route_policy_name(template, 1) == name + ":2"


@given(first=_TEMPLATE, second=_TEMPLATE, indices=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_distinct_routes_never_share_a_policy_name_or_a_store_key(
    first: str, second: str, indices: tuple[int, int]
) -> None:
    # Issue 21: names were the route cleaned and cut to 64 characters, so `/api/login` and
    # `/api_login` (or two long templates alike in their first 58 characters) shared a quota.
    import redis.asyncio

    store = RedisRateLimitStore(redis.asyncio.Redis(), key_prefix="app:rl:")
    names = [route_policy_name(first, indices[0]), route_policy_name(second, indices[1])]
    keys = [store.redis_key("192.0.2.1", RateLimitPolicy(1, 60, name)) for name in names]
    if (first, indices[0]) == (second, indices[1]):
        assert names[0] == names[1]
    else:
        assert names[0] != names[1]
        assert keys[0] != keys[1]
