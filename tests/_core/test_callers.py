"""Caller functions: who is calling, as idempotency, the cache and rate limits see it."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import caller_from_authorization, caller_from_header
from prodkit.asgi import Scope


def scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "headers": list(headers)}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"x-user-id", b"u1")], "u1", id="present"),
        pytest.param([], None, id="absent: no caller"),
        pytest.param([(b"x-user-id", b"")], None, id="empty: no caller"),
        pytest.param([(b"x-other", b"u1")], None, id="another header"),
        pytest.param([(b"x-user-id", b"caf\xe9")], "caf\xe9", id="latin-1 bytes kept"),
    ],
)
def test_caller_from_header(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert caller_from_header("X-User-Id")(scope(*headers)) == expected


def test_a_long_header_becomes_its_digest_so_long_ids_never_share_a_caller() -> None:
    caller = caller_from_header("X-User-Id", max_length=8)
    first = caller(scope((b"x-user-id", b"a" * 9)))
    second = caller(scope((b"x-user-id", b"a" * 8 + b"b")))
    assert first == "sha256:" + hashlib.sha256(b"a" * 9).hexdigest()
    assert second is not None
    assert first != second
    assert caller(scope((b"x-user-id", b"a" * 8))) == "a" * 8  # at the limit: kept as it is


def test_a_value_that_looks_like_a_digest_cannot_pose_as_a_long_id() -> None:
    caller = caller_from_header("X-User-Id", max_length=8)
    victim = caller(scope((b"x-user-id", b"a" * 9)))
    assert victim is not None
    assert caller(scope((b"x-user-id", victim.encode()))) != victim


def test_caller_from_authorization_keeps_no_credentials() -> None:
    token = b"Bearer s3cret"
    assert caller_from_authorization(scope((b"authorization", token))) == (
        hashlib.sha256(token).hexdigest()
    )
    assert caller_from_authorization(scope()) is None


@given(st.binary(min_size=1, max_size=600), st.binary(min_size=1, max_size=600))
def test_two_different_header_values_are_two_callers(first: bytes, second: bytes) -> None:
    caller = caller_from_header("X-User-Id")
    a, b = caller(scope((b"x-user-id", first))), caller(scope((b"x-user-id", second)))
    assert a is not None
    assert b is not None
    assert len(a) <= 256 + len("sha256:")
    assert (a == b) == (first == second)
