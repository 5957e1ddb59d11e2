"""Idempotency keys, storage keys and request fingerprints (``prodkit.idempotency._keys``)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from prodkit.asgi import Scope
from prodkit.idempotency._keys import (
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
