"""HeadMeter: a request head measured read by read decides exactly as the whole head would."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit.serving._head import HeadMeter

MAX_BYTES = 160
MAX_HEADERS = 4

NAMES = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
VALUES = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=,/", max_size=40)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=7)


def head(target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fed(meter: HeadMeter, data: bytes, cuts: list[int]) -> bool:
    """Feed ``data`` cut at ``cuts``, as the protocol does: until over, or the head is read."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    seen = b""
    for start, stop in itertools.pairwise(bounds):
        piece = data[start:stop]
        if not piece:
            continue
        if meter.over_limit(piece):
            return True
        seen += piece
        if b"\r\n\r\n" in seen:
            return False  # the parser has the whole head: the body is not measured
    return False


@given(
    target=st.text("/abcdefghij0123456789?=&", min_size=1, max_size=60).map(lambda t: "/" + t),
    headers=HEADERS,
    body=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=1, max_value=800), max_size=12),
)
def test_any_split_decides_as_the_whole_head(
    target: str, headers: list[tuple[str, str]], body: bytes, cuts: list[int]
) -> None:
    raw = head(target, headers)
    too_large = len(raw) > MAX_BYTES or len(headers) > MAX_HEADERS
    # A body after the head (even one full of blank lines) is never counted.
    data = raw + body
    assert fed(HeadMeter(MAX_BYTES, MAX_HEADERS), data, []) is too_large
    assert fed(HeadMeter(MAX_BYTES, MAX_HEADERS), data, [c for c in cuts if c < len(data)]) is (
        too_large
    )


@pytest.mark.parametrize(
    ("extra", "over"),
    [
        (0, False),  # exactly at the limit
        (1, True),  # one byte over
    ],
)
def test_the_limit_counts_the_head_from_request_line_to_blank_line(extra: int, over: bool) -> None:
    start = b"GET / HTTP/1.1\r\nX-Pad: "
    filler = MAX_BYTES - len(start) - len(b"\r\n\r\n") + extra
    raw = start + b"a" * filler + b"\r\n\r\n"
    assert len(raw) == MAX_BYTES + extra
    assert HeadMeter(MAX_BYTES, MAX_HEADERS).over_limit(raw) is over
    meter = HeadMeter(MAX_BYTES, MAX_HEADERS)  # one byte at a time: the same answer
    assert any(meter.over_limit(raw[i : i + 1]) for i in range(len(raw))) is over


def test_reset_starts_the_next_head() -> None:
    meter = HeadMeter(MAX_BYTES, MAX_HEADERS)
    one = head("/", [("a", "b")] * MAX_HEADERS)
    for _ in range(5):  # keep-alive: every head is measured on its own
        assert not meter.over_limit(one)
        meter.reset()
