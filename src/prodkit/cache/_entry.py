"""Cached responses as bytes, strong ETags, and the HTTP header parsing the cache needs."""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from prodkit._core.headers import get_all_headers, get_header

_RESPONSE = b"R"
_VARY = b"V"

#: Stored briefly under a key whose last response could not be stored (a 404, ``private``...),
#: so that workers stop queueing on the single-flight lease for it.
UNSTORABLE_MARKER = b"N"

#: Response headers that describe one delivery, not the stored representation.
_NOT_STORED = frozenset(
    {
        b"age",
        b"connection",
        b"content-length",
        b"etag",
        b"keep-alive",
        b"proxy-connection",
        b"set-cookie",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-cache",
        b"x-request-id",
    }
)

#: Headers a 304 repeats from the stored 200 (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"expires", b"vary"}
)

_ENTITY_TAG = re.compile(rb'(?:W/)?"[^"]*"')


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response.

    Attributes:
        status: the HTTP status.
        headers: the response headers worth replaying (no ``Content-Length``, ``Set-Cookie``,
            ``Age``, hop-by-hop or per-request headers).
        body: the complete body.
        etag: the entity tag, quoted (the app's own, or computed by :func:`compute_etag`).
        stored_at: wall-clock time (``time.time()``) when the response was generated, for ``Age``.
        versions: the versions of the entry's tags when the request was looked up; the entry is
            stale as soon as any tag has another version.
        vary: lower-case request header names the response varies on.
        route: the route template the app matched when it produced the response, if it
            recorded one; a hit names it to the metrics and the access log, which otherwise
            match the request against the app's router again.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: bytes
    stored_at: float
    versions: tuple[str, ...] = ()
    vary: tuple[str, ...] = ()
    route: str | None = None

    def encode(self) -> bytes:
        """Serialise to bytes: a type byte, a JSON line of metadata, then the raw body."""
        meta = {
            "s": self.status,
            "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "e": self.etag.decode("latin-1"),
            "t": self.stored_at,
            "v": list(self.versions),
            "y": list(self.vary),
        }
        if self.route is not None:
            meta["r"] = self.route
        return _RESPONSE + json.dumps(meta, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse:
        """Inverse of :meth:`encode`; raises ``ValueError`` on anything else."""
        if data[:1] != _RESPONSE:
            raise ValueError("not a cached response")
        end = data.find(b"\n", 1)
        if end < 0:
            raise ValueError("truncated cached response")
        meta = json.loads(data[1:end])
        route = meta.get("r")  # absent from entries of earlier versions
        return cls(
            status=int(meta["s"]),
            headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"]),
            body=data[end + 1 :],
            etag=meta["e"].encode("latin-1"),
            stored_at=float(meta["t"]),
            versions=tuple(meta["v"]),
            vary=tuple(meta["y"]),
            route=route if isinstance(route, str) else None,
        )


class DecodedEntries:
    """The entries decoded lately, by store key, so that a hit neither parses nor copies.

    Each is kept with the exact bytes it was decoded from and is reused only while the store
    returns those bytes again (the same object from the memory store, equal bytes from Redis);
    anything else is decoded afresh. Least recently used entries go first, to stay within
    ``max_entries`` and ``max_bytes`` (the stored values' sizes).
    """

    __slots__ = ("_bytes", "_items", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int = 1024, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, CachedResponse]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def decode(self, key: str, value: bytes) -> CachedResponse:
        """:meth:`CachedResponse.decode` of ``value``, the one stored under ``key``."""
        known = self._items.get(key)
        if known is not None:
            if known[0] is value or known[0] == value:
                self._items.move_to_end(key)
                return known[1]
            del self._items[key]
            self._bytes -= len(known[0])
        entry = CachedResponse.decode(value)
        if len(value) <= self.max_bytes:
            while self._items and (
                len(self._items) >= self.max_entries or self._bytes + len(value) > self.max_bytes
            ):
                self._bytes -= len(self._items.popitem(last=False)[1][0])
            self._items[key] = (value, entry)
            self._bytes += len(value)
        return entry


def encode_vary_record(names: Sequence[str]) -> bytes:
    """The record stored under a base key whose responses vary on request headers ``names``."""
    return _VARY + ",".join(names).encode("latin-1")


def decode_vary_record(data: bytes) -> tuple[str, ...] | None:
    """The header names of a vary record, or ``None`` when ``data`` is not one."""
    if data[:1] != _VARY:
        return None
    text = data[1:].decode("latin-1")
    return tuple(text.split(",")) if text else ()


def compute_etag(body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A strong entity tag (RFC 9110 section 8.8.3) from the body and its representation headers.

    sha256 over ``Content-Type``, ``Content-Encoding`` and the body, truncated to 128 bits: the
    same bytes give the same tag in every process and on every host, unlike tags built from
    ``id()``, ``hash()`` or timestamps.
    """
    headers = list(headers)
    digest = hashlib.sha256()
    for name in (b"content-type", b"content-encoding"):
        digest.update(get_header(headers, name) or b"")
        digest.update(b"\0")
    digest.update(body)
    return b'"' + digest.hexdigest()[:32].encode() + b'"'


def stored_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers kept in a cache entry."""
    return tuple((k, v) for k, v in headers if k not in _NOT_STORED)


#: ``tchar`` (RFC 9110 section 5.6.2): what a directive's name and unquoted value are made of.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OWS = " \t"


def cache_control(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``Cache-Control`` directives (RFC 9111 section 5.2) as ``{name: value}``, names lower-case.

    See :func:`parse_cache_control`; this keeps what could be read of a malformed field.
    """
    return parse_cache_control(get_all_headers(headers, b"cache-control"))[0]


def parse_cache_control(lines: Iterable[bytes]) -> tuple[dict[str, str], bool]:
    """The directives of ``Cache-Control`` field lines, and whether every line was well-formed.

    The grammar is RFC 9111 section 5.2's ``#( token [ "=" ( token / quoted-string ) ] )``
    with RFC 9110 section 5.6's lists and quoted strings: a comma inside a quoted string is
    part of the value (``x="a, max-age=9"`` is one directive), a quoted value is unescaped
    (``\\"`` is ``"``), empty list elements and whitespace around commas are allowed. Names
    are lower-cased; of a directive given twice the first counts (RFC 9111 section 4.2.1).

    Anything else (an unterminated quoted string, a name that is not a token, ``=`` with no
    value, text after a value) makes the field malformed: the second item is then ``False``,
    and the first holds what could be read (a caller storing responses refuses them).
    """
    directives: dict[str, str] = {}
    valid = True
    for line in lines:
        valid = _read_directives(line.decode("latin-1"), directives) and valid
    return directives, valid


def _read_directives(text: str, directives: dict[str, str]) -> bool:
    """Add one field line's directives to ``directives``; ``False`` if it is malformed."""
    valid = True
    end = len(text)
    at = 0
    while at < end:
        if text[at] in _OWS or text[at] == ",":  # empty list elements and OWS (5.6.1)
            at += 1
            continue
        start = at
        while at < end and text[at] in _TCHARS:
            at += 1
        name = text[start:at].lower()
        value = ""
        after = _skip_ows(text, at)
        if after < end and text[after] == "=":
            at = _skip_ows(text, after + 1)
            if at < end and text[at] == '"':
                value, at, closed = _quoted_string(text, at)
                valid = valid and closed
            else:
                start = at
                while at < end and text[at] in _TCHARS:
                    at += 1
                value = text[start:at]
                valid = valid and at > start
        else:
            at = after
        at = _skip_ows(text, at)
        if not name or (at < end and text[at] != ","):
            valid = False
            at = _next_element(text, at)
        if name:
            directives.setdefault(name, value)
    return valid


def _skip_ows(text: str, at: int) -> int:
    while at < len(text) and text[at] in _OWS:
        at += 1
    return at


def _quoted_string(text: str, at: int) -> tuple[str, int, bool]:
    """The unescaped quoted string starting at ``text[at]`` (a ``"``), the index after it, and
    whether it was closed."""
    chars: list[str] = []
    at += 1
    while at < len(text):
        char = text[at]
        if char == "\\" and at + 1 < len(text):
            chars.append(text[at + 1])
            at += 2
        elif char == '"':
            return "".join(chars), at + 1, True
        else:
            chars.append(char)
            at += 1
    return "".join(chars), at, False


def _next_element(text: str, at: int) -> int:
    """The index of the comma that ends the malformed element at ``at`` (quoted strings
    skipped), or the end of ``text``."""
    while at < len(text):
        if text[at] == ",":
            return at
        if text[at] == '"':
            at = _quoted_string(text, at)[1]
        else:
            at += 1
    return at


def delta_seconds(value: str | None) -> int | None:
    """A ``delta-seconds`` value (RFC 9111 section 1.2.2), or ``None`` if absent or invalid."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def http_date(value: bytes) -> float | None:
    """An HTTP-date (RFC 9110 section 5.6.7, all three formats) as epoch seconds, else ``None``."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1").strip())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": HTTP dates are always GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def freshness_lifetime(
    headers: Iterable[tuple[bytes, bytes]],
    generated_at: float,
    directives: Mapping[str, str] | None = None,
) -> float | None:
    """How long a shared cache may use a response (RFC 9111 section 4.2.1), or ``None``.

    ``s-maxage``, else ``max-age``, else ``Expires`` minus ``Date`` (or minus ``generated_at``
    when the response has no valid ``Date``); ``None`` when the response says nothing, so the
    rule's TTL alone applies. Invalid freshness information counts as already expired (0):
    an ``Expires`` that is not an HTTP-date, ``Expires: 0`` included (section 5.3), and a
    ``max-age`` that is not a number (section 4.2.1 encourages it). Of several ``Expires``
    lines the first is used. ``directives`` are the response's ``Cache-Control`` if already
    parsed.
    """
    headers = list(headers)
    if directives is None:
        directives = cache_control(headers)
    for name in ("s-maxage", "max-age"):  # section 5.3: these take precedence over Expires
        if name in directives:
            seconds = delta_seconds(directives[name])
            return 0.0 if seconds is None else float(seconds)
    expires = get_header(headers, b"expires")
    if expires is None:
        return None
    expires_at = http_date(expires)
    if expires_at is None:
        return 0.0
    date = get_header(headers, b"date")
    date_at = http_date(date) if date is not None else None
    return max(0.0, expires_at - (generated_at if date_at is None else date_at))


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` by weak comparison (RFC 9110 section 13.1.2)."""
    if if_none_match.strip() == b"*":
        return True
    opaque = etag.removeprefix(b"W/")
    return any(tag.removeprefix(b"W/") == opaque for tag in _ENTITY_TAG.findall(if_none_match))


__all__ = [
    "NOT_MODIFIED_HEADERS",
    "UNSTORABLE_MARKER",
    "CachedResponse",
    "DecodedEntries",
    "cache_control",
    "compute_etag",
    "decode_vary_record",
    "delta_seconds",
    "encode_vary_record",
    "etag_matches",
    "freshness_lifetime",
    "http_date",
    "parse_cache_control",
    "stored_headers",
]
