"""Measure a request head as it arrives, before any parser sees it."""

from __future__ import annotations

_END = b"\r\n\r\n"


class HeadMeter:
    """The size of the request head being received, read by read, and whether it is too large.

    Feed it every read that starts while a head is expected (a new connection, the end of the
    previous request, a head still arriving); :meth:`reset` it when the parser says the head is
    complete. It counts the bytes up to and including the blank line that ends the head, and
    the header lines among them, without parsing anything: the request line and the blank line
    end with a line end too, and a head still arriving has at least as many header fields as
    finished lines after its request line.

    Arguments:
        max_bytes: the largest head accepted, request line to blank line, both included.
        max_headers: the most header fields accepted.
    """

    __slots__ = ("_line_ends", "_size", "_tail", "max_bytes", "max_headers")

    def __init__(self, max_bytes: int, max_headers: int) -> None:
        self.max_bytes = max_bytes
        self.max_headers = max_headers
        self.reset()

    def reset(self) -> None:
        """Start measuring the next head."""
        self._size = 0
        self._line_ends = 0
        self._tail = b""  # the last bytes read, to find the blank line across two reads

    def over_limit(self, data: bytes) -> bool:
        """Count the part of ``data`` that belongs to the head; whether it is now too large."""
        window = self._tail + data
        end = window.find(_END)
        if end == -1:
            part = data
            self._tail = window[-(len(_END) - 1) :]
        else:
            part = data[: end + len(_END) - len(self._tail)]
            self._tail = b""
        self._size += len(part)
        self._line_ends += part.count(b"\n")
        headers = self._line_ends - (2 if end != -1 else 1)
        return self._size > self.max_bytes or headers > self.max_headers


__all__ = ["HeadMeter"]
