"""Cached response encoding, ETags and header parsing, checked on arbitrary input."""

from __future__ import annotations

import subprocess
import sys
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit.cache import CachedResponse, compute_etag
from prodkit.cache._entry import (
    DecodedEntries,
    cache_control,
    etag_matches,
    freshness_lifetime,
    http_date,
    parse_cache_control,
)

header_names = st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
headers = st.lists(st.tuples(header_names, st.binary(max_size=50)), max_size=8)


@given(
    status=st.integers(100, 599),
    headers=headers,
    body=st.binary(max_size=2000),
    versions=st.lists(st.text(max_size=40), max_size=4),
    vary=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1), max_size=3),
    stored_at=st.floats(0, 2e9),
    route=st.none() | st.text(max_size=40),
)
def test_cached_responses_round_trip(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    versions: list[str],
    vary: list[str],
    stored_at: float,
    route: str | None,
) -> None:
    entry = CachedResponse(
        status,
        tuple(headers),
        body,
        compute_etag(body, headers),
        stored_at,
        tuple(versions),
        tuple(vary),
        route,
    )
    assert CachedResponse.decode(entry.encode()) == entry


@given(body=st.binary(max_size=500), content_type=st.binary(max_size=40))
def test_an_etag_matches_itself_weakly_and_strongly(body: bytes, content_type: bytes) -> None:
    etag = compute_etag(body, [(b"content-type", content_type)])
    assert etag_matches(etag, etag)
    assert etag_matches(b"W/" + etag, etag)
    assert etag_matches(b'"other", ' + etag, etag)
    assert etag_matches(b"*", etag)
    assert not etag_matches(b'"other"', etag)


@given(value=st.binary(max_size=200), etag=st.binary(max_size=40))
def test_hostile_if_none_match_and_cache_control_never_raise(value: bytes, etag: bytes) -> None:
    etag_matches(value, b'"' + etag.replace(b'"', b"") + b'"')
    cache_control([(b"cache-control", value)])


