"""The four ASGI type aliases, copied rather than imported so that prodkit needs no framework."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Raw ASGI headers: a list of ``(name, value)`` byte pairs, names lower-case.
RawHeaders = list[tuple[bytes, bytes]]

__all__ = ["ASGIApp", "Message", "RawHeaders", "Receive", "Scope", "Send"]
