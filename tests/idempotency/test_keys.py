"""Idempotency keys, storage keys and request fingerprints (``prodkit.idempotency._keys``)."""

from __future__ import annotations

import json
from decimal import Context, Decimal, Inexact, localcontext
from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit.asgi import Scope
from prodkit.idempotency._keys import (
    _exact,
    canonical_body,
    parse_idempotency_key,
    request_fingerprint,
    storage_key,
)


@given(st.binary(max_size=300))
def test_parse_never_raises_and_respects_the_cap(raw: bytes) -> None:
    key = parse_idempotency_key(raw, 64)
    assert key is None or 0 < len(key) <= 64


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1))
def test_sf_string_round_trip(key: str) -> None:
    serialised = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_idempotency_key(serialised.encode(), 10_000) == key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=5), st.randoms())
def test_fingerprint_ignores_json_key_order_and_spacing(document: dict[str, Any], rnd: Any) -> None:
    items = list(document.items())
    rnd.shuffle(items)
    scope: Scope = {
        "method": "POST",
        "path": "/a",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json; charset=utf-8")],
    }
    compact = json.dumps(document, separators=(",", ":")).encode()
    spaced = json.dumps(dict(items), indent=2).encode()
    assert request_fingerprint(scope, compact) == request_fingerprint(scope, spaced)
    assert request_fingerprint(scope, compact) != request_fingerprint(
        {**scope, "path": "/b"}, compact
    )


def test_a_body_that_is_not_json_is_fingerprinted_raw() -> None:
    assert canonical_body(b"{not json", b"application/json") == (b"raw", b"{not json")
    assert canonical_body(b'{"a": 1}', b"text/plain") == (b"raw", b'{"a": 1}')
    assert canonical_body(b'{"b": 1, "a": 2}', b"application/problem+json") == (
        b"json",
        b'{"a":2,"b":1}',
    )


def test_storage_keys_keep_namespace_caller_and_key_apart() -> None:
    key = storage_key("ns", "alice", "k")
    assert len(key) == 64
    assert key == storage_key("ns", "alice", "k")
    # Length prefixes: moving characters between the parts never gives the same digest.
    assert key != storage_key("nsa", "lice", "k")
    assert key != storage_key("ns", "alicek", "")
    assert key != storage_key("", "alice", "k")


# -- exact numbers (issue 21, item 2) -----------------------------------------------------------

JSON_TYPE = b"application/json"


def canonical(body: bytes) -> bytes:
    kind, text = canonical_body(body, JSON_TYPE)
    assert kind == b"json"
    return text


@pytest.mark.parametrize(
    ("spellings", "equal"),
    [
        # Differences beyond double precision are differences (18-decimal token amounts).
        (["1.000000000000000001", "1.000000000000000002"], False),
        (["9007199254740993.0", "9007199254740992.0"], False),  # integers above 2**53
        (["0.30000000000000004", "0.3"], False),
        (["1e400", "1e500"], False),  # both "Infinity" as floats
        # One value, many spellings.
        (["1e6", "1000000.0", "1000000", "1E+6", "10e5", "1.000e6", "100000000e-2"], True),
        (["0", "-0", "0.0", "-0.0e5", "0E-7"], True),  # zero has no sign
        (["0.5", "5e-1", "0.50", "50E-2"], True),
        (["-1.25", "-125e-2", "-0.0125e2"], True),
    ],
)
def test_numbers_compare_by_exact_value(spellings: list[str], equal: bool) -> None:
    texts = {canonical(f'{{"amount": {spelling}}}'.encode()) for spelling in spellings}
    assert (len(texts) == 1) is equal


