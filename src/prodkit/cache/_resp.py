"""RESP3, the Redis protocol, as far as the near cache's own connections need it.

:func:`command` spells a command; :class:`Parser` reads replies and push messages from bytes
fed to it in any chunks, one frame at a time, so that a connection can process what its socket
holds *now*, without waiting on the event loop (see ``prodkit.cache._near``). Every RESP3 type
is read; attributes (``|``) are skipped, as they annotate the value after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply (``-ERR …`` or a blob error), kept as a value: the command failed."""

    message: str


@dataclass(frozen=True, slots=True)
class Push:
    """A push message (``>``): out of band, not the reply to a command. ``kind`` is its first
    element (``"invalidate"``), ``data`` the rest."""

    kind: str
    data: tuple[Any, ...]


class ProtocolError(Exception):
    """The bytes are not RESP3: the connection cannot be trusted any further."""


class _Incomplete(Exception):
    """The frame continues in bytes that have not arrived yet."""


def command(*args: str | bytes | int) -> bytes:
    """One command as RESP (an array of bulk strings): ``command("GET", "key")``."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Parser:
    """Reads RESP3 frames from bytes fed in any chunks.

    ``feed(data)``, then ``next()`` until it returns ``None`` (the rest has not arrived):
    each frame is a reply to the oldest command without one, or a :class:`Push`. Bulk strings
    are ``bytes``, simple strings ``str``, nulls ``None``, errors :class:`ErrorReply`; maps
    are ``dict``, sets and arrays ``list``. Raises :class:`ProtocolError` on bytes that are
    not RESP3.
    """

    __slots__ = ("_buffer", "_start")

    def __init__(self) -> None:
        self._buffer = b""
        self._start = 0

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection."""
        if self._start:
            self._buffer = self._buffer[self._start :] + data
            self._start = 0
        elif self._buffer:
            self._buffer += data
        else:
            self._buffer = data

    def next(self) -> tuple[bool, Any] | None:
        """The next whole frame: ``(False, reply)``, ``(True, Push)``, or ``None``."""
        if self._start >= len(self._buffer):
            return None
        push = self._buffer[self._start : self._start + 1] == b">"
        try:
            value, end = self._value(self._start)
        except _Incomplete:
            return None
        except (ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"not RESP3 at byte {self._start}: {exc}") from exc
        self._start = end
        if self._start == len(self._buffer):
            self._buffer, self._start = b"", 0
        return push, value

    def _line(self, at: int) -> tuple[bytes, int]:
        end = self._buffer.find(_CRLF, at)
        if end < 0:
            raise _Incomplete
        return self._buffer[at:end], end + 2

    def _value(self, at: int) -> tuple[Any, int]:
        buffer = self._buffer
        kind = buffer[at : at + 1]
        line, at = self._line(at + 1)
        if kind == b"$" or kind == b"=" or kind == b"!":
            size = int(line)
            if size < 0:  # RESP2's null bulk string
                return None, at
            end = at + size
            if len(buffer) < end + 2:
                raise _Incomplete
            if buffer[end : end + 2] != _CRLF:
                raise ValueError("a blob string longer than its length")
            data = buffer[at:end]
            if kind == b"!":
                return ErrorReply(data.decode("utf-8", "replace")), end + 2
            return (data[4:] if kind == b"=" else data), end + 2
        if kind == b"+":
            return line.decode("utf-8"), at
        if kind == b"-":
            return ErrorReply(line.decode("utf-8", "replace")), at
        if kind == b":" or kind == b"(":
            return int(line), at
        if kind == b"_":
            if line:
                raise ValueError("a null with data")
            return None, at
        if kind == b"#":
            if line not in (b"t", b"f"):
                raise ValueError("a boolean that is neither t nor f")
            return line == b"t", at
        if kind == b",":
            return float(line), at
        if kind in (b"*", b"~", b">"):
            count = int(line)
            if count < 0:  # RESP2's null array
                return None, at
            items = []
            for _ in range(count):
                item, at = self._value(at)
                items.append(item)
            if kind == b">":
                if not items or not isinstance(items[0], bytes | str):
                    raise ValueError("a push message without a kind")
                first = items[0]
                name = first.decode("utf-8") if isinstance(first, bytes) else first
                return Push(name, tuple(items[1:])), at
            return items, at
        if kind == b"%" or kind == b"|":
            count = int(line)
            found: dict[Any, Any] = {}
            for _ in range(count):
                key, at = self._value(at)
                value, at = self._value(at)
                found[tuple(key) if isinstance(key, list) else key] = value
            if kind == b"|":  # attributes annotate the value that follows them
                return self._value(at)
            return found, at
        raise ValueError(f"unknown type byte {kind!r}")


__all__ = ["ErrorReply", "Parser", "ProtocolError", "Push", "command"]
