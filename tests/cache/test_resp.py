"""RESP3 as the near cache's connections speak it: every frame read back, in any chunks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit.cache._resp import ErrorReply, Parser, ProtocolError, Push, command


def encode(value: Any) -> bytes:
    """RESP3 for ``value``, as Redis writes it (the reference the parser is checked against)."""
    if value is None:
        return b"_\r\n"
    if isinstance(value, bool):
        return b"#t\r\n" if value else b"#f\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, float):
        return b",%r\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, ErrorReply):
        return b"-%s\r\n" % value.message.encode()
    if isinstance(value, Push):
        items = [value.kind.encode(), *value.data]
        return b">%d\r\n" % len(items) + b"".join(encode(item) for item in items)
    if isinstance(value, dict):
        body = b"".join(encode(k) + encode(v) for k, v in value.items())
        return b"%%%d\r\n" % len(value) + body
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


# Simple strings and errors are one line: no CR or LF in them.
line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=64)
    | line
    | line.map(ErrorReply)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(line, inner, max_size=3),
    max_leaves=12,
)
frames = st.lists(
    st.tuples(st.booleans(), values).map(
        lambda pair: (True, Push("invalidate", (pair[1],))) if pair[0] else (False, pair[1])
    ),
    min_size=1,
    max_size=6,
)


@given(frames=frames, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_are_read_back_whatever_chunks_they_arrive_in(
    frames: list[tuple[bool, Any]], cuts: list[int]
) -> None:
    data = b"".join(encode(value) for _, value in frames)
    edges = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    parser = Parser()
    read: list[tuple[bool, Any]] = []
    for start, end in itertools.pairwise(edges):
        parser.feed(data[start:end])
        while (frame := parser.next()) is not None:
            read.append(frame)
    assert read == frames


def test_what_redis_writes_for_the_near_cache() -> None:
    parser = Parser()
    parser.feed(
        b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"  # HELLO 3
        b"+OK\r\n"  # CLIENT TRACKING ON
        b"*2\r\n$5\r\nvalue\r\n_\r\n"  # MGET
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nt:a\r\n"  # a key read before changed
        b":-2\r\n"  # PTTL of a missing key
        b">2\r\n$10\r\ninvalidate\r\n_\r\n"  # FLUSHALL: every key
        b"=15\r\ntxt:Some string\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n!5\r\nOOPS!\r\n"
    )
    frames = []
    while (frame := parser.next()) is not None:
        frames.append(frame)
    assert frames == [
        (False, {b"server": b"redis", b"proto": 3}),
        (False, "OK"),
        (False, [b"value", None]),
        (True, Push("invalidate", ([b"t:a"],))),
        (False, -2),
        (True, Push("invalidate", (None,))),
        (False, b"Some string"),  # a verbatim string, its format dropped
        (False, b"x"),  # attributes annotate the value after them
        (False, ErrorReply("OOPS!")),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"?what\r\n",  # no such type
        b"$3\r\nabcdef\r\n",  # longer than its length
        b":12x\r\n",  # not a number
        b"#x\r\n",  # not a boolean
        b">1\r\n:1\r\n",  # a push without a kind
    ],
)
def test_bytes_that_are_not_resp3_are_refused(data: bytes) -> None:
    parser = Parser()
    parser.feed(data)
    with pytest.raises(ProtocolError):
        parser.next()


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert command("GET", b"k\r\ney", 3) == b"*3\r\n$3\r\nGET\r\n$5\r\nk\r\ney\r\n$1\r\n3\r\n"
