"""Small helpers over raw ASGI header lists (``[(name, value), ...]`` with lower-case names)."""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from prodkit._core.state import REQUEST_STATE_KEY
from prodkit._core.types import RawHeaders

#: An HTTP ``token`` (RFC 9110 section 5.6.2): a field name, a method, a list member's name.
#: The one pattern for it: option checks and request checks (a CORS preflight) both use it.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Return the first value of header ``name`` (lower-case bytes), or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


def get_all_headers(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Return every value of header ``name`` in order (field lines are not merged)."""
    return [value for key, value in headers if key == name]


def get_list_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Return the comma-separated members of every ``name`` field line, stripped, in order.

    RFC 9110 section 5.3: several field lines of a list-based field are one list. Quoted commas
    are not special-cased: use this only for fields whose members never contain quotes.
    """
    members: list[str] = []
    for value in get_all_headers(headers, name):
        for member in value.decode("latin-1").split(","):
            member = member.strip()
            if member:
                members.append(member)
    return members


def scope_header(scope: MutableMapping[str, Any], name: bytes) -> bytes | None:
    """Return the first value of request header ``name`` from an ASGI ``scope``.

    Read from the request's state (:class:`~prodkit.asgi.RequestState`) when a prodkit layer
    put one there: the header list is then walked once per request, not once per lookup.
    """
    state = scope.get(REQUEST_STATE_KEY)
    if state is None:
        return get_header(scope.get("headers") or (), name)
    return state.headers(scope).get(name)  # type: ignore[no-any-return]


def message_headers(message: MutableMapping[str, Any]) -> RawHeaders:
    """Return the headers of a ``http.response.start`` message as a list it owns and may change.

    Servers and apps may pass tuples or other sequences; the list is stored back on the message.
    """
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = list(headers or ())
        message["headers"] = headers
    return headers


def set_header(headers: RawHeaders, name: bytes, value: bytes) -> None:
    """Replace every ``name`` field line by one with ``value``."""
    for key, _ in headers:
        if key == name:
            headers[:] = [(key, val) for key, val in headers if key != name]
            break
    headers.append((name, value))


def set_default_header(headers: RawHeaders, name: bytes, value: bytes) -> None:
    """Add ``name: value`` unless a field line with that name is already there."""
    for key, _ in headers:
        if key == name:
            return
    headers.append((name, value))


def remove_header(headers: RawHeaders, name: bytes) -> None:
    """Remove every ``name`` field line."""
    headers[:] = [(key, val) for key, val in headers if key != name]


def append_vary(headers: RawHeaders, *names: str) -> None:
    """Add ``names`` to the response's ``Vary`` field, keeping what is there and avoiding repeats."""
    current = get_list_header(headers, b"vary")
    lowered = {member.lower() for member in current}
    if "*" in lowered:
        return
    added = [name for name in names if name.lower() not in lowered]
    if not added:
        return
    set_header(headers, b"vary", ", ".join([*current, *added]).encode("latin-1"))


__all__ = [
    "TOKEN",
    "append_vary",
    "get_all_headers",
    "get_header",
    "get_list_header",
    "message_headers",
    "remove_header",
    "scope_header",
    "set_default_header",
    "set_header",
]
