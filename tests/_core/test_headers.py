"""Raw ASGI header helpers."""

from __future__ import annotations

from prodkit.asgi import (
    append_vary,
    get_list_header,
)


def test_append_vary_merges_without_repeats() -> None:
    headers = [(b"vary", b"Accept-Encoding")]
    append_vary(headers, "Origin", "accept-encoding")
    assert get_list_header(headers, b"vary") == ["Accept-Encoding", "Origin"]
    star = [(b"vary", b"*")]
    append_vary(star, "Origin")
    assert star == [(b"vary", b"*")]