# -- Cache-Control: RFC 9111 section 5.2 over RFC 9110 section 5.6 lists and quoted strings -----

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
# qdtext and quoted-pair's characters: HTAB, SP, VCHAR and obs-text (latin-1), quotes included.
quoted_text = st.text(
    alphabet=st.sampled_from(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))]),
    max_size=24,
)
values = st.none() | st.tuples(st.just("token"), tokens) | st.tuples(st.just("quoted"), quoted_text)
separators = st.sampled_from([",", ", ", " , ", ",\t", ", ,", ",,  "])


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(
    directives=st.lists(st.tuples(tokens, values), min_size=1, max_size=8),
    seps=st.lists(separators, min_size=8, max_size=8),
    lines=st.integers(1, 3),
)
def test_cache_control_reads_back_what_was_written(
    directives: list[tuple[str, tuple[str, str] | None]], seps: list[str], lines: int
) -> None:
    elements = []
    for name, value in directives:
        if value is None:
            elements.append(name)
        elif value[0] == "token":
            elements.append(f"{name}={value[1]}")
        else:
            elements.append(f"{name}={quote(value[1])}")
    # one list, written as up to three field lines (RFC 9110 section 5.3 joins them with commas)
    cut = max(1, len(elements) // lines)
    fields = []
    for start in range(0, len(elements), cut):
        chunk = elements[start : start + cut]
        text = chunk[0] + "".join(
            sep + element for sep, element in zip(seps, chunk[1:], strict=False)
        )
        fields.append(text.encode("latin-1"))
    expected: dict[str, str] = {}
    for name, value in directives:
        expected.setdefault(name.lower(), "" if value is None else value[1])
    assert parse_cache_control(fields) == (expected, True)


@given(value=quoted_text.filter(lambda text: '"' not in text and "\\" not in text))
def test_an_unterminated_quoted_string_makes_the_field_malformed(value: str) -> None:
    field = f'max-age=60, x-ext="{value}'.encode("latin-1")
    directives, well_formed = parse_cache_control([field])
    assert not well_formed
    assert directives["max-age"] == "60"
    assert directives["x-ext"] == value  # swallowed to the end, never split into directives


@given(raw=st.binary(max_size=300))
def test_any_cache_control_parses_into_strings(raw: bytes) -> None:
    directives, well_formed = parse_cache_control([raw])
    assert isinstance(well_formed, bool)
    assert all(name and name == name.lower() for name in directives)
    assert all(isinstance(value, str) for value in directives.values())


@pytest.mark.parametrize(
    ("field", "directives", "well_formed"),
    [
        (b'x-ext="a, max-age=3600", max-age=1', {"x-ext": "a, max-age=3600", "max-age": "1"}, True),
        (
            b'private="set-cookie, x-a", max-age=5',
            {"private": "set-cookie, x-a", "max-age": "5"},
            True,
        ),
        (b'x="say \\"hi\\", ok"', {"x": 'say "hi", ok'}, True),
        (b"MAX-AGE=5, max-age=9", {"max-age": "5"}, True),  # the first counts (4.2.1)
        (b'max-age="5"', {"max-age": "5"}, True),  # the quoted form is accepted (5.2)
        (b" , no-store ,, ", {"no-store": ""}, True),  # empty list elements (5.6.1)
        (b"max-age=", {"max-age": ""}, False),
        (b"max-age=5 6", {"max-age": "5"}, False),
        (b"=5, public", {"public": ""}, False),
        (b'no-store x="a, b", public', {"no-store": "", "public": ""}, False),
    ],
)
def test_cache_control_cases(field: bytes, directives: dict[str, str], well_formed: bool) -> None:
    assert parse_cache_control([field]) == (directives, well_formed)


def test_importing_the_cache_imports_no_driver() -> None:
    code = "import sys, prodkit.cache; print(any(m.split('.')[0] == 'redis' for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_decoded_entries_are_reused_only_for_the_same_bytes_and_stay_bounded() -> None:
    def encoded(body: bytes) -> bytes:
        return CachedResponse(200, (), body, compute_etag(body), 1.0).encode()

    decoded = DecodedEntries(max_entries=2, max_bytes=1000)
    old = encoded(b"old")
    assert decoded.decode("a", old).body == b"old"
    assert decoded.decode("a", bytes(old)).body == b"old"  # equal bytes from another read
    assert decoded.decode("a", encoded(b"new")).body == b"new"  # replaced under the same key
    decoded.decode("b", encoded(b"b"))
    decoded.decode("c", encoded(b"c"))
    assert len(decoded) == 2
    assert decoded.decode("d", encoded(b"x" * 2000)).body == b"x" * 2000  # too big to keep
    assert len(decoded) == 2


# A hit reuses the entry decoded from the same bytes (DecodedEntries) instead of decoding the
# stored value again: what it hands out must be what decoding those bytes gives.
_STORED = st.builds(
    lambda status, body, stored_at: CachedResponse(
        status, ((b"content-type", b"text/plain"),), body, compute_etag(body), stored_at
    ).encode(),
    st.sampled_from([200, 404]),
    st.binary(max_size=300),
    st.sampled_from([1.0, 2.0]),
)


@given(
    reads=st.lists(st.tuples(st.sampled_from("abc"), _STORED, st.booleans()), max_size=30),
    max_entries=st.integers(1, 3),
    max_bytes=st.integers(1, 1000),
)
def test_a_remembered_entry_is_what_decoding_the_stored_bytes_gives(
    reads: list[tuple[str, bytes, bool]], max_entries: int, max_bytes: int
) -> None:
    decoded = DecodedEntries(max_entries=max_entries, max_bytes=max_bytes)
    last: dict[str, bytes] = {}
    for key, value, again in reads:
        if again and key in last:
            value = last[key]  # the same object again, as the memory store returns it
        stored = bytes(bytearray(value))  # equal bytes from another read, as Redis returns them
        for read in (value, stored):
            assert decoded.decode(key, read) == CachedResponse.decode(read)
        last[key] = value
        assert len(decoded) <= max_entries


NOW = 1_700_000_000.0


def _date(at: float) -> bytes:
    return formatdate(at, usegmt=True).encode()


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        # Nothing said: the rule's TTL alone applies.
        ([], None),
        ([(b"cache-control", b"public")], None),
        # RFC 9111 section 4.2.1: s-maxage, else max-age, else Expires - Date.
        ([(b"cache-control", b"max-age=30")], 30.0),
        ([(b"cache-control", b"max-age=0")], 0.0),
        ([(b"cache-control", b"max-age=30, s-maxage=5")], 5.0),
        ([(b"cache-control", b"s-maxage=30, max-age=0")], 30.0),
        ([(b"expires", _date(NOW + 10))], 10.0),
        ([(b"expires", _date(NOW + 10)), (b"date", _date(NOW - 100))], 110.0),
        # Section 5.3: max-age and s-maxage win over Expires, whatever it says.
        ([(b"expires", _date(NOW - 10)), (b"cache-control", b"max-age=30")], 30.0),
        ([(b"expires", b"0"), (b"cache-control", b"s-maxage=7")], 7.0),
        # An Expires in the past, Expires: 0 and an invalid date are already expired.
        ([(b"expires", _date(NOW - 10))], 0.0),
        ([(b"expires", b"0")], 0.0),
        ([(b"expires", b"-1")], 0.0),
        ([(b"expires", b"tomorrow")], 0.0),
        # Of several Expires lines, the first is used (section 4.2.1).
        ([(b"expires", _date(NOW + 10)), (b"expires", b"0")], 10.0),
        # Invalid freshness information is stale (section 4.2.1 encourages it).
        ([(b"cache-control", b"max-age=soon")], 0.0),
        ([(b"cache-control", b"max-age")], 0.0),
    ],
)
def test_freshness_lifetime_follows_rfc_9111(
    headers: list[tuple[bytes, bytes]], lifetime: float | None
) -> None:
    assert freshness_lifetime(headers, NOW) == lifetime


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        b"Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        b"Sun Nov  6 08:49:37 1994",  # ANSI C asctime() format
    ],
)
def test_http_dates_in_all_three_formats(value: bytes) -> None:
    # RFC 9110 section 5.6.7: a recipient accepts all three.
    assert http_date(value) == 784111777.0


@given(st.binary(max_size=40))
def test_any_expires_value_is_a_date_or_none(value: bytes) -> None:
    parsed = http_date(value)
    assert parsed is None or isinstance(parsed, float)
