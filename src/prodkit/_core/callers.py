"""Who is calling: the ``caller`` functions that scope idempotency keys, cache entries and limits.

A caller function takes the ASGI scope and returns a string naming the caller, or ``None``
when the request names no caller. Each middleware says what it does with ``None``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from prodkit._core.headers import get_header, scope_header
from prodkit._core.state import REQUEST_STATE_KEY
from prodkit._core.types import Scope

_DIGEST = b"sha256:"

#: ``scope -> caller`` (``None``: the request names no caller).
Caller = Callable[[Scope], str | None]


def caller_from_header(name: str = "X-User-Id", *, max_length: int = 256) -> Caller:
    """Return a caller function that names the caller by request header ``name``.

    An absent or empty header gives ``None``. A value longer than ``max_length`` bytes (or one
    that already looks like a digest) is replaced by ``sha256:`` and its SHA-256 digest, so
    that one request cannot make keys of any size while two callers still never share one. Only sound when a trusted layer (an authenticating proxy, an
    earlier middleware) sets that header.
    """
    header = name.lower().encode("latin-1")

    def caller(scope: Scope) -> str | None:
        # scope_header(), inlined: the rate limiter asks on every request.
        state = scope.get(REQUEST_STATE_KEY)
        if state is None:
            value = get_header(scope.get("headers") or (), header)
        else:
            value = state.headers(scope).get(header)
        if not value:
            return None
        if len(value) > max_length or value.startswith(_DIGEST):
            return "sha256:" + hashlib.sha256(value).hexdigest()
        return value.decode("latin-1")

    return caller


def caller_from_authorization(scope: Scope) -> str | None:
    """A caller function: a digest of the ``Authorization`` header (``None`` without one).

    Two clients with different credentials never share a caller; the credentials themselves
    are never kept. A blank header names no caller (every client sending one would share it).
    """
    value = scope_header(scope, b"authorization")
    if value is None or not value.strip(b" \t"):
        return None
    return hashlib.sha256(value).hexdigest()


__all__ = ["Caller", "caller_from_authorization", "caller_from_header"]