def spell(value: Decimal, rnd: Random) -> str:
    """A random JSON spelling of ``value``: trailing zeros, a moved point, ``e``/``E``/``+``."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    significand = "".join(map(str, digits)).lstrip("0") or "0"
    if significand == "0":
        return rnd.choice(["0", "-0", "0.0", "0e0", "-0.000E+3"])
    zeros = rnd.randint(0, 3)
    significand += "0" * zeros
    exponent -= zeros
    if rnd.random() < 0.5:  # d.ddd or dd.dd: the point inside the significand
        point = rnd.randint(1, len(significand))
        whole, fraction = significand[:point], significand[point:]
    else:  # 0.000ddd
        whole, fraction = "0", "0" * rnd.randint(0, 3) + significand
    exponent += len(fraction)
    text = ("-" if sign else "") + whole + ("." + fraction if fraction else "")
    if exponent or rnd.random() < 0.3:
        mark = rnd.choice("eE")
        plus = "+" if exponent >= 0 and rnd.random() < 0.5 else ""
        text += f"{mark}{plus}{exponent:0{rnd.randint(1, 4)}d}"
    assert Decimal(text) == value
    return text


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: -400 < d.adjusted() < 400
) | st.builds(
    lambda digits, exponent: Decimal(f"{digits}e{exponent}"),
    st.integers(-(10**40), 10**40),
    st.integers(-60, 60),
)


@given(decimals, st.randoms(use_true_random=False))
def test_every_spelling_of_a_number_has_one_canonical_form(value: Decimal, rnd: Random) -> None:
    first, second = spell(value, rnd), spell(value, rnd)
    assert canonical(first.encode()) == canonical(second.encode())


NUMBERS = st.from_regex(
    r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?", fullmatch=True
)


@given(NUMBERS, NUMBERS)
def test_numbers_have_one_canonical_form_exactly_when_their_values_are_equal(
    one: str, other: str
) -> None:
    # The canonical form is itself a JSON number with the same exact value ...
    assert Decimal(canonical(one.encode()).decode()) == Decimal(one)
    # ... so different values never share one, and equal values always do.
    assert (canonical(one.encode()) == canonical(other.encode())) is (
        Decimal(one) == Decimal(other)
    )


json_numbers = st.recursive(
    st.none() | st.booleans() | decimals | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


def write(document: Any, rnd: Random) -> str:
    """``document`` as JSON text, its numbers spelled at random, members in random order."""
    if isinstance(document, Decimal):
        return spell(document, rnd)
    if isinstance(document, list):
        return "[ " + " ,\n".join(write(item, rnd) for item in document) + "]"
    if isinstance(document, dict):
        items = list(document.items())
        rnd.shuffle(items)
        members = (json.dumps(name) + " : " + write(value, rnd) for name, value in items)
        return "{" + ",\t".join(members) + " }"
    return json.dumps(document)


@given(json_numbers, st.randoms(use_true_random=False))
def test_equal_documents_have_one_fingerprint_however_written(document: Any, rnd: Random) -> None:
    scope: Scope = {"method": "POST", "path": "/a", "headers": [(b"content-type", JSON_TYPE)]}
    first, second = write(document, rnd).encode(), write(document, rnd).encode()
    assert request_fingerprint(scope, first) == request_fingerprint(scope, second)


@given(decimals, st.integers(0, 40), st.booleans(), st.randoms(use_true_random=False))
def test_documents_with_different_amounts_have_different_fingerprints(
    amount: Decimal, digit: int, same: bool, rnd: Random
) -> None:
    # ``other`` differs from ``amount`` in one digit, up to 40 places down: mostly beyond
    # what a double holds, where float fingerprints merged the two.
    with localcontext(Context(prec=5000, traps=[Inexact])):
        other = amount if same else amount + Decimal(1).scaleb(amount.adjusted() - digit)
    scope: Scope = {"method": "POST", "path": "/a", "headers": [(b"content-type", JSON_TYPE)]}
    first = f'{{"to": "acct-1", "amount": {spell(amount, rnd)}}}'.encode()
    second = f'{{"amount": {spell(other, rnd)}, "to": "acct-1"}}'.encode()
    assert (request_fingerprint(scope, first) == request_fingerprint(scope, second)) is same


def old_canonical(body: bytes) -> bytes:
    """The fingerprinted form before exact numbers (numbers parsed as Python floats)."""
    return json.dumps(
        json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


compatible_values = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=5)
    | st.integers(-(10**30), 10**30).filter(lambda n: not str(n).endswith("0" * 21))
    | st.builds(  # not whole, at most 15 significant digits, well inside the float range
        lambda digits, exponent: Decimal(f"{digits}e{exponent}"),
        st.integers(1, 10**15 - 1).filter(lambda n: n % 10),
        st.integers(-300, 0),
    ).filter(lambda d: d != d.to_integral_value() and 1e-300 < abs(d) < 1e300),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


@given(compatible_values, st.randoms(use_true_random=False))
def test_records_made_before_exact_numbers_still_match(document: Any, rnd: Random) -> None:
    # CHANGELOG: a body of strings, integers and decimals of up to 15 significant digits is
    # fingerprinted as before, so a retry of a record made before the upgrade still replays.
    body = write(json.loads(json.dumps(document, default=str), parse_float=Decimal), rnd)
    assert canonical(body.encode()) == old_canonical(body.encode())


@pytest.mark.parametrize(
    ("body", "first"),
    [
        # Written 1e+999999999, not as a billion zeros.
        (b"[" + b",".join([b"1e999999999"] * 10_000) + b"]", b"1e+999999999"),
        (b"[" + b",".join([b"1e20"] * 10_000) + b"]", b"1" + b"0" * 20),  # the most zeros written
        (
            b"[1e" + b"9" * 100_000 + b"]",
            b"1e" + b"9" * 100_000,
        ),  # a 100,000-digit exponent: as sent
        (b"[1e-" + b"0" * 100_000 + b"5]", b"1e-05"),  # leading zeros are no digits
        (b"[" + b"7" * 100_000 + b"]", b"7" * 100_000),  # over Python's int-string limit (4,300)
        (b"[0." + b"0" * 100_000 + b"1]", b"1e-100001"),
    ],
    ids=["huge-exponents", "many-zeros", "long-exponent", "padded-exponent", "long-int", "tiny"],
)
def test_canonical_numbers_cost_at_most_a_few_times_the_body(body: bytes, first: bytes) -> None:
    # A client must not make the fingerprint cost more than its body: the canonical form is
    # worked out from the digits as text, and only a short exponent is ever made an int.
    text = canonical(body)
    assert len(text) <= 5 * len(body)
    assert text[1:].split(b",")[0].rstrip(b"]") == first


def test_long_integers_keep_every_digit() -> None:
    digits = "7" * 5_000
    assert canonical(f"[{digits}1]".encode()) != canonical(f"[{digits}2]".encode())


def test_a_repeated_member_name_keeps_both_members() -> None:
    # The app may read the first or the last: neither body may replay the other's response.
    assert canonical(b'{"a": 1, "a": 2}') == b'{"a":1,"a":2}'
    assert canonical(b'{"a": 1, "a": 2}') != canonical(b'{"a": 2}')
    assert canonical(b'{"a": 1, "a": 2}') != canonical(b'{"a": 2, "a": 1}')
    assert canonical(b'{"b": 0, "a": 1, "a": 2}') == canonical(b'{"a": 1, "b": 0.0, "a": 2}')


#: Numbers in the spellings that decide which path writes a body: plain ones (the C encoder),
#: and exponents, whole decimals, long digit runs, ``-0`` (the exact path).
_SPELLED = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            *("1.0", "-0.0", "-0", "0.1", "1e5", "100.000", "12345678901234.5", "0.00001"),
            *("1.5E-7", "1000000000000000000000", "0.1234567890123456", "7"),
        ]
    ),
)


def _spelled(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} : {_spelled(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[ " + ",".join(_spelled(item) for item in value) + "]"
    return json.dumps(value)


@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), _SPELLED, st.text(max_size=4).map(json.dumps)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=2), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_the_fast_path_writes_what_the_exact_path_writes(document: Any) -> None:
    # Plain bodies are written by the standard library's C encoder, the others number by
    # number: a body must not get another fingerprint for the path it happens to take.
    body = _spelled(document).encode()
    kind, canonical = canonical_body(body, b"application/json")
    assert kind == b"json"
    assert canonical == _exact(body).encode("utf-8", "surrogatepass")
